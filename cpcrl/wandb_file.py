"""Read W&B run files (``run-<id>.wandb``) without network, login or a running wandb service.

wandb ships no public Python reader for these files (the Python ``DataStore`` is gone since the Go core
took over writing them), so this parses the on-disk format itself and decodes each record with wandb's
own protobuf definitions. The format, as written by wandb 0.31's core, is LevelDB's log format:

* a 7-byte file header: ident ``b":W&B"``, magic ``0xBEE1`` (uint16 LE), version ``0`` (uint8);
* then 32 KiB blocks counted from the start of the file (the header sits inside block 0); each block
  holds chunks with a 7-byte header: CRC32 (uint32 LE), data length (uint16 LE), type (uint8);
* a record that does not fit the rest of a block is split into FIRST, MIDDLE..., LAST chunks; a block
  tail shorter than a chunk header is zero padding.

The CRC is the plain IEEE CRC32 (``zlib.crc32``) of the type byte followed by the data, unmasked; not the
masked CRC32C of LevelDB proper.
"""

from __future__ import annotations

import json
import logging
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

log = logging.getLogger(__name__)

FILE_HEADER = struct.Struct("<4sHB")
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
CHUNK_HEADER = struct.Struct("<IHB")
BLOCK_SIZE = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbFileError(ValueError):
    """The file is not a W&B run file, or it is corrupted (as opposed to merely cut short)."""


def find_run_file(path: str | Path) -> Path:
    """The newest ``.wandb`` file at, in or under ``path``: a run file, a run dir, or a dir holding ``wandb/``."""
    path = Path(path)
    if path.is_file():
        return path.resolve()
    patterns = ("*.wandb", "*run-*/*.wandb", "wandb/*run-*/*.wandb")
    found = {p.resolve() for pattern in patterns for p in path.glob(pattern) if p.is_file()}
    if not found:
        raise FileNotFoundError(f"no W&B run file (*.wandb) at {path} or in its wandb/*run-*/ dirs")
    # Run dir names start with a timestamp, so the name breaks mtime ties deterministically.
    return max(found, key=lambda p: (p.stat().st_mtime, p.parent.name))


def _payloads(f, cut_ok: bool = False) -> Iterator[bytes]:
    """Reassembled record payloads. A file cut short (crash, copy of a live run) ends quietly after the
    last complete record (a warning, unless `cut_ok`: the file of a process known to be killed); anything else
    that does not parse raises, since skipping it would hide data loss."""
    header = f.read(FILE_HEADER.size)
    if len(header) < FILE_HEADER.size and IDENT.startswith(header[: len(IDENT)]):
        return  # created but nothing written yet (the run died at once): no records, not an error
    if len(header) < FILE_HEADER.size or FILE_HEADER.unpack(header)[0] != IDENT:
        raise WandbFileError(f"{f.name}: not a W&B run file (no {IDENT!r} header)")
    _, magic, version = FILE_HEADER.unpack(header)
    if (magic, version) != (MAGIC, VERSION):
        raise WandbFileError(f"{f.name}: unsupported W&B file magic/version {magic:#x}/{version}")
    offset, pending = FILE_HEADER.size, None  # pending: parts of a record split over blocks
    while True:
        wanted = BLOCK_SIZE - offset % BLOCK_SIZE
        block, pos = f.read(wanted), 0
        while pos + CHUNK_HEADER.size <= len(block):
            crc, length, kind = CHUNK_HEADER.unpack_from(block, pos)
            data = block[pos + CHUNK_HEADER.size : pos + CHUNK_HEADER.size + length]
            if crc == length == kind == 0:
                break  # zero padding: a writer that died after preallocating, or the rest of this block
            if len(data) < length:
                if len(block) == wanted:
                    raise WandbFileError(f"{f.name}: chunk at byte {offset + pos} overruns its block")
                break  # the file ends inside this chunk
            if zlib.crc32(data, zlib.crc32(bytes([kind]))) != crc:
                raise WandbFileError(f"{f.name}: CRC mismatch in chunk at byte {offset + pos}")
            if kind == FULL or kind == FIRST:
                if pending is not None:
                    raise WandbFileError(f"{f.name}: record at byte {offset + pos} interrupts a split record")
                if kind == FULL:
                    yield data
                else:
                    pending = [data]
            elif kind in (MIDDLE, LAST) and pending is not None:
                pending.append(data)
                if kind == LAST:
                    yield b"".join(pending)
                    pending = None
            else:
                raise WandbFileError(f"{f.name}: unexpected chunk type {kind} at byte {offset + pos}")
            pos += CHUNK_HEADER.size + length
        if len(block) < wanted:  # end of file
            if pending is not None or pos < len(block) and any(block[pos:]):
                (log.debug if cut_ok else log.warning)("%s: file ends inside a record (truncated); read up to byte %d",
                                                       f.name, offset + pos)
            return
        offset += len(block)


def read_records(path: str | Path, cut_ok: bool = False) -> Iterator[wandb_internal_pb2.Record]:
    """Every record of the run file found by ``find_run_file(path)``, in file order."""
    with open(find_run_file(path), "rb") as f:
        for payload in _payloads(f, cut_ok):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            yield record


def _key(item) -> str:
    # The core writes history keys as a one-element nested_key; config/init items use the plain key.
    return ".".join(item.nested_key) if item.nested_key else item.key


def _apply(target: dict, updates, removes=()) -> None:
    """Apply config/summary updates where a nested_key addresses a path into nested dicts."""
    for item in updates:
        *parents, leaf = list(item.nested_key) or [item.key]
        node = target
        for name in parents:
            if not isinstance(node.get(name), dict):
                node[name] = {}
            node = node[name]
        node[leaf] = json.loads(item.value_json)
    for item in removes:
        *parents, leaf = list(item.nested_key) or [item.key]
        node = target
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)


def read_run(path: str | Path, cut_ok: bool = False) -> dict[str, Any]:
    """History rows, config, summary, run metadata and defined metrics of one run file."""
    out: dict[str, Any] = {"history": [], "config": {}, "summary": {}, "run": {}, "metrics": []}
    for record in read_records(path, cut_ok):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "config":
            _apply(out["config"], record.config.update, record.config.remove)
        elif kind == "summary":
            _apply(out["summary"], record.summary.update, record.summary.remove)
        elif kind == "metric" and not record.metric.expanded_from_glob:  # skip the core's own glob expansions
            m = record.metric
            out["metrics"].append({"name": m.name or m.glob_name, "step_metric": m.step_metric})
        elif kind == "run":
            r = record.run
            # Should a file hold several run records, the last one describes the run.
            out["run"] = {
                "project": r.project, "entity": r.entity, "run_id": r.run_id, "display_name": r.display_name,
                "group": r.run_group, "job_type": r.job_type, "tags": list(r.tags), "notes": r.notes,
                "host": r.host,
                "start_time": r.start_time.seconds + r.start_time.nanos / 1e9 if r.HasField("start_time") else None,
            }
            _apply(out["config"], r.config.update, r.config.remove)
            _apply(out["summary"], r.summary.update, r.summary.remove)
    return out


def run_files(path: str | Path, run_id: str) -> list[Path]:
    """Every run file of W&B run ``run_id`` under a training dir's ``wandb/``, oldest first: a run resumed after a
    kill has one file per process (``<offline-run|run>-<time>-<id>/run-<id>.wandb``; the time breaks ties)."""
    found = [p for p in Path(path).glob(f"wandb/*run-*-{run_id}/run-{run_id}.wandb") if p.is_file()]
    started = lambda p: re.search(r"\d{8}_\d{6}", p.parent.name)  # noqa: E731
    return sorted(found, key=lambda p: (started(p).group() if started(p) else "", p.stat().st_mtime))


def run_history(path: str | Path, run_id: str) -> list[dict[str, Any]]:
    """The history of a run over all its files (`run_files`), as a resumed run continues it: cpcrl logs row i of
    metrics.jsonl at ``_step`` i, so a file whose first row is step s replaces the earlier files' rows from s on
    (those a kill left after the last checkpoint, which metrics.jsonl cut back too)."""
    merged: list[dict[str, Any]] = []
    for file in run_files(path, run_id):
        try:
            rows = read_run(file, cut_ok=True)["history"]  # the files of killed processes end mid-record
        except WandbFileError as e:  # a damaged file: its rows count as missing (a resume logs them again)
            log.warning("%s", e)
            continue
        if rows:
            start = rows[0].get("_step", 0)
            merged = [r for r in merged if r.get("_step", 0) < start] + rows
    return merged
