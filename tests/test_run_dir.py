"""Run dirs as a careful user meets them (issue 15): one writer at a time, finished runs, full disks, bad paths,
refused resumes and evals, foreign checkpoints, divergence, missing env packages. Real processes, real files."""

import errno
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from cpcrl.checkpoint import FORMAT, CheckpointWriteError, load_checkpoint, save_checkpoint
from cpcrl.errors import ConfigError
from cpcrl.run_dir import LOCK_NAME
from tests.conftest import cpcrl

TINY = ["agent=reinforce", "env=cube2x2", "device=cpu", "logger=none", "train.total_steps=4096",
        "train.log_every=1024", "eval.every=2048", "eval.episodes=10", "checkpoint.every=2048", "seed=3"]
LONG = [*TINY, "train.total_steps=100000000", "eval.every=0", "checkpoint.every=1024"]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def files(run_dir) -> dict:
    """Every file of a run dir and its bytes: what "changes nothing" compares."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def one_line_error(proc, code: int = 2) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("cpcrl: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A complete tiny run (read only: tests that change a run copy it)."""
    cwd = tmp_path_factory.mktemp("finished")
    cpcrl(*TINY, "hydra.run.dir=run", cwd=cwd)
    return cwd / "run"


def test_one_writer_per_run_dir_and_a_dead_holders_lock_is_taken_over(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline"}
    live = subprocess.Popen([sys.executable, "-m", "cpcrl", *LONG, "hydra.run.dir=run"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "run"
    deadline = time.time() + 120
    while not list((run / "checkpoints").glob("step_*.pt")) and time.time() < deadline and live.poll() is None:
        time.sleep(0.05)
    assert live.poll() is None, live.stderr.read()
    holder = json.loads((run / LOCK_NAME).read_text())
    assert holder["pid"] == live.pid and holder["host"] == socket.gethostname()
    hydra_before = files(run / ".hydra")
    try:
        for args in ([*TINY, "hydra.run.dir=run"], ["resume=run"]):  # a second run, a resume of the live run
            err = one_line_error(cpcrl(*args, cwd=tmp_path, check=False))
            assert f"in use by pid {live.pid} on host {socket.gethostname()} (started " in err, err
        assert files(run / ".hydra") == hydra_before  # the live run's dir is untouched
        assert live.poll() is None
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    assert (run / LOCK_NAME).exists()  # SIGKILL: the file stays, its flock is gone

    proc = cpcrl("resume=run", "train.total_steps=1", cwd=tmp_path)  # stop at once: the final eval, summary
    assert f"taking over the lock of run dir {run}: pid {live.pid} on host" in proc.stderr, proc.stderr
    assert "is no longer running" in proc.stderr
    assert (run / "summary.json").exists() and not (run / LOCK_NAME).exists()


def test_resume_of_a_complete_run_changes_nothing_and_more_steps_extend_it(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = files(run)
    proc = cpcrl("resume=run", cwd=tmp_path)
    assert f"run {run} is complete" in proc.stdout and "train.total_steps=<more> extends it" in proc.stdout
    assert files(run) == before

    # stale temp files of a write a kill interrupted: removed when the run resumes
    for name in (".step_000000001024.pt.tmp", ".last.pt.tmp"):
        (run / "checkpoints" / name).write_bytes(b"\0" * 1000)
    (run / ".summary.json.tmp").write_text("{")
    proc = cpcrl("resume=run", "train.total_steps=8192", cwd=tmp_path)
    assert "removed 3 stale temp file(s)" in proc.stdout
    assert not list(run.rglob(".*.tmp"))
    after = rows(run)
    assert after[: len(rows(finished))] == rows(finished)
    evals = [r["env_step"] for r in after if "eval/return_mean" in r]
    assert evals == sorted(set(evals)), "an eval row repeats at one step"
    train_steps = [r["env_step"] for r in after if "train/iteration" in r]
    assert train_steps == sorted(set(train_steps)) and train_steps[-1] >= 8192
    assert json.loads((run / "summary.json").read_text())["env_step"] >= 8192
    assert "is complete" in cpcrl("resume=run", cwd=tmp_path).stdout  # the extension is the run's total now


# Runs the real CLI with a fault injected into this process (a full disk, a diverging loss).
PATCHED = """
import os, sys
from cpcrl.app import main
{patch}
main()
"""
FULL_DISK = """
import errno, torch, cpcrl.checkpoint as ck
calls, real_save = [0], torch.save
def save(obj, f):
    calls[0] += 1
    if calls[0] >= int(os.environ["FAIL_AT"]):
        f.write(b"partial" * 1000)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_save(obj, f)
ck.torch.save = save
"""
NAN_LOSS = """
from cpcrl.agents.reinforce import Reinforce
real, calls = Reinforce.train_iteration, [0]
def train_iteration(self, collector):
    metrics = real(self, collector)
    calls[0] += 1
    if calls[0] > int(os.environ["NAN_AFTER"]):  # the grad norm first: the loss is named all the same
        metrics = {"loss/grad_norm": float("nan"), **metrics, "loss/policy": float("nan")}
        metrics["loss/grad_norm"] = float("nan")
    return metrics
Reinforce.train_iteration = train_iteration
"""


def patched_cpcrl(patch: str, *args, cwd, **env):
    code = PATCHED.format(patch=patch)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "WANDB_MODE": "offline", **env})


def test_checkpoint_write_failure_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"counters": {"env_step": 1}})
    good = path.read_bytes()

    def full_disk(obj, f):
        f.write(b"x" * 4096)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointWriteError, match="No space left on device; the previous last.pt is kept"):
        save_checkpoint(path, {"counters": {"env_step": 2}})
    assert path.read_bytes() == good and os.listdir(tmp_path) == ["last.pt"]


def test_full_disk_during_a_run_is_one_line_and_the_run_resumes(tmp_path):
    # checkpoint.every=1024: the first periodic checkpoint is saves 1 (last.pt) and 2 (step file); save 3 fails
    proc = patched_cpcrl(FULL_DISK, *TINY, "checkpoint.every=1024", "hydra.run.dir=run", cwd=tmp_path, FAIL_AT="3")
    err = one_line_error(proc, code=1)
    assert "No space left on device; the previous last.pt is kept" in err and "resume=" in err
    ckpts = tmp_path / "run" / "checkpoints"
    assert not list(ckpts.glob(".*tmp"))
    (step_file,) = ckpts.glob("step_*.pt")
    kept = load_checkpoint(ckpts / "last.pt")["counters"]["env_step"]
    assert step_file.name == f"step_{kept:012d}.pt"
    assert f"resumed from env step {kept:,}" in cpcrl("resume=run", cwd=tmp_path).stdout  # space is back
    assert (tmp_path / "run" / "summary.json").exists()


def test_divergence_says_truthfully_what_is_kept(tmp_path):
    err = one_line_error(patched_cpcrl(NAN_LOSS, *TINY, "hydra.run.dir=a", cwd=tmp_path, NAN_AFTER="0"), code=3)
    assert "loss/policy became nan at env step" in err and "(also non-finite: loss/grad_norm)" in err
    assert "no checkpoint is kept" in err and not (tmp_path / "a" / "checkpoints").exists()

    err = one_line_error(patched_cpcrl(NAN_LOSS, *TINY, "checkpoint.every=1024", "hydra.run.dir=b", cwd=tmp_path,
                                       NAN_AFTER="2"), code=3)
    saved = load_checkpoint(tmp_path / "b")["counters"]["env_step"]
    assert f"keeping {tmp_path / 'b' / 'checkpoints' / 'last.pt'} of env step {saved:,}" in err, err


def test_unusable_run_dirs_are_one_line_naming_the_path(tmp_path):
    (tmp_path / "a_file").write_text("")
    err = one_line_error(cpcrl(*TINY, "hydra.run.dir=a_file/run", cwd=tmp_path, check=False))
    assert f"hydra.run.dir={tmp_path / 'a_file' / 'run'}: {tmp_path / 'a_file'} is a file, not a directory" in err
    err = one_line_error(cpcrl(*TINY, "hydra.run.dir=a_file", cwd=tmp_path, check=False))
    assert "is a file, not a directory" in err
    err = one_line_error(cpcrl(*TINY, "hydra.run.dir=/proc/cpcrl_run", cwd=tmp_path, check=False))
    assert "hydra.run.dir=/proc/cpcrl_run: cannot create /proc/cpcrl_run" in err
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


@pytest.mark.skipif(importlib.util.find_spec("Box2D") is not None, reason="box2d is installed here")
def test_missing_env_package_says_what_to_install_and_keeps_the_users_dirs(tmp_path):
    (tmp_path / "mine" / "empty").mkdir(parents=True)
    gym = ["agent=reinforce", "env=gym", "env.id=LunarLander-v3", "device=cpu", "logger=none"]
    for run_dir in ("mine/empty", "mine/empty/new/run"):  # a dir of the user's, one under it that cpcrl makes
        err = one_line_error(cpcrl(*gym, f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False))
        assert "env.id=LunarLander-v3 needs a package that is not installed" in err and "gymnasium[box2d]" in err
        assert (tmp_path / "mine" / "empty").is_dir() and os.listdir(tmp_path / "mine" / "empty") == []


def test_a_refused_resume_leaves_the_run_dir_untouched(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = files(run)
    more = "train.total_steps=8192"  # past the complete run's end: the resume goes as far as loading the agent
    err = one_line_error(cpcrl("resume=run", "agent.hidden=[7]", more, cwd=tmp_path, check=False))  # in the run
    assert "does not fit agent=reinforce as configured" in err
    assert files(run) == before
    err = one_line_error(cpcrl("resume=run", "agent=ppo_lstm", more, cwd=tmp_path, check=False))  # before it
    assert "holds agent=reinforce, not agent=ppo_lstm" in err
    assert files(run) == before
    assert "is complete" in cpcrl("resume=run", cwd=tmp_path).stdout  # a plain resume still reads the run


def test_eval_refuses_an_agent_or_world_model_the_checkpoint_does_not_hold(finished):
    for override, valid in (("agent=ppo_lstm", "agent=reinforce"), ("world_model=lstm", "world_model=none")):
        err = one_line_error(cpcrl("mode=eval", f"checkpoint={finished}", override, cwd=finished.parent,
                                   check=False))
        assert f"holds {valid}, not {override}" in err, err
    assert not (finished / "eval").exists()


def test_foreign_checkpoints_are_not_cpcrl_checkpoints(tmp_path):
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"format": FORMAT, "agent_name": "reinforce", "agent": {}, "rng": {}, "config": ""},
               folder / "no_counters.pt")
    (folder / "random.pt").write_bytes(os.urandom(4096))
    with pytest.raises(ConfigError, match="not a cpcrl checkpoint \\(missing 'counters'\\)"):
        load_checkpoint(folder / "no_counters.pt")
    for name, expected in (("no_counters.pt", "not a cpcrl checkpoint (missing 'counters')"),
                           ("random.pt", "not a cpcrl checkpoint (")):
        err = one_line_error(cpcrl("mode=eval", f"checkpoint={folder / name}", cwd=tmp_path, check=False))
        assert expected in err, err
    assert sorted(os.listdir(tmp_path / "run")) == ["checkpoints"]  # no eval/ dir left behind


def test_eval_of_a_read_only_run_writes_to_eval_out_dir(finished, tmp_path):
    before = files(finished)
    proc = cpcrl("mode=eval", f"checkpoint={finished}", "eval.out_dir=elsewhere/e1", cwd=tmp_path)
    result = json.loads((tmp_path / "elsewhere" / "e1" / "eval.json").read_text())
    assert result["env_step"] == load_checkpoint(finished)["counters"]["env_step"] and "eval.json" in proc.stdout
    assert files(finished) == before and not (finished / "eval").exists()  # the run dir is not written
    # We run as root, for whom chmod makes nothing read-only: unwritable targets are paths nobody can create.
    (tmp_path / "a_file").write_text("")
    for target, problem in ((tmp_path / "a_file" / "e", f"{tmp_path / 'a_file'} is a file, not a directory"),
                            ("/proc/cpcrl_eval", "cannot create /proc/cpcrl_eval")):
        err = one_line_error(cpcrl("mode=eval", f"checkpoint={finished}", f"eval.out_dir={target}", cwd=tmp_path,
                                   check=False))
        assert f"eval.out_dir={target}: {problem}" in err, err
    assert files(finished) == before and sorted(os.listdir(tmp_path)) == ["a_file", "elsewhere"]
    run = tmp_path / "run"  # a run whose own eval dir cannot be made: the message points to eval.out_dir
    shutil.copytree(finished, run)
    (run / "eval").write_text("")
    err = one_line_error(cpcrl("mode=eval", f"checkpoint={run}", cwd=tmp_path, check=False))
    assert f"{run / 'eval'} is a file, not a directory" in err and "or give eval.out_dir=<a writable dir>" in err


def test_eval_applies_env_overrides_that_fit_the_agent_and_refuses_others(finished, tmp_path):
    proc = cpcrl("mode=eval", f"checkpoint={finished}", "env.scramble_depth=2", "env.max_steps=7",
                 "eval.out_dir=fits", cwd=tmp_path)
    assert "env overrides applied (the agent's observation and action spaces fit): env.max_steps=7 " \
           "env.scramble_depth=2" in " ".join(proc.stdout.split()), proc.stdout
    assert json.loads((tmp_path / "fits" / "eval.json").read_text())["eval/length_mean"] <= 7  # max_steps applied
    err = one_line_error(cpcrl("mode=eval", f"checkpoint={finished}", "env=cartpole", "eval.out_dir=no",
                               cwd=tmp_path, check=False))
    assert "do not fit checkpoint" in err and "its agent acts on observation space Box(" in err, err
    assert "(4,), float32)" in err and not (tmp_path / "no").exists()
