"""A real 2-job multirun through the Ray launcher on a local Ray cluster, and the message when the plugin is missing.

`make install` installs the `ray` extra, and `make test` exports CPCRL_EXPECT_RAY=1: there (and wherever CI is
set) a missing plugin fails the test instead of skipping it.
"""

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import cpcrl
from tests.test_sweeps import TINY, sweep_dirs

RAY_MODULE = "hydra_plugins.hydra_ray_launcher"


def _ray_expected() -> bool:
    return any(os.environ.get(var, "").lower() not in ("", "0", "false") for var in ("CI", "CPCRL_EXPECT_RAY"))


def _require_ray() -> None:
    if importlib.util.find_spec(RAY_MODULE) is None or importlib.util.find_spec("ray") is None:
        message = "hydra-ray-launcher is not installed (pip install 'cpcrl[ray]'; make install has it)"
        if _ray_expected():
            pytest.fail(message + "; CI or CPCRL_EXPECT_RAY is set, so this is an error, not a skip")
        pytest.skip(message)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:  # gone
        return ""


def _ray_processes(temp_dir: Path, worker_pids: set[int]) -> set[int]:
    """Live processes of our cluster: the head's (their command lines name our temp dir) and our workers."""
    live = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and str(temp_dir) in _cmdline(int(entry.name)):
            live.add(int(entry.name))
    return live | {pid for pid in worker_pids if _cmdline(pid).startswith("ray::")}


def test_two_job_multirun_on_a_local_ray_cluster(tmp_path, monkeypatch):
    _require_ray()
    # Sockets live under the temp dir and a socket path has a 107-byte limit: a short dir of our own under /tmp.
    temp_dir = Path(tempfile.mkdtemp(prefix="cpcrl-ray-", dir="/tmp"))
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # never phone home
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))  # token auth without writing ~/.ray/auth_token
    worker_pids: set[int] = set()
    try:
        start = time.monotonic()
        proc = cpcrl("-m", "hydra/launcher=ray", *TINY, "logger=none", "seed=0,1",
                     f"hydra.launcher.ray.init._temp_dir={temp_dir}", cwd=tmp_path, timeout=600)
        wall = time.monotonic() - start
        print(f"ray multirun wall time (Ray startup included): {wall:.1f} s")

        runs = sweep_dirs(tmp_path)
        assert len(runs) == 2
        for run in runs:
            summary = json.loads((run / "summary.json").read_text())
            last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
            assert summary["env_step"] >= 2048 and summary["env_step"] == last["env_step"]
        seeds = sorted(yaml.safe_load((r / ".hydra" / "config.yaml").read_text())["seed"] for r in runs)
        assert seeds == [0, 1]
        job_ids = sorted(yaml.safe_load((r / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["id"] for r in runs)
        assert job_ids == ["job_id_for_0", "job_id_for_1"]  # set by the Ray launcher, not the basic one

        # The cluster the CLI started lives in our temp dir; each job ran in its own Ray worker process, and
        # that worker's log (logs/worker-<id>-<job>-<pid>.out) holds the job's summary table.
        sessions = [p for p in temp_dir.glob("session_*") if not p.is_symlink()]
        assert len(sessions) == 1, sessions
        driver_pid = int(sessions[0].name.rsplit("_", 1)[1])
        by_seed = {}
        for log in (sessions[0] / "logs").glob("worker-*.out"):
            found = re.search(r"reinforce on cube2x2 \(seed (\d)\)", log.read_text(errors="replace"))
            if found:
                by_seed[int(found.group(1))] = int(log.stem.rsplit("-", 1)[1])
        assert sorted(by_seed) == [0, 1]
        worker_pids = set(by_seed.values())
        assert len(worker_pids) == 2 and driver_pid not in worker_pids
        assert {int(p) for p in re.findall(r"\(_run_job pid=(\d+)\)", proc.stdout)} == worker_pids

        # The driver's ray.shutdown at exit stops the head (gcs_server, raylet, monitors: their command lines
        # name our temp dir). Idle workers exit on their own later (slowly on a loaded machine); ours are killed
        # below by pid either way.
        deadline = time.monotonic() + 60
        while _ray_processes(temp_dir, set()) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _ray_processes(temp_dir, set())
        assert not left, f"the Ray head is still running 60 s after the sweep ended: {left}"
    finally:
        for pid in _ray_processes(temp_dir, worker_pids):  # only ours, by pid
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


# The CLI with the Ray plugin made unimportable (None in sys.modules): what a venv without `cpcrl[ray]` looks
# like to Hydra's plugin scan and to cpcrl's own check (importlib.util.find_spec returns None).
WITHOUT_RAY = (f"import runpy, sys; sys.modules[{RAY_MODULE!r}] = None; sys.argv[0] = 'cpcrl'; "
               "runpy.run_module('cpcrl', run_name='__main__', alter_sys=True)")


def test_missing_ray_plugin_names_the_extra(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-c", WITHOUT_RAY, "-m", "hydra/launcher=ray", *TINY, "seed=0,1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "pip install 'cpcrl[ray]'" in proc.stderr, proc.stderr
    assert not (tmp_path / "outputs").exists()
