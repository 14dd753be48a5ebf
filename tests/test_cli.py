"""The CLI end to end, as a user runs it: run dirs, metrics, W&B, checkpoints, eval, resume, packaging."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import torch
from omegaconf import OmegaConf

from cpcrl.checkpoint import load_checkpoint
from cpcrl.collector import evaluate
from cpcrl.logging import wandb_row
from cpcrl.train import build_agent, load_agent_state, make_env
from cpcrl.wandb_file import read_run, run_files, run_history
from tests.conftest import ROOT, cpcrl

EVAL_EPISODES = 40  # enough that two different scramble streams give different eval numbers at depth 1
TINY = ["agent=reinforce", "env=cube2x2", "device=cpu", "train.total_steps=4096", "train.log_every=1024",
        "eval.every=2048", f"eval.episodes={EVAL_EPISODES}", "checkpoint.every=2048", "seed=3"]


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


EVAL_KEYS = ("eval/return_mean", "eval/return_std", "eval/length_mean", "eval/episodes", "eval/solve_rate")


def eval_rows(run_dir):
    return [r for r in rows(run_dir) if "eval/return_mean" in r]


def checkpoint_agent(path):
    """The agent a checkpoint holds, built from its own config (what mode=eval and resume load)."""
    payload = load_checkpoint(path)
    cfg = OmegaConf.create(payload["config"])
    envs = make_env(cfg.env)
    agent = build_agent(cfg, envs, torch.device("cpu"))
    load_agent_state(agent, payload, path)
    envs.close()
    return agent, cfg


def seeded_eval_envs(cfg, episodes: int):
    """Eval envs as the run and mode=eval make them: one env per episode (up to eval.num_envs), seed + 1_000_003."""
    envs = make_env(cfg.env, num_envs=min(int(cfg.eval.num_envs), episodes))
    envs.reset(seed=int(cfg.seed) + 1_000_003)
    return envs


def test_eval_mode_reproduces_the_runs_eval_and_reports_per_depth(trained):
    cwd, run, _ = trained
    periodic = eval_rows(run)[0]  # taken at the step of the periodic checkpoint, before it was written
    ckpt = run / "checkpoints" / f"step_{periodic['env_step']:012d}.pt"
    proc = cpcrl("mode=eval", f"checkpoint={ckpt}", "seed=3", f"eval.episodes={EVAL_EPISODES}", "device=cpu", cwd=cwd)
    files = list((run / "eval").glob("*/eval.json"))
    assert len(files) == 1, proc.stdout
    result = json.loads(files[0].read_text())
    # the run's seed and eval settings on the agent of that step: the very same scrambles and episodes
    assert {k: result[k] for k in EVAL_KEYS} == {k: periodic[k] for k in EVAL_KEYS}
    depths = [f"eval/solve_rate_d{d}" for d in range(1, 15)]
    assert [k for k in result if k.startswith("eval/solve_rate_d")] == depths
    assert all(result[k] in {i / EVAL_EPISODES for i in range(EVAL_EPISODES + 1)} for k in depths)  # a count / n
    assert "solve_rate_d6" in proc.stdout

    # recomputed here: after the eval at the depth the run had reached, the same envs play n episodes per depth
    agent, cfg = checkpoint_agent(ckpt)
    envs = seeded_eval_envs(cfg, EVAL_EPISODES)
    envs.set_scramble_depth(cfg.env.scramble_depth)
    evaluate(agent, envs, EVAL_EPISODES, greedy=True)
    for depth in range(1, 15):
        envs.set_scramble_depth(depth)
        solve_rate = evaluate(agent, envs, EVAL_EPISODES, greedy=True)["eval/solve_rate"]
        assert solve_rate == result[f"eval/solve_rate_d{depth}"], depth
    envs.close()


def test_final_eval_continues_the_periodic_evals_scrambles(trained):
    """The run evaluates on one env stream seeded once: its final eval plays the scrambles after the periodic
    eval's, so it equals a fresh eval only after the same periodic eval has been replayed."""
    _, run, _ = trained
    periodic, final = eval_rows(run)
    early, cfg = checkpoint_agent(run / "checkpoints" / f"step_{periodic['env_step']:012d}.pt")
    last, _ = checkpoint_agent(run / "checkpoints" / "last.pt")
    envs = seeded_eval_envs(cfg, int(cfg.eval.episodes))
    for agent, logged in ((early, periodic), (last, final)):
        envs.set_scramble_depth(cfg.env.scramble_depth)  # the run syncs the eval depth before every eval
        metrics = evaluate(agent, envs, int(cfg.eval.episodes), greedy=cfg.eval.greedy)
        assert {k: metrics[k] for k in EVAL_KEYS} == {k: logged[k] for k in EVAL_KEYS}
    envs.close()
    summary = json.loads((run / "summary.json").read_text())
    assert {k: summary[k] for k in EVAL_KEYS} == {k: final[k] for k in EVAL_KEYS}


def test_bad_checkpoints_give_one_line(trained, tmp_path):
    cwd, run, _ = trained
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    proc = cpcrl("mode=eval", f"checkpoint={garbage}", cwd=cwd, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "cannot read checkpoint" in proc.stderr
    proc = cpcrl("resume=run", "agent.hidden=[7]", "train.total_steps=8192", cwd=cwd, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "does not fit agent=reinforce as configured" in proc.stderr
    assert (run / "checkpoints" / "last.pt").exists()  # the run it failed to resume is untouched


def run_until_killed(cwd, args, checkpoints: int = 1, timeout: float = 120) -> dict:
    """Start a real run in cwd/run and SIGKILL it once `checkpoints` periodic checkpoints exist;
    -> the last.pt it left behind (written just before the step file: that checkpoint)."""
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.Popen([sys.executable, "-m", "cpcrl", *args, "hydra.run.dir=run"], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = cwd / "run" / "checkpoints"
    deadline = time.time() + timeout
    while len(list(ckpts.glob("step_*.pt"))) < checkpoints and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {proc.stderr.read()}"
    return torch.load(ckpts / "last.pt", weights_only=True)


def assert_resumed_without_repeats(before: list[dict], after: list[dict], saved: int) -> None:
    """What README promises of a resume: rows up to the saved step kept verbatim, no logged step twice."""
    kept = [r for r in before if r["env_step"] <= saved]
    assert after[: len(kept)] == kept
    train_rows = [r for r in after if "train/iteration" in r]
    steps = [r["env_step"] for r in train_rows]
    assert steps == sorted(set(steps)), "a logged step repeats"
    iterations = [r["train/iteration"] for r in train_rows]
    assert iterations == sorted(set(iterations)), "the iteration counter restarted"


def without_timing(metrics: list[dict]) -> list[dict]:
    """Rows minus wall-clock time and speeds: what the same seed must reproduce."""
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith("perf/")} for r in metrics]


def test_resume_after_sigkill_repeats_no_step(tmp_path):
    args = ["agent=reinforce", "env=cube2x2", "env.scramble_depth=3", "device=cpu", "logger=none",
            "train.total_steps=400000", "train.log_every=4000", "eval.every=0", "eval.episodes=10",
            "checkpoint.every=30000"]
    saved = run_until_killed(tmp_path, args, checkpoints=2)["counters"]["env_step"]
    before = rows(tmp_path / "run")
    assert 0 < saved < 400000

    out = cpcrl("resume=run", cwd=tmp_path)
    assert f"resumed from env step {saved:,}" in out.stdout
    after = rows(tmp_path / "run")
    assert_resumed_without_repeats(before, after, saved)
    assert after[-1]["env_step"] >= 400000
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["env_step"] >= 400000


def assert_wandb_history_is_metrics(run_dir) -> None:
    """The W&B history of a run, over the files of all its processes (`run_history`), is metrics.jsonl: row i at
    `_step` i, the same values (W&B drops `time` and nulls), `env_step` on every row."""
    run_id = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["wandb_id"]
    history = run_history(run_dir, run_id)
    assert [h["_step"] for h in history] == list(range(len(history)))
    assert [{k: v for k, v in h.items() if not k.startswith("_")} for h in history] == [
        wandb_row(r) for r in rows(run_dir)]


def test_wandb_history_survives_a_sigkill_and_continues_on_resume(tmp_path):
    args = ["agent=reinforce", "env=cube2x2", "device=cpu", "logger=wandb", "train.total_steps=200000",
            "train.log_every=2000", "eval.every=0", "eval.episodes=10", "checkpoint.every=10000"]
    run = tmp_path / "run"
    saved = run_until_killed(tmp_path, args, checkpoints=2)
    kept = [r for r in rows(run) if r["env_step"] <= saved["counters"]["env_step"]]
    (killed_file,) = run_files(run, saved["wandb_id"])  # W&B's core buffers it: a kill loses its recent rows
    assert len(read_run(killed_file)["history"]) < len(kept)
    cpcrl("resume=run", cwd=tmp_path)
    assert len(run_files(run, saved["wandb_id"])) == 2  # the resumed process's file continues the same run id
    assert_wandb_history_is_metrics(run)
    steps = [r["env_step"] for r in rows(run) if "train/iteration" in r]
    gaps = [b - a for a, b in zip([0, *steps], steps)]  # x-axis env_step: monotonic, no gap, no repeat
    assert min(gaps) > 0 and max(gaps) < 2 * 2000 and steps[-1] >= 200000  # a row per train.log_every


# A few seconds of training each; the first periodic checkpoint comes early, so the kill lands mid-run.
RESUME_COMMON = ["device=cpu", "device.threads=1", "logger=none", "eval.every=0", "eval.episodes=1", "eval.num_envs=1"]
PPO_TINY = ["env.num_envs=4", "agent.num_steps=16", "agent.truncation_length=8", "agent.update_epochs=2",
            "agent.num_minibatches=2", "world_model.hidden=16", "world_model.lstm_hidden=16",
            "train.total_steps=1280", "train.log_every=128", "checkpoint.every=256"]
RSSM_TINY = ["env=pendulum", "env.num_envs=1", "env.max_episode_steps=20", "agent.batch_size=4", "agent.seq_len=8",
             "agent.save_replay=true", "world_model.deter=16", "world_model.hidden=16", "world_model.encoder.hidden=16",
             "world_model.decoder.hidden=16", "world_model.heads.hidden=16"]
RESUMABLE = {
    "ppo_lstm": ["agent=ppo_lstm", "env=cartpole", *PPO_TINY],
    "cpc_rl": ["agent=cpc_rl", "env=cartpole_pomdp", "agent.cpc.horizon=2", *PPO_TINY],
    "planet": ["agent=planet", *RSSM_TINY, "world_model.stoch=4", "agent.planner=cem_fast",
               "agent.planner.horizon=4", "agent.planner.candidates=16",
               "agent.planner.top_k=4", "agent.planner.iterations=2", "agent.seed_episodes=1",
               "agent.collect_interval=2", "train.total_steps=300", "train.log_every=40", "checkpoint.every=80"],
    # one env step per iteration and train_ratio 16 / (batch 4 x seq_len 8): an update every second iteration
    "dreamer": ["agent=dreamer", *RSSM_TINY, "agent.size=null", "world_model.latents=4", "world_model.classes=4",
                "agent.prefill=40", "agent.horizon=4", "agent.train_ratio=16", "train.total_steps=200",
                "train.log_every=25", "checkpoint.every=75"],
}


def adam_steps(payload: dict, name: str) -> int:
    """Adam's step count of one optimizer in a checkpoint (the same for every parameter it updated)."""
    return max(int(s["step"]) for s in payload["agent"]["optim"][name]["state"].values())


def updates_done(agent: str, iterations: int) -> int:
    """Optimizer steps of the RESUMABLE configs after `iterations` train iterations, by hand."""
    return {"ppo_lstm": iterations * 2 * 2, "cpc_rl": iterations * 2 * 2,  # update_epochs x num_minibatches
            "planet": iterations * 2,  # collect_interval
            "dreamer": iterations // 2}[agent]


def assert_state_continued(agent: str, payload: dict) -> None:
    """Counts a checkpoint holds only if nothing restarted at a resume: they follow from its counters alone."""
    counters, model = payload["counters"], payload["agent"]["model"]
    for name in payload["agent"]["optim"]:
        assert adam_steps(payload, name) == updates_done(agent, counters["iteration"]), name
    if agent in ("ppo_lstm", "cpc_rl"):
        assert counters["env_step"] == counters["iteration"] * 16 * 4  # num_steps x num_envs per rollout
        for norm in ("obs_norm", "ret_norm"):  # one count per env step, from a prior count of 1e-4
            assert float(model[f"{norm}.count"]) == pytest.approx(1e-4 + counters["env_step"], abs=1e-6), norm
    else:  # every finished 20-step pendulum episode is in the replay: its 20 obs and the final one
        size, _, episodes, _ = payload["agent"]["replay"]["counters"].tolist()
        assert episodes == counters["episodes"] and size == 21 * episodes


@pytest.mark.parametrize("agent", list(RESUMABLE))
def test_every_agent_resumes_where_it_was_killed(tmp_path, agent):
    killed = run_until_killed(tmp_path, [*RESUMABLE[agent], *RESUME_COMMON])
    saved = killed["counters"]["env_step"]
    before = rows(tmp_path / "run")
    shutil.copytree(tmp_path / "run", tmp_path / "again")  # the same killed run, resumed a second time below
    assert f"resumed from env step {saved:,}" in cpcrl("resume=run", cwd=tmp_path).stdout
    assert_resumed_without_repeats(before, rows(tmp_path / "run"), saved)

    final = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert final["counters"]["iteration"] > killed["counters"]["iteration"]
    assert_state_continued(agent, killed)
    assert_state_continued(agent, final)

    cpcrl("resume=again", cwd=tmp_path)
    assert without_timing(rows(tmp_path / "again")) == without_timing(rows(tmp_path / "run"))


def test_same_seed_same_metrics(tmp_path):
    for name in ("a", "b"):
        cpcrl(*TINY, "logger=none", "eval.every=0", f"hydra.run.dir={name}", cwd=tmp_path)
    assert without_timing(rows(tmp_path / "a")) == without_timing(rows(tmp_path / "b"))


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


def test_two_hydra_modes_are_one_line(tmp_path):
    """Hydra raises a bare ValueError (a traceback) for `-m --cfg job`; cpcrl says which two and what is valid."""
    proc = cpcrl("-m", "agent=random", "--cfg", "job", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--multirun and --cfg cannot be combined" in proc.stderr and "--info (-i)" in proc.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
