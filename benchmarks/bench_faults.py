"""Fault injection (issue 15): short trainings of ppo_lstm, cpc_rl and dreamer, each SIGKILLed many times and resumed
every time, then the invariants a kill must keep.

Kills are aimed three ways, in turn: at a checkpoint write (the moment a `.<name>.pt.tmp` appears), at a W&B flush
(the moment the run's `.wandb` file grows; the whole process group is killed, W&B's core process included), and at
a random time. A kill counts as mid-checkpoint-write when a temp file is left, as mid-W&B-flush when the newest
`.wandb` file ends inside a record. After every kill `checkpoints/last.pt` must load; after the last, a plain
resume runs to the end and then: metrics.jsonl has every `train.log_every` row once (env_step strictly
increasing, no gap), the W&B history over the run's files (`cpcrl.wandb_file.run_history`) equals metrics.jsonl,
and no temp file is left.

Usage: python benchmarks/bench_faults.py [--kills-per-agent 10] [--seed 0] [--out DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

COMMON = ["device=cpu", "device.threads=1", "logger=wandb", "eval.every=0", "eval.episodes=1", "eval.num_envs=1",
          "checkpoint.keep=1", "seed=0"]
PPO = ["env.num_envs=4", "agent.num_steps=16", "agent.truncation_length=8", "agent.update_epochs=1",
       "agent.num_minibatches=2", "world_model.hidden=16", "world_model.lstm_hidden=16", "train.log_every=64",
       "checkpoint.every=128"]  # an iteration is 64 env steps: a row every iteration, a checkpoint every second
RUNS = {  # agent -> (overrides, train.total_steps, train.log_every)
    "ppo_lstm": (["agent=ppo_lstm", "env=cartpole", *PPO], 51200, 64),
    "cpc_rl": (["agent=cpc_rl", "env=cartpole_pomdp", "agent.cpc.horizon=2", *PPO], 51200, 64),
    "dreamer": (["agent=dreamer", "env=pendulum", "env.num_envs=1", "env.max_episode_steps=20", "agent.batch_size=4",
                 "agent.seq_len=8", "agent.save_replay=true", "world_model.deter=16", "world_model.hidden=16",
                 "world_model.encoder.hidden=16", "world_model.decoder.hidden=16", "world_model.heads.hidden=16",
                 "agent.size=null", "world_model.latents=4", "world_model.classes=4", "agent.prefill=20",
                 "agent.horizon=4", "agent.train_ratio=16", "train.log_every=5", "checkpoint.every=10"], 1200, 5),
}
AIMS = ("checkpoint", "wandb", "random")


def temp_files(run: Path) -> list[Path]:
    return [p for p in run.rglob(".*.tmp") if p.is_file()]


def wandb_size(run: Path) -> int:
    return sum(p.stat().st_size for p in run.glob("wandb/*run-*/*.wandb"))


def start(cwd: Path, args: list[str]) -> subprocess.Popen:
    """The CLI in its own process group; its stderr in cwd/stderr.txt (`stderr_of`)."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    with open(cwd / "stderr.txt", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "cpcrl", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                                stderr=err, start_new_session=True)


def stderr_of(cwd: Path) -> str:
    return (cwd / "stderr.txt").read_text()[-400:]


def kill_once(proc: subprocess.Popen, run: Path, aim: str, rng: random.Random, timeout: float = 120) -> dict | None:
    """Wait for the aimed moment, SIGKILL; -> what the kill hit, or None when the run ended first."""
    ckpts, deadline = run / "checkpoints", time.time() + timeout
    trained_by = time.time() + rng.uniform(2.0, 8.0)  # random aim: the start-up (imports, wandb.init) or later
    size = wandb_size(run)
    while proc.poll() is None and time.time() < deadline:
        if aim == "checkpoint" and any(ckpts.glob(".*.pt.tmp")):
            break
        if aim == "wandb":
            now = wandb_size(run)
            if now != size and (ckpts / "last.pt").exists():
                break
            size = now
        if aim == "random" and time.time() >= trained_by:
            break
        time.sleep(0.001 if aim != "random" else 0.05)
    if proc.poll() is not None:
        return None
    os.killpg(proc.pid, signal.SIGKILL) if aim == "wandb" else proc.send_signal(signal.SIGKILL)
    proc.wait()
    return {"aim": aim, "mid_checkpoint_write": bool(list(ckpts.glob(".*.pt.tmp"))), "mid_wandb_flush": torn(run)}


class _Count(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.n = 0

    def emit(self, record):
        self.n += 1


def torn(run: Path) -> bool:
    """Does the newest W&B file of the run end inside a record (a kill that cut a W&B write short)?"""
    from cpcrl.wandb_file import find_run_file, read_records

    files = list(run.glob("wandb/*run-*-*/*.wandb"))
    if not files:
        return False
    counter, log = _Count(), logging.getLogger("cpcrl.wandb_file")
    log.addHandler(counter)
    try:
        for _ in read_records(find_run_file(max(files, key=lambda p: p.parent.name))):  # warns when cut short
            pass
    finally:
        log.removeHandler(counter)
    return counter.n > 0


def check_run(run: Path, total: int, log_every: int) -> list[str]:
    """The invariants of a finished run; -> what is broken (empty: nothing)."""
    from cpcrl.checkpoint import load_checkpoint
    from cpcrl.logging import wandb_row
    from cpcrl.wandb_file import run_history

    problems = []
    payload = load_checkpoint(run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["env_step"] for r in rows if "train/iteration" in r]
    gaps = [b - a for a, b in zip(steps, steps[1:])]  # the first row may come later (Dreamer's prefill)
    if len(steps) < 2 or min(gaps) <= 0 or max(gaps) > log_every or steps[-1] != total:
        problems.append(f"metrics.jsonl train rows repeat, miss or end early: {steps}")
    history = run_history(run, payload["wandb_id"])
    if [h.get("_step") for h in history] != list(range(len(history))) or \
            [{k: v for k, v in h.items() if not k.startswith("_")} for h in history] != [wandb_row(r) for r in rows]:
        problems.append(f"W&B history ({len(history)} rows) differs from metrics.jsonl ({len(rows)} rows)")
    if temp_files(run):
        problems.append(f"temp files left: {temp_files(run)}")
    return problems


def fault_run(agent: str, kills: int, cwd: Path, rng: random.Random) -> dict:
    """One agent's run killed `kills` times, resumed each time, then finished and checked."""
    from cpcrl.checkpoint import load_checkpoint
    from cpcrl.errors import ConfigError

    overrides, total, log_every = RUNS[agent]
    run = cwd / agent
    first = [*overrides, *COMMON, f"train.total_steps={total}", f"hydra.run.dir={agent}"]
    out = {"agent": agent, "kills": 0, "mid_checkpoint_write": 0, "mid_wandb_flush": 0, "corruptions": 0,
           "problems": []}
    attempts = 0
    while out["kills"] < kills and attempts < 3 * kills:
        attempts += 1
        resumable = (run / "checkpoints" / "last.pt").exists()
        proc = start(cwd, [f"resume={agent}"] if resumable else first)
        hit = kill_once(proc, run, AIMS[attempts % len(AIMS)], rng)
        if hit is None:  # the run ended first: it must have ended well
            if proc.returncode != 0:
                out["problems"].append(f"run exited {proc.returncode}: {stderr_of(cwd)}")
                out["corruptions"] += 1
            break
        out["kills"] += 1
        out["mid_checkpoint_write"] += hit["mid_checkpoint_write"]
        out["mid_wandb_flush"] += hit["mid_wandb_flush"]
        if (run / "checkpoints" / "last.pt").exists():
            try:
                load_checkpoint(run)
            except ConfigError as e:
                out["corruptions"] += 1
                out["problems"].append(f"after kill {out['kills']}: {e}")
    if (run / "checkpoints" / "last.pt").exists():
        proc = start(cwd, [f"resume={agent}"])
        proc.wait()
        if proc.returncode != 0:
            out["corruptions"] += 1
            out["problems"].append(f"final resume exited {proc.returncode}: {stderr_of(cwd)}")
    problems = check_run(run, total, log_every) if (run / "summary.json").exists() else ["the run never finished"]
    out["corruptions"] += bool(problems)
    out["problems"] += problems
    return out


def fault_injection(kills_per_agent: int, cwd: Path, seed: int = 0, agents=tuple(RUNS)) -> dict:
    rng = random.Random(seed)
    t0 = time.time()
    results = [fault_run(agent, kills_per_agent, cwd, rng) for agent in agents]
    totals = {k: sum(r[k] for r in results) for k in ("kills", "mid_checkpoint_write", "mid_wandb_flush",
                                                       "corruptions")}
    return {"runs": results, **totals, "wall_s": round(time.time() - t0, 1), "torch": torch.__version__}


def main() -> None:
    logging.getLogger("cpcrl.wandb_file").addHandler(logging.NullHandler())  # a cut file is counted, not printed
    logging.getLogger("cpcrl.wandb_file").propagate = False
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills-per-agent", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    cwd = args.out or Path(tempfile.mkdtemp(prefix="cpcrl_faults_"))
    cwd.mkdir(parents=True, exist_ok=True)
    result = fault_injection(args.kills_per_agent, cwd, args.seed)
    from machine_info import cpu_model  # sibling module: benchmarks/ is on sys.path when the script runs

    result.update(machine=f"{cpu_model()}, {os.cpu_count()} CPUs", date=time.strftime("%Y-%m-%d"),
                  command=" ".join(["python benchmarks/bench_faults.py", *sys.argv[1:]]))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    sys.exit(1 if result["corruptions"] else 0)


if __name__ == "__main__":
    main()
