"""Belief probes on the T-maze (a script, not a test): ppo_lstm trained in-process for `--steps` env steps per seed,
then its greedy return and the probe scores of its belief, of a randomly initialised ppo_lstm and of the obs.

    python benchmarks/bench_probes.py --seeds 0 1 2 --steps 30000 --json   # benchmarks/results/probes_tmaze.json

One torch thread; T-maze length 10, ppo_lstm with num_steps=32, truncation_length=16 (the slow test's config).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cpcrl.agents import compose_agent, compose_config
from cpcrl.collector import Collector, evaluate
from cpcrl.envs.factory import make_gym_env
from cpcrl.probes import probe_metrics, random_control

from machine_info import cpu_model  # sibling module: benchmarks/ is on sys.path when a script runs

SHOWN = ("probe/class_acc", "probe_random/class_acc", "probe_obs/class_acc", "probe/class_acc_mlp",
         "probe_random/class_acc_mlp", "probe/state_r2", "probe_random/state_r2", "probe_obs/state_r2")


def run_seed(seed: int, steps: int, length: int, episodes: int) -> dict:
    overrides = ("agent=ppo_lstm", f"seed={seed}", f"train.total_steps={steps}", "agent.num_steps=32",
                 "agent.truncation_length=16")
    envs = make_gym_env("cpcrl/TMaze-v0", 8, kwargs={"length": length})
    torch.manual_seed(seed)
    agent = compose_agent(envs.single_observation_space, envs.single_action_space, *overrides)
    t0 = time.perf_counter()
    collector = Collector(envs, torch.device("cpu"), seed)
    while collector.env_step < steps:
        agent.train_iteration(collector)
    train_s = time.perf_counter() - t0
    eval_envs = make_gym_env("cpcrl/TMaze-v0", 8, kwargs={"length": length})
    ret = evaluate(agent, eval_envs, 32)["eval/return_mean"]

    control = random_control(compose_config(*overrides), eval_envs, torch.device("cpu"), seed + 7)
    t0 = time.perf_counter()
    probes = probe_metrics(agent, eval_envs, episodes, control, seed=seed + 100, per_time=True)
    return {"seed": seed, "return": ret, "train_s": train_s, "probe_s": time.perf_counter() - t0, **probes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=30000)
    parser.add_argument("--length", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--json", nargs="?", const="benchmarks/results/probes_tmaze.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, args.steps, args.length, args.episodes))
        print(f"seed {seed}: return {runs[-1]['return']:.2f}, " +
              ", ".join(f"{k} {runs[-1][k]:.3f}" for k in SHOWN if k in runs[-1]), flush=True)
    for k in SHOWN:
        values = [r[k] for r in runs if k in r]
        print(f"{k}: mean {np.mean(values):.3f} min {np.min(values):.3f} max {np.max(values):.3f}")
    if args.json:
        result = {"machine": f"{cpu_model()}, {platform.python_version()}, torch {torch.__version__}",
                  "date": dt.date.today().isoformat(), "args": vars(args), "runs": runs}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
