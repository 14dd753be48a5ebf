"""The CLI end to end, as a user runs it: run dirs, metrics, W&B, checkpoints, eval, resume, packaging."""

import json
import os
import signal
import shutil
import subprocess
import sys
import time
import zipfile

import pytest
import torch

from cpcrl.wandb_file import read_run
from tests.conftest import ROOT, cpcrl

TINY = ["agent=reinforce", "env=cube2x2", "device=cpu", "train.total_steps=4096", "train.log_every=1024",
        "eval.every=2048", "eval.episodes=10", "checkpoint.every=2048", "seed=3"]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cli")
    proc = cpcrl(*TINY, "logger=wandb", "logger.tags=[test]", "hydra.run.dir=run", cwd=cwd)
    return cwd, cwd / "run", proc


def test_run_dir_holds_everything(trained):
    _, run, proc = trained
    assert (run / ".hydra" / "config.yaml").exists() and (run / ".hydra" / "overrides.yaml").exists()
    assert (run / "checkpoints" / "last.pt").exists() and list((run / "checkpoints").glob("step_*.pt"))
    metrics = rows(run)
    assert all("env_step" in r for r in metrics)
    steps = [r["env_step"] for r in metrics if "train/episode_return" in r]
    assert steps == sorted(steps) and steps[-1] >= 4096
    evals = [r for r in metrics if "eval/return_mean" in r]
    assert len(evals) >= 2  # periodic + final
    summary = json.loads((run / "summary.json").read_text())
    for key in ("eval/return_mean", "eval/return_std", "eval/solve_rate", "eval/length_mean"):
        assert summary[key] == evals[-1][key]  # same names and values as the last metrics row
    assert summary["env_step"] == evals[-1]["env_step"]
    assert "eval/return_mean" in proc.stdout  # the rich summary table


def test_checkpoint_is_complete_and_loads_weights_only(trained):
    _, run, _ = trained
    payload = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert payload["format"] == "cpcrl-checkpoint-1" and payload["agent_name"] == "reinforce"
    assert payload["counters"]["env_step"] >= 4096 and "rng" in payload and "config" in payload
    assert set(payload["agent"]["optim"]) == {"policy"}
    assert not list((run / "checkpoints").glob(".*tmp"))  # no torn temp files left behind


def test_wandb_offline_run_reads_back(trained):
    _, run, _ = trained
    wb = read_run(run)
    assert wb["run"]["group"] == "reinforce_cube2x2" and wb["run"]["job_type"] == "reinforce"
    assert wb["run"]["tags"] == ["test"] and "seed=3" in wb["run"]["display_name"]
    assert {"name": "*", "step_metric": "env_step"} in wb["metrics"]
    assert wb["config"]["agent"]["name"] == "reinforce" and wb["config"]["train"]["total_steps"] == 4096
    local = [r for r in rows(run)]
    logged = [h for h in wb["history"] if "train/episode_return" in h]
    assert [h["env_step"] for h in logged] == [r["env_step"] for r in local if "train/episode_return" in r]
    assert logged[0]["train/episode_return"] == pytest.approx(
        next(r for r in local if "train/episode_return" in r)["train/episode_return"])
    assert wb["summary"]["eval/return_mean"] == json.loads((run / "summary.json").read_text())["eval/return_mean"]


def test_eval_mode_reports_per_depth_next_to_the_run(trained):
    cwd, run, _ = trained
    proc = cpcrl("mode=eval", "checkpoint=run", "eval.episodes=20", "device=cpu", cwd=cwd)
    files = list((run / "eval").glob("*/eval.json"))
    assert len(files) == 1, proc.stdout
    result = json.loads(files[0].read_text())
    assert result["eval/episodes"] == 20 and "eval/return_std" in result
    assert [k for k in result if k.startswith("eval/solve_rate_d")] == [f"eval/solve_rate_d{d}" for d in range(1, 15)]
    assert result["eval/solve_rate_d1"] >= result["eval/solve_rate_d14"]
    assert "solve_rate_d6" in proc.stdout


def test_bad_checkpoints_give_one_line(trained, tmp_path):
    cwd, run, _ = trained
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    proc = cpcrl("mode=eval", f"checkpoint={garbage}", cwd=cwd, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cannot read checkpoint" in proc.stderr
    proc = cpcrl("resume=run", "agent.hidden=[7]", cwd=cwd, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "does not fit agent=reinforce as configured" in proc.stderr
    assert (run / "checkpoints" / "last.pt").exists()  # the run it failed to resume is untouched


def test_resume_after_sigkill_repeats_no_step(tmp_path):
    args = ["agent=reinforce", "env=cube2x2", "env.scramble_depth=3", "device=cpu", "logger=none",
            "train.total_steps=400000", "train.log_every=4000", "eval.every=0", "eval.episodes=10",
            "checkpoint.every=30000", "hydra.run.dir=run"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, "-m", "cpcrl", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = tmp_path / "run" / "checkpoints"
    deadline = time.time() + 120
    while len(list(ckpts.glob("step_*.pt"))) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = torch.load(ckpts / "last.pt", weights_only=True)["counters"]["env_step"]
    before = rows(tmp_path / "run")
    assert 0 < saved < 400000

    out = cpcrl("resume=run", cwd=tmp_path)
    assert f"resumed from env step {saved:,}" in out.stdout
    after = rows(tmp_path / "run")
    steps = [r["env_step"] for r in after if "train/episode_return" in r]
    assert steps == sorted(set(steps)), "a logged step repeats"
    assert after[: len([r for r in before if r["env_step"] <= saved])] == [r for r in before if r["env_step"] <= saved]
    assert steps[-1] >= 400000 and json.loads((tmp_path / "run" / "summary.json").read_text())["env_step"] >= 400000


def test_same_seed_same_metrics(tmp_path):
    for name in ("a", "b"):
        cpcrl(*TINY, "logger=none", "eval.every=0", f"hydra.run.dir={name}", cwd=tmp_path)
    strip = lambda rs: [{k: v for k, v in r.items() if k not in ("time", "perf/sps")} for r in rs]  # noqa: E731
    assert strip(rows(tmp_path / "a")) == strip(rows(tmp_path / "b"))


def test_max_minutes_stops_early_with_final_eval_and_checkpoint(tmp_path):
    cpcrl(*TINY, "logger=none", "train.total_steps=100000000", "train.max_minutes=0.05", "hydra.run.dir=run",
          cwd=tmp_path)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_by"] == "max_minutes" and 0 < summary["env_step"] < 100000000
    assert "eval/solve_rate" in summary and summary["time_s"] < 60
    payload = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert payload["counters"]["env_step"] == summary["env_step"] and payload["counters"]["wall_s"] >= 3.0


def test_multirun_sweep_makes_one_dir_per_job(tmp_path):
    cpcrl("-m", *TINY, "logger=none", "eval.every=0", "seed=0,1", cwd=tmp_path)
    summaries = sorted((tmp_path / "outputs" / "multirun").rglob("summary.json"))
    assert len(summaries) == 2
    assert [p.parent.name.split("_")[0] for p in summaries] == ["0", "1"]
    assert "seed=0" in summaries[0].parent.name and "seed=1" in summaries[1].parent.name


def test_help_and_cfg_list_groups(tmp_path):
    help_text = cpcrl("--help", cwd=tmp_path).stdout
    section = help_text.split("== Config groups ==")[1].split("== Common keys ==")[0]
    groups = {ln.split(":")[0]: ln.split(":")[1] for ln in section.splitlines() if ln.count(":") == 1}
    assert "reinforce" in groups["agent"] and "cube2x2" in groups["env"] and "cartpole_pomdp" in groups["env"]
    assert groups["logger"].strip() == "none, wandb" and groups["device"].strip() == "auto, cpu, cuda"
    assert "cpcrl: reinforcement learning with recurrent belief states" in help_text
    job = cpcrl("--cfg", "job", "env=cartpole_pomdp", cwd=tmp_path).stdout
    assert "name: cartpole_pomdp" in job and "total_steps:" in job and not (tmp_path / "outputs").exists()


def test_wheel_ships_configs_and_runs_outside_the_repo(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist)], check=True, capture_output=True)
    wheel = next(dist.glob("cpcrl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for cfg in ("cpcrl/conf/config.yaml", "cpcrl/conf/agent/reinforce.yaml", "cpcrl/conf/env/cube2x2.yaml",
                "cpcrl/conf/hydra/help/cpcrl.yaml"):
        assert cfg in names
    for init in (ROOT / "cpcrl").rglob("__init__.py"):  # every subpackage ships
        assert str(init.relative_to(ROOT)) in names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "offline"}
    where = subprocess.run([sys.executable, "-c", "import cpcrl; print(cpcrl.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site))  # the installed copy, not the checkout
    if shutil.which("cc") or shutil.which("gcc"):  # the C step is built into the wheel and used from it
        assert any(n.startswith("cpcrl/envs/_cube_step") and n.endswith((".so", ".pyd")) for n in names)
        probe = "from cpcrl.envs import cube2x2 as c; print(c._cube_step.__file__)"
        kernel = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                                check=True).stdout
        assert kernel.startswith(str(site))
    run = subprocess.run([sys.executable, "-m", "cpcrl", *TINY, "logger=none", "eval.every=0", "hydra.run.dir=r"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "r" / "summary.json").exists()
