"""Checkpoints: one torch file per save, written atomically, loaded with weights_only=True."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cpcrl.errors import ConfigError

FORMAT = "cpcrl-checkpoint-1"
REQUIRED = ("agent_name", "agent", "counters", "rng", "config")  # what resume and mode=eval read
COUNTERS = ("env_step", "episodes", "iteration")
# also in counters, optional (older checkpoints lack them, a resume then starts them afresh): wall_s (the
# train.max_minutes budget spent), mmer (train/mmer's running max; absent until an episode has ended)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (disk full, permissions): the previous file is kept, the partial one gone."""


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write to a temp file in the same dir, fsync, then rename: a kill mid-write never leaves a torn file, and a
    failed write (a full disk) removes its partial temp file and keeps the previous `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch wraps a failed write in RuntimeError
        tmp.unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[-1]
        kept = f"the previous {path.name} is kept" if path.exists() else f"no earlier {path.name} exists"
        raise CheckpointWriteError(f"cannot write checkpoint {path}: {reason}; {kept}") from None


def find_checkpoint(path) -> Path:
    """A checkpoint file, or a run dir (its checkpoints/last.pt)."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoints" / "last.pt"
        if not candidate.exists():
            raise ConfigError(f"no checkpoint in {path}: expected {candidate} (give a .pt file or a run dir)")
        return candidate
    if not path.exists():
        raise ConfigError(f"checkpoint {path} does not exist: give a .pt file or a run dir under outputs/")
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    path = find_checkpoint(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for torn or foreign files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot read checkpoint {path}: not a cpcrl checkpoint ({first})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(f"{path} is not a cpcrl checkpoint (expected format {FORMAT})")
    missing = [k for k in REQUIRED if k not in payload]
    if not missing:
        counters = payload["counters"] if isinstance(payload["counters"], dict) else {}
        missing = [f"counters.{k}" for k in COUNTERS if k not in counters]
    if missing:
        raise ConfigError(f"{path} is not a cpcrl checkpoint (missing '{missing[0]}')")
    return payload


class Checkpointer:
    """Periodic `step_<env_step>.pt` files (the newest `keep` kept) and `last.pt`, under run_dir/checkpoints."""

    def __init__(self, run_dir: Path, every: int, keep: int):
        self.dir = Path(run_dir) / "checkpoints"
        self.every, self.keep = every, keep

    def save(self, payload: dict, env_step: int, periodic: bool = True) -> Path:
        last = self.dir / "last.pt"
        save_checkpoint(last, payload)
        if periodic and self.keep > 0:
            save_checkpoint(self.dir / f"step_{env_step:012d}.pt", payload)
            for old in sorted(self.dir.glob("step_*.pt"))[: -self.keep]:
                old.unlink()
        return last


def _map_leaves(tree, leaf):
    if isinstance(tree, dict):
        return {k: _map_leaves(v, leaf) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_leaves(v, leaf) for v in tree)
    return leaf(tree)


def _to_torch(x):
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    return x.item() if isinstance(x, np.generic) else x


def numpy_to_torch(tree):
    """numpy values inside plain containers -> tensors and Python scalars, so weights_only loading accepts them."""
    return _map_leaves(tree, _to_torch)


def torch_to_numpy(tree):
    return _map_leaves(tree, lambda x: x.numpy() if isinstance(x, torch.Tensor) else x)
