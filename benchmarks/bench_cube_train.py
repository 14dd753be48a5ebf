"""The cube's training curve and the curriculum comparison (issue 19): greedy solve rate on uniformly random
states against wall clock and env steps, for the curriculum over true distance and over scramble length.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_cube_train.py run --minutes 60 --seeds 0 [--out DIR]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_cube_train.py table [RUN_DIR ...] [--out DIR] --json OUT
    (no kind: both, as `make bench` runs it)

``run`` trains ``experiment=ppo_cube`` once per curriculum (``env.scramble=distance`` and ``env.scramble=moves``,
everything else equal) per seed, the runs of one seed side by side (one torch thread each, so the two share the
two cores and the same wall clock). The curve is what the runs log: ``eval/solve_rate_uniform`` at every periodic
eval on the first ``eval.cube_curve_states`` fixed cubes, and at the final eval on ``eval.cube_uniform_states``.
``table`` reads the run dirs' metrics.jsonl and summary.json: the curve, the final figures, and the first wall
clock and env step at which each threshold of the curve was reached.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_model  # noqa: E402  (sibling module)

CURRICULA = ("distance", "moves")
THRESHOLDS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95)


def _commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cpcrl = str(Path(sys.executable).with_name("cpcrl"))
    for seed in args.seeds:
        procs = []
        for cur in CURRICULA:
            cmd = [cpcrl, "experiment=ppo_cube", f"env.scramble={cur}", f"seed={seed}",
                   f"train.max_minutes={args.minutes}", "logger=none", "device=cpu",
                   f"hydra.run.dir={out / f'{cur}_s{seed}'}", *args.overrides]
            print(" ".join(cmd), flush=True)
            log = open(out / f"{cur}_s{seed}.log", "w")
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        for p in procs:
            if p.wait() != 0:
                raise SystemExit(f"a run failed (rc {p.returncode}); see the logs in {out}")


def _curve(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    keep = ("env_step", "time", "eval/solve_rate_uniform", "eval/solve_rate_uniform_ci_low",
            "eval/solve_rate_uniform_ci_high", "eval/length_ratio_uniform", "eval/uniform_states")
    return [{k: r[k] for k in keep if k in r} for r in rows if "eval/solve_rate_uniform" in r]


def table(args) -> None:
    runs = []
    for d in map(Path, args.run_dirs):
        summary = json.loads((d / "summary.json").read_text())
        cfg = (d / ".hydra" / "overrides.yaml")
        curve = _curve(d)
        reached = {}
        for th in THRESHOLDS:
            first = next((c for c in curve if c["eval/solve_rate_uniform"] >= th), None)
            reached[str(th)] = None if first is None else {"minutes": round(first["time"] / 60, 2),
                                                          "env_step": first["env_step"]}
        runs.append({"run": d.name, "overrides": cfg.read_text() if cfg.exists() else None,
                     "final": {k: v for k, v in summary.items() if k.startswith(("eval/solve_rate_uniform",
                                                                                "eval/length_ratio_uniform",
                                                                                "eval/solve_rate_dist",
                                                                                "eval/uniform_states"))
                               or k in ("env_step", "time_s", "perf/sps", "train/curriculum_depth")},
                     "first_reached": reached, "curve": curve})
        f = runs[-1]["final"]
        print(f"{d.name}: {f['env_step'] / 1e6:.1f}M steps in {f['time_s'] / 60:.1f} min, uniform "
              f"{f['eval/solve_rate_uniform']:.4f} [{f['eval/solve_rate_uniform_ci_low']:.4f}, "
              f"{f['eval/solve_rate_uniform_ci_high']:.4f}] on {f['eval/uniform_states']}; first reached: "
              + ", ".join(f"{th}: {r['minutes']} min" if r else f"{th}: -" for th, r in reached.items()), flush=True)
    out = {"date": datetime.date.today().isoformat(), "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
           "commit": _commit(), "command": " ".join(sys.argv), "runs": runs}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", nargs="?", default="all", choices=["run", "table", "all"])
    ap.add_argument("run_dirs", nargs="*", help="table: the run dirs (default: every run under --out)")
    ap.add_argument("--minutes", type=float, default=60)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default="benchmarks/results/cube_train_runs")
    ap.add_argument("--override", action="append", default=[], dest="overrides",
                    help="an extra Hydra override for every run (repeatable)")
    ap.add_argument("--json")
    args = ap.parse_args()
    if args.kind in ("run", "all"):
        run(args)
    if args.kind in ("table", "all"):
        args.run_dirs = args.run_dirs or sorted(str(p.parent) for p in Path(args.out).glob("*/summary.json"))
        table(args)


if __name__ == "__main__":
    main()
