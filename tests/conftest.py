import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# W&B never asks for a login and never writes outside the test's own dirs.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")


@pytest.fixture(autouse=True)
def _wandb_dirs(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.getbasetemp() / "wandb_home"
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(base / var.lower()))
    # the cube's distance table is cached per session, never in the user's ~/.cache (CLI subprocesses included)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg_cache"))


@pytest.fixture
def one_thread():
    """Tiny nets: one intra-op thread is fastest, and stalls least when the test machine is shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cpcrl(*args: str, cwd: Path, timeout: float = 300, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (what a user types), from `cwd` so outputs/ lands there."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "cpcrl", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"cpcrl {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def composed_cfg(*overrides: str):
    from cpcrl.agents import compose_config

    return compose_config(*overrides)


def composed_agent(obs_space, action_space, *overrides: str, device: str = "cpu", **params):
    from cpcrl.agents import compose_agent

    return compose_agent(obs_space, action_space, "seed=0", *overrides, device=device, **params)
