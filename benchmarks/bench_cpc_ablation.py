"""CPC weight ablation: env steps to the task's threshold for agent.cpc.weight in {0, 0.1, 1.0}, 3 seeds.

Runs the real sweep (`cpcrl -m experiment=cpc_ablation`, two jobs at a time with joblib) and reads the
run dirs back with cpcrl.report. Usage: python benchmarks/bench_cpc_ablation.py [--env tmaze] [--json PATH]
"""

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from cpcrl.report import find_runs, group_runs, load_run, steps_to_threshold

THRESHOLDS = {"cartpole_pomdp": 475.0, "tmaze": 0.85}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="cartpole_pomdp", choices=sorted(THRESHOLDS))
    parser.add_argument("--steps", type=int, default=60000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_cpc_ablation"))
    args = parser.parse_args()
    sweep = args.out / f"{args.env}_{time.strftime('%Y%m%d-%H%M%S')}"
    cmd = [sys.executable, "-m", "cpcrl", "-m", "experiment=cpc_ablation", f"env={args.env}", "logger=none",
           f"train.total_steps={args.steps}", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}",
           f"hydra.sweep.dir={sweep}"]
    if args.env == "tmaze":
        cmd.append("env.num_envs=16")
    print(" ".join(cmd[1:]), flush=True)
    t0 = time.time()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.time() - t0
    runs = [load_run(r) for r in find_runs([sweep])]
    threshold = THRESHOLDS[args.env]
    rows = []
    for label, group in group_runs(runs).items():
        steps = [steps_to_threshold(r["rows"], "eval/return_mean", threshold) for r in group]
        finals = [r["summary"]["eval/return_mean"] for r in group]
        acc = [np.mean([x["cpc/acc_k1"] for x in r["rows"] if "cpc/acc_k1" in x][-5:]) for r in group]
        rows.append({"config": label, "steps": steps, "median_steps": float(np.median(steps)),
                     "reached": int(np.isfinite(steps).sum()), "final_returns": finals, "cpc_acc_k1_last": acc})
    print(f"\nenv={args.env} threshold={threshold} seeds=3 budget={args.steps} wall={wall:.0f}s")
    print(f"{'config':<24}{'median steps':>14}{'reached':>9}  steps per seed / final eval return / cpc acc k1")
    for r in rows:
        med = f"{r['median_steps']:,.0f}" if np.isfinite(r["median_steps"]) else "not reached"
        print(f"{r['config']:<24}{med:>14}{r['reached']:>7}/3  {r['steps']} / "
              f"{[round(x, 1) for x in r['final_returns']]} / {[round(x, 3) for x in r['cpc_acc_k1_last']]}")
    if args.json:
        args.json.write_text(json.dumps({"env": args.env, "threshold": threshold, "rows": rows, "wall_s": wall,
                                         "machine": platform.platform(), "date": time.strftime("%Y-%m-%d"),
                                         "command": " ".join(cmd[1:])}, indent=2, default=str))


if __name__ == "__main__":
    main()
