"""Greedy evaluation (per true distance, uniform states) and beam search of a trained cube checkpoint.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_cube_solve.py CHECKPOINT [--uniform 10000] [--per-distance 1000]
        [--cubes 1000] [--widths 1,16,64,256,1024] [--value-weights 0] [--max-depth 30] [--threads 2] [--json OUT]

CHECKPOINT is a run dir or a .pt file of a cube run. The greedy figures use ``cpcrl.cube_eval``; the beam search
runs ``cpcrl.solve.beam_search`` on the first ``--cubes`` of the same uniform states (seed EVAL_SEED + 1).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpcrl.checkpoint import load_checkpoint  # noqa: E402
from cpcrl.cube_eval import EVAL_SEED, evaluate_by_distance, evaluate_uniform  # noqa: E402
from cpcrl.envs.cube_distance import sample_uniform  # noqa: E402
from cpcrl.solve import beam_search  # noqa: E402
from cpcrl.train import build_agent, load_agent_state, make_env  # noqa: E402

from machine_info import cpu_model  # noqa: E402  (sibling module)


def load_agent(path: str):
    payload = load_checkpoint(path)
    cfg = OmegaConf.create(payload["config"])
    envs = make_env(cfg.env, num_envs=2)
    agent = build_agent(cfg, envs, torch.device("cpu"))
    load_agent_state(agent, payload, path)
    agent.eval()
    return agent, cfg, payload, envs.frame


def _commit() -> str:
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return git.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--uniform", type=int, default=10_000)
    ap.add_argument("--per-distance", type=int, default=1000)
    ap.add_argument("--greedy-max-steps", type=int, default=30)
    ap.add_argument("--cubes", type=int, default=1000)
    ap.add_argument("--widths", default="1,16,64,256,1024")
    ap.add_argument("--value-weights", default="0")
    ap.add_argument("--max-depth", type=int, default=30)
    ap.add_argument("--max-beams", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-greedy", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    agent, cfg, payload, frame = load_agent(args.checkpoint)
    out = {"date": datetime.date.today().isoformat(), "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
           "commit": _commit(),
           "command": " ".join(sys.argv), "checkpoint": args.checkpoint, "agent": payload["agent_name"],
           "env_step": payload["counters"]["env_step"], "frame": frame, "threads": args.threads, "greedy": {},
           "beam": []}
    if not args.skip_greedy:
        t0 = time.perf_counter()
        out["greedy"].update(evaluate_uniform(agent, args.uniform, max_steps=args.greedy_max_steps, frame=frame))
        out["greedy"].update(evaluate_by_distance(agent, args.per_distance, max_steps=args.greedy_max_steps,
                                                       frame=frame))
        out["greedy"]["seconds"] = time.perf_counter() - t0
        g = out["greedy"]
        print(f"greedy uniform: solve {g['eval/solve_rate_uniform']:.4f} [{g['eval/solve_rate_uniform_ci_low']:.4f}, "
              f"{g['eval/solve_rate_uniform_ci_high']:.4f}]  per distance: " +
              " ".join(f"{d}:{g[f'eval/solve_rate_dist{d}']:.3f}" for d in range(1, 15)), flush=True)
    states = sample_uniform(np.random.default_rng(EVAL_SEED + 1), args.uniform)[: args.cubes]
    for vw in [float(x) for x in args.value_weights.split(",")]:
        for w in [int(x) for x in args.widths.split(",")]:
            res = beam_search(agent, states, beam_width=w, max_depth=args.max_depth, value_weight=vw,
                              max_beams=args.max_beams, frame=frame)
            m = {"value_weight": vw, **res.metrics()}
            out["beam"].append(m)
            print(f"beam {w:5d} vw {vw:g}: solve {m['solve/solve_rate']:.4f}  ratio "
                  f"{m.get('solve/length_ratio_mean', float('nan')):.4f}  "
                  f"optimal {m.get('solve/optimal_fraction', 0):.3f}"
                  f"  expanded/cube {m['solve/states_expanded_per_cube']:.0f}  {m['solve/cubes_per_s']:.1f} cubes/s",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
