"""Env steps/s of the batched 2x2 cube env vs gymnasium's SyncVectorEnv over single envs.

Random actions, autoresets included, median of --repeats timed runs per row. Run from the repo root:

    PYTHONPATH=. .venv/bin/python benchmarks/bench_cube_env.py [--json results.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import gymnasium
import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from cpcrl.envs.cube2x2 import Cube2x2Env, Cube2x2VectorEnv

# Steps per timed run, sized so each run takes a fraction of a second on a laptop-class CPU.
PLAN = [
    ("Cube2x2VectorEnv", 1, 4000),
    ("Cube2x2VectorEnv", 64, 3000),
    ("Cube2x2VectorEnv", 4096, 200),
    ("Cube2x2VectorEnv(copy=False)", 64, 3000),
    ("Cube2x2VectorEnv(copy=False)", 4096, 200),
    ("Cube2x2VectorEnv(numpy step)", 1, 4000),
    ("Cube2x2VectorEnv(numpy step)", 64, 3000),
    ("Cube2x2VectorEnv(numpy step)", 4096, 200),
    ("SyncVectorEnv(Cube2x2Env)", 1, 4000),
    ("SyncVectorEnv(Cube2x2Env)", 64, 150),
]


def make(kind: str, n: int, env_kwargs: dict):
    if kind.startswith("Cube2x2VectorEnv"):
        env = Cube2x2VectorEnv(num_envs=n, copy="copy=False" not in kind, **env_kwargs)
        if "numpy" in kind:  # the fallback where the C step was not built
            env._kernel = None
        elif env._kernel is None:
            sys.exit("the C step (cpcrl/envs/_cube_step.c) is not built: reinstall with a C compiler (make install)")
        return env
    return SyncVectorEnv(
        [lambda: Cube2x2Env(**env_kwargs) for _ in range(n)], autoreset_mode=AutoresetMode.SAME_STEP
    )


def steps_per_second(kind: str, n: int, steps: int, repeats: int, env_kwargs: dict) -> tuple[list, list]:
    """Env steps/s of each timed run, by wall clock and by this process's CPU time.

    The CPU-time rate is what the run would reach on an idle core; it differs from the wall-clock one
    when other processes share the machine.
    """
    env = make(kind, n, env_kwargs)
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(12, size=(steps, n))
    for a in actions[: max(10, steps // 10)]:  # warm-up: caches, scramble pool
        env.step(a)
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        for a in actions:
            env.step(a)
        w1, c1 = time.perf_counter(), time.process_time()
        wall.append(steps * n / (w1 - w0))
        cpu.append(steps * n / max(c1 - c0, 1e-9))
    env.close()
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scramble-depth", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args()
    env_kwargs = dict(scramble_depth=args.scramble_depth, max_steps=args.max_steps)

    machine = dict(
        platform=platform.platform(),
        processor=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(),
        python=sys.version.split()[0],
        numpy=np.__version__,
        gymnasium=gymnasium.__version__,
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    )
    print(" ".join(f"{k}={v}" for k, v in machine.items()))
    print(f"env kwargs: {env_kwargs}, random actions, autoreset SAME_STEP, median of {args.repeats} runs\n")
    print(f"{'env':28s} {'N':>5s} {'steps/s wall':>14s} {'(min..max)':>25s} {'steps/s CPU':>14s}")
    rows = []
    for kind, n, steps in PLAN:
        wall, cpu = steps_per_second(kind, n, steps, args.repeats, env_kwargs)
        row = dict(env=kind, num_envs=n, steps_per_s=statistics.median(wall), steps_per_s_cpu=statistics.median(cpu))
        rows.append(dict(row, runs_wall=wall, runs_cpu=cpu))
        spread = f"({min(wall):,.0f}..{max(wall):,.0f})"
        print(f"{kind:28s} {n:5d} {row['steps_per_s']:14,.0f} {spread:>25s} {row['steps_per_s_cpu']:14,.0f}",
              flush=True)

    def ratio(key: str) -> float:
        rate = {(r["env"], r["num_envs"]): r[key] for r in rows}
        return rate["Cube2x2VectorEnv", 64] / rate["SyncVectorEnv(Cube2x2Env)", 64]

    ratios = dict(wall=ratio("steps_per_s"), cpu=ratio("steps_per_s_cpu"))
    print(f"\nspeed-up at N=64: {ratios['wall']:.1f}x wall clock, {ratios['cpu']:.1f}x CPU time (target >= 40x)")
    print("SyncVectorEnv at N=4096 skipped (too slow to be useful; per-env cost is flat in N).")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(machine=machine, env_kwargs=env_kwargs, results=rows, ratio_n64=ratios), f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
