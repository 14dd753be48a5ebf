"""A run dir's safety: one writer at a time (a lock naming its holder), a place cpcrl can write, the temp files a
killed write leaves behind, and the cleanup of a run that failed on its input (only what cpcrl made)."""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cpcrl.errors import ConfigError

LOCK_NAME = ".cpcrl.lock"
_HELD: dict[str, int] = {}  # resolved run dir -> the open, flock-ed lock file of this process


def _holder_text(holder: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("start", 0)))
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} (started {started})"


def _read_holder(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace")
    try:
        holder = json.loads(text)
    except json.JSONDecodeError:
        return None
    return holder if isinstance(holder, dict) else None


def acquire_lock(run_dir: Path) -> bool:
    """Hold run_dir's lock until this process ends (or `release_lock`); -> False when this process holds it already.

    The lock is an flock on run_dir/.cpcrl.lock, which holds the holder's pid, host and start time: a second
    writer is refused naming the holder. The kernel drops the flock of a process that dies (even by SIGKILL), so
    a lock file left behind by a dead run is taken over, with a message."""
    run_dir = Path(run_dir).resolve()
    key = str(run_dir)
    if key in _HELD:
        return False
    path = run_dir / LOCK_NAME
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"cannot write in run dir {run_dir}: {e.strerror} ({path})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            who = _holder_text(holder) if holder else "another process"
            raise ConfigError(f"run dir {run_dir} is in use by {who}: a run dir has one writer at a time; wait for "
                              "it to end or stop it, or give another hydra.run.dir") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and flock: try the new one
    stale = _read_holder(fd)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "start": time.time()}
    if stale and stale.get("host") != me["host"]:
        os.close(fd)
        raise ConfigError(f"run dir {run_dir} is locked by {_holder_text(stale)}, which this host cannot check: "
                          f"if that run is no longer running, delete {path}")
    if stale:
        print(f"cpcrl: taking over the lock of run dir {run_dir}: {_holder_text(stale)} is no longer running",
              file=sys.stderr)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(me).encode())
    os.fsync(fd)
    if not _HELD:
        atexit.register(release_all)
    _HELD[key] = fd
    return True


def release_lock(run_dir: Path) -> None:
    """Remove the lock file (while still holding it, so no one can take a lock on it meanwhile), then unlock."""
    run_dir = Path(run_dir).resolve()
    fd = _HELD.pop(str(run_dir), None)
    if fd is None:
        return
    try:
        (run_dir / LOCK_NAME).unlink(missing_ok=True)
    except OSError:
        pass
    os.close(fd)


def release_all() -> None:
    for key in list(_HELD):
        release_lock(Path(key))


def remove_stale_temp_files(run_dir: Path) -> list[Path]:
    """The `.<name>.tmp` files of atomic writes (checkpoints, summary.json) that a kill or a full disk left behind.
    Call it holding the lock: no live writer of this run dir is then mid-write."""
    run_dir = Path(run_dir)
    stale = [p for d in (run_dir, run_dir / "checkpoints") if d.is_dir() for p in d.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


@dataclass
class Prepared:
    """What a run dir held before this command touched it: what `discard` may remove and must restore."""

    path: Path
    created: Path | None          # the topmost dir this command created (None: the run dir existed)
    entries: set[str] = field(default_factory=set)                # names in the run dir before the run
    hydra_files: dict[str, bytes] = field(default_factory=dict)   # .hydra/<name> contents before the run


def prepare(path: Path, what: str = "hydra.run.dir") -> Prepared:
    """Check that a run dir can be made and written, make it, and note what was there: one line naming the path
    and the problem when it cannot."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what}={path}: {existing} is a file, not a directory; give a directory path")
    created = None if existing == path else next(p for p in [path, *path.parents] if p.parent == existing)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{what}={path}: cannot create {e.filename or path}: {e.strerror}") from None
    state = Prepared(path, created, set(os.listdir(path)))
    hydra = path / ".hydra"
    if hydra.is_dir():
        state.hydra_files = {p.name: p.read_bytes() for p in hydra.iterdir() if p.is_file()}
    probe = path / f".cpcrl-write-test-{os.getpid()}.tmp"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        remove_created(state)
        raise ConfigError(f"{what}={path}: cannot write there: {e.strerror}") from None
    return state


RUN_OUTPUTS = (".hydra", "metrics.jsonl", "wandb", LOCK_NAME)  # what a run writes before its first checkpoint
#                                                                   (and Hydra's <job>.log)


def discard(state: Prepared | None, run_dir: Path | None = None) -> None:
    """Undo a run that failed on its input, holding the run dir's lock (never call it for a run refused by the
    lock: the holder is writing there): restore .hydra/, remove what the run added, and remove the dirs this
    command created once empty. A dir with checkpoints is a real run and is kept; a dir cpcrl did not create is
    never removed. Without a `Prepared` (a multirun job), only the known run outputs of a checkpoint-less dir go."""
    path = Path(state.path if state else run_dir)
    if not path.is_dir() or (path / "checkpoints").exists() and not (state and "checkpoints" in state.entries):
        return
    release_lock(path)
    before = state.entries if state else set()
    for name in os.listdir(path):
        if name in before or (state is None and name not in RUN_OUTPUTS and not name.endswith(".log")):
            continue
        target = path / name
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() and not target.is_symlink() else target.unlink()
    if state and state.hydra_files:
        hydra = path / ".hydra"
        hydra.mkdir(exist_ok=True)
        for name, data in state.hydra_files.items():
            (hydra / name).write_bytes(data)
    remove_created(state or Prepared(path, path))


def remove_created(state: Prepared) -> None:
    """rmdir the run dir and its parents up to the topmost one this command created, each only while empty."""
    top, d = state.created, state.path
    while top is not None and (d == top or top in d.parents):
        try:
            d.rmdir()
        except OSError:  # not empty: something else lives there
            return
        d = d.parent
