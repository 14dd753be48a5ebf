"""Dreamer: update throughput at each size, and the learning targets through the real CLI.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_dreamer.py speed --sizes xs s \\
        --json benchmarks/results/dreamer_throughput.json
    PYTHONPATH=. .venv/bin/python benchmarks/bench_dreamer.py learn --experiment dreamer_v3_cartpole --seed 0 \\
        --json benchmarks/results/dreamer_v3_cartpole_seed0.json

speed: updates/s (one world-model + one actor-critic update at batch 16 x 64, imagination horizon 15 from
all 1024 posterior states) and env steps/s of acting (policy + belief filter, 4 CartPole envs, no updates),
per version and size, on one CPU thread unless --threads. The training speed at a train ratio R follows:
env steps/s ~ 1 / (1/acting_sps + R / (16 * 64 * updates_per_s)).
learn: runs `cpcrl experiment=<name>` (the same code path a user runs) and stores its summary.json and the
training-return curve from metrics.jsonl, the eval curve and "held" (the mean of the last three evaluations).
Targets: cartpole >= 475 within 50k env steps (v3, xs);
pendulum better than -250 within 20k env steps.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cpcrl.agents import compose_agent
from cpcrl.collector import Collector
from cpcrl.device import make_device
from cpcrl.envs.factory import make_gym_env
from cpcrl.report import final_score

ROOT = Path(__file__).resolve().parents[1]
WORLD_MODEL = {"v1": "rssm_gaussian", "v3": "rssm_discrete"}


def speed_row(version: str, size: str, env_id: str, updates: int, device: str, precision: str,
              compile_mode: str = "none") -> dict:
    envs = make_gym_env(env_id, 4)
    agent = compose_agent(envs.single_observation_space, envs.single_action_space, "agent=dreamer",
                          f"agent/dreamer_version={version}", f"agent/dreamer_size={size}",
                          f"world_model={WORLD_MODEL[version]}", f"device.compile={compile_mode}", device=device,
                          prefill=1100, train_ratio=1e-9, precision=precision)
    collector = Collector(envs, torch.device(device), seed=0)
    agent.train_iteration(collector)                      # prefill (random) + one policy step
    t0 = time.perf_counter()
    agent.collect(collector, 100, random=False)           # acting only
    acting_sps = 100 * collector.num_envs / (time.perf_counter() - t0)
    for _ in range(1 if compile_mode == "none" else 3):   # warm-up (compiled: the graphs, CUDA graphs recorded)
        agent.update()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(updates):
        agent.update()
    sync()
    ups = updates / (time.perf_counter() - t0)
    envs.close()
    return {"version": version, "size": size, "env": env_id, "compile": compile_mode, "updates_per_s": round(ups, 3),
            "acting_env_steps_per_s": round(acting_sps, 1), "batch": [agent.cfg.batch_size, agent.cfg.seq_len],
            "horizon": agent.cfg.horizon, "params": sum(p.numel() for p in agent.parameters()),
            "env_steps_per_s_at_train_ratio_64": round(1 / (1 / acting_sps + 64 / (1024 * ups)), 1)}


def speed(args) -> dict:
    # torch set up as `cpcrl device=<device> device.threads=<threads>` does (incl. device.keep_freed_memory)
    make_device(OmegaConf.merge(OmegaConf.load(ROOT / "conf" / "device" / f"{args.device}.yaml"),
                                {"threads": args.threads, "precision": args.precision, "compile": args.compile}))
    rows = []
    for size in args.sizes:
        for version, env_id in (("v3", "CartPole-v1"), ("v1", "Pendulum-v1")):
            if version not in args.versions:
                continue
            row = speed_row(version, size, env_id, args.updates, args.device, args.precision, args.compile)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return {"rows": rows}


def learn(args) -> dict:
    overrides = [f"experiment={args.experiment}", f"seed={args.seed}", "logger=none", *args.overrides]
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "cpcrl", *overrides], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cpcrl {' '.join(overrides)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    run_dir = Path(proc.stdout.split("run dir:")[-1].split()[0])
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [{k: row[k] for k in ("env_step", "train/episode_return", "dreamer/imagined_return",
                                   "perf/updates_per_s", "eval/return_mean") if k in row}
             for row in rows]
    evals = [row for row in curve if "eval/return_mean" in row]
    held = final_score({"rows": rows, "summary": summary}, "eval/return_mean")  # cpcrl-report's "final"
    return {"command": "cpcrl " + " ".join(overrides), "wall_s": round(time.time() - t0, 1),
            "run_dir": str(run_dir), "eval_curve": [[row["env_step"], row["eval/return_mean"]] for row in evals],
            "held_last3": held, "summary": summary, "curve": curve}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", default="speed", choices=["speed", "learn"])  # run_all: speed
    parser.add_argument("--sizes", nargs="+", default=["xs", "s"])
    parser.add_argument("--versions", nargs="+", default=["v3", "v1"], choices=["v3", "v1"])
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--compile", default="none", help="speed: device.compile (none | default | reduce-overhead)")
    parser.add_argument("--experiment", default="dreamer_v3_cartpole")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for learn, e.g. train.total_steps=20000")
    args = parser.parse_args()
    result = speed(args) if args.mode == "speed" else learn(args)
    result["meta"] = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
                      "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                      "threads": args.threads, "argv": sys.argv[1:],
                      "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["meta"]))


if __name__ == "__main__":
    main()
