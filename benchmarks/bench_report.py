"""cpcrl-report: speed of the statistics and of reading run dirs, and a cross-check against rliable.

    python benchmarks/bench_report.py [--json benchmarks/results/report.json]     # speed + rliable (make bench)
    python benchmarks/bench_report.py speed [--template <run dir>] [--json ...]
    python benchmarks/bench_report.py rliable --python /work/venvs/rliable/bin/python [--json ...]
    python benchmarks/bench_report.py cpc_ablation <sweep dir> [--json benchmarks/results/report_cpc_ablation.json]

speed: (a) the statistics the report computes, on scores already read: 2 configs x 10 tasks x 500 runs
(10,000 runs: every aggregate with its CI per config, P(X > Y) with its CI, both performance profiles with
CI bands; 2,000 replicates), and 1 config x 10 tasks x 1,000 runs (the aggregates); (b) reading 1,000 run
dirs (copies of one real run of agent=random, each with its own overrides), then the whole report on them.
rliable: the same score matrices through rliable 1.2.0 (in its own venv: it is archived and pulls
seaborn/pandas/arch, so never a dependency here:
`python -m venv /work/venvs/rliable && /work/venvs/rliable/bin/pip install rliable==1.2.0 numpy scipy "pandas<3"`,
arch 7.2 fails to import under pandas 3) and through cpcrl.stats: point estimates must agree to
1e-9; intervals are compared with the spread of cpcrl's own intervals over bootstrap seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cpcrl import report, stats

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "scipy": __import__("scipy").__version__, "date": time.strftime("%Y-%m-%d %H:%M"),
            "commit": commit, "load_avg": os.getloadavg()}


def synthetic(configs: int, tasks: int, runs: int, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.beta(2 + c, 2, size=runs) * 1.2 - 0.1 for _ in range(tasks)] for c in range(configs)]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def speed_stats(reps: int) -> dict:
    x, y = synthetic(2, 10, 500)
    taus = np.linspace(-0.1, 1.1, report.PROFILE_POINTS)

    def everything():
        for scores in (x, y):
            stats.aggregate_intervals(scores, reps)
            stats.bootstrap_interval(lambda t: stats.performance_profile(t, taus), [scores], reps)
        stats.bootstrap_interval(stats.probability_of_improvement, [x, y], reps)

    (big,) = synthetic(1, 10, 1000)
    return {"two_configs_10000_runs_s": min(timed(everything) for _ in range(3)),
            "one_config_10000_runs_aggregates_s": min(timed(lambda: stats.aggregate_intervals(big, reps))
                                                      for _ in range(3)),
            "reps": reps}


def make_run_dirs(template: Path, root: Path, n: int) -> None:
    """n copies of one real run dir, each with its own seed and config override (as a sweep writes them)."""
    overrides = (template / ".hydra" / "overrides.yaml").read_text().splitlines()
    for i in range(n):
        run = root / f"{i}_run"
        shutil.copytree(template, run, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
        lines = [ln for ln in overrides if not ln.startswith(("- seed=", "- agent.rollout_steps="))]
        lines += [f"- seed={i % 50}", f"- agent.rollout_steps={4 + i // 500}"]
        (run / ".hydra" / "overrides.yaml").write_text("\n".join(lines) + "\n")


def speed_read(template: Path, n: int = 1000) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "sweep"
        make_run_dirs(template, root, n)
        t_read = min(timed(lambda: [report.load_run(r) for r in report.find_runs([root])]) for _ in range(3))
        args = report.build_parser().parse_args([str(root), "--out", str(Path(tmp) / "out")])
        t_report = timed(lambda: report.report(args))
        rows = sum(1 for _ in (root / "0_run" / "metrics.jsonl").open())
    return {"runs": n, "read_s": t_read, "whole_report_s": t_report, "metrics_rows_per_run": rows,
            "template": str(template)}


RLIABLE_SCRIPT = r"""
import json, sys
import numpy as np
from rliable import library as rly, metrics
d = np.load(sys.argv[1])
x, y, reps = d["x"], d["y"], int(d["reps"])
aggs = lambda s: np.array([metrics.aggregate_mean(s), metrics.aggregate_median(s), metrics.aggregate_iqm(s),
                           metrics.aggregate_optimality_gap(s)])
point, ci = rly.get_interval_estimates({"x": x, "y": y}, aggs, reps=reps)
poi_point, poi_ci = rly.get_interval_estimates({"x,y": (x, y)}, lambda a, b: metrics.probability_of_improvement(a, b),
                                               reps=reps)
taus = d["taus"]
prof, prof_ci = rly.create_performance_profile({"x": x}, taus, reps=reps)
print(json.dumps({"point": {k: v.tolist() for k, v in point.items()}, "ci": {k: v.tolist() for k, v in ci.items()},
                  "poi": float(poi_point["x,y"]), "poi_ci": np.ravel(poi_ci["x,y"]).tolist(),
                  "profile": prof["x"].tolist(), "profile_ci": np.asarray(prof_ci["x"]).tolist()}))
"""


def cross_check(python: str, reps: int, seeds: int = 10) -> dict:
    """runs x tasks matrices (rliable's layout) for two configs; our functions take the tasks as columns."""
    rng = np.random.default_rng(3)
    x = rng.beta(3, 2, size=(10, 5))
    y = rng.beta(2, 2, size=(10, 5))
    taus = np.linspace(0, 1, 11)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "m.npz", x=x, y=y, reps=reps, taus=taus)
        script = Path(tmp) / "r.py"
        script.write_text(RLIABLE_SCRIPT)
        t0 = time.perf_counter()
        out = subprocess.run([python, str(script), str(Path(tmp) / "m.npz")], capture_output=True, text=True)
        rliable_s = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"rliable failed: {out.stderr[-2000:]}")
    theirs = json.loads(out.stdout)
    cols = lambda m: [m[:, t] for t in range(m.shape[1])]  # noqa: E731
    names = list(stats.AGGREGATES)
    result = {"reps": reps, "rliable_wall_s": rliable_s, "aggregates": {}, "poi": {}, "profile": {}}
    for label, m in (("x", x), ("y", y)):
        ours = [stats.aggregate_intervals(cols(m), reps, seed=s) for s in range(seeds)]
        for i, name in enumerate(names):
            lows = np.array([o[name][1] for o in ours])
            highs = np.array([o[name][2] for o in ours])
            result["aggregates"][f"{label}/{name}"] = {
                "ours": ours[0][name][0], "rliable": theirs["point"][label][i],
                "point_abs_diff": abs(ours[0][name][0] - theirs["point"][label][i]),
                "ci_ours_seed0": [ours[0][name][1], ours[0][name][2]],
                "ci_rliable": [theirs["ci"][label][0][i], theirs["ci"][label][1][i]],
                "ci_ours_spread_over_seeds": [float(lows.std()), float(highs.std())],
                "ci_ours_range_over_seeds": [[float(lows.min()), float(lows.max())],
                                             [float(highs.min()), float(highs.max())]]}
    poi = [stats.bootstrap_interval(stats.probability_of_improvement, [cols(x), cols(y)], reps, seed=s)
           for s in range(seeds)]
    result["poi"] = {"ours": float(poi[0][0]), "rliable": theirs["poi"],
                     "point_abs_diff": float(abs(poi[0][0] - theirs["poi"])),
                     "ci_ours_seed0": [float(poi[0][1]), float(poi[0][2])], "ci_rliable": theirs["poi_ci"],
                     "ci_ours_range_over_seeds": [[float(min(p[1] for p in poi)), float(max(p[1] for p in poi))],
                                                  [float(min(p[2] for p in poi)), float(max(p[2] for p in poi))]]}
    prof = stats.performance_profile(cols(x), taus)
    result["profile"] = {"max_point_abs_diff": float(np.abs(prof - np.asarray(theirs["profile"])).max())}
    aggs = list(result["aggregates"].values())
    result["max_ci_abs_diff_vs_rliable"] = max(
        [abs(a - b) for v in aggs for a, b in zip(v["ci_ours_seed0"], v["ci_rliable"])]
        + [abs(a - b) for a, b in zip(result["poi"]["ci_ours_seed0"], result["poi"]["ci_rliable"])])
    result["max_ci_endpoint_range_over_our_seeds"] = max(
        [hi - lo for v in aggs for lo, hi in v["ci_ours_range_over_seeds"]]
        + [hi - lo for lo, hi in result["poi"]["ci_ours_range_over_seeds"]])
    result["max_point_abs_diff"] = max([v["point_abs_diff"] for v in result["aggregates"].values()]
                                       + [result["poi"]["point_abs_diff"], result["profile"]["max_point_abs_diff"]])
    return result


def ablation_summary(sweep: Path, reps: int) -> dict:
    """The CPC ablation restated: the report's tables of a suite sweep, as JSON."""
    args = report.build_parser().parse_args([str(sweep), "--baseline", "agent.cpc.weight=0", "--threshold", "0.9",
                                             "--reps", str(reps)])
    t0 = time.perf_counter()
    out, result = report.report(args)
    runs = [report.load_run(r) for r in report.find_runs([sweep])]
    budgets = sorted({r["summary"]["env_step"] for r in runs})
    return {"sweep": str(sweep), "report_dir": str(out), "report_s": time.perf_counter() - t0,
            "runs": result["runs"], "env_steps_range": [budgets[0], budgets[-1]],
            "wall_s_sum": sum(r["summary"].get("time_s", 0) for r in runs), **result["tables"],
            "notes": result["notes"]}


def tiny_run(root: Path) -> Path:
    """A real finished run to copy: agent=random on cartpole_pomdp through the CLI (a few seconds)."""
    run = root / "template"
    subprocess.run([sys.executable, "-m", "cpcrl", "suite=classic_pomdp", "env=cartpole_pomdp", "agent=random",
                    "logger=none", "train.total_steps=4000", "train.log_every=500", "eval.every=500",
                    "eval.episodes=10", "checkpoint.every=0", f"hydra.run.dir={run}"],
                   check=True, stdout=subprocess.DEVNULL)
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", nargs="?", default="all", choices=["all", "speed", "rliable", "cpc_ablation"],
                        help="all (make bench): speed, then rliable when its venv exists")
    parser.add_argument("sweep", nargs="?", type=Path, help="cpc_ablation: the suite sweep dir")
    parser.add_argument("--template", type=Path, default=None,
                        help="speed: a finished run dir to copy (default: a fresh tiny agent=random run)")
    parser.add_argument("--python", default="/work/venvs/rliable/bin/python", help="rliable: its venv's python")
    parser.add_argument("--reps", type=int, default=stats.REPS)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.what in ("all", "speed"):
            template = args.template or tiny_run(Path(tmp))
            result |= {"stats": speed_stats(args.reps), "read": speed_read(template)}
        if args.what == "rliable" or (args.what == "all" and Path(args.python).exists()):
            result["rliable"] = cross_check(args.python, args.reps)
        if args.what == "cpc_ablation":
            if args.sweep is None:
                sys.exit("cpc_ablation needs the sweep dir of a suite=classic_pomdp agent.cpc.weight=... multirun")
            result = ablation_summary(args.sweep, args.reps)
    result["env"] = machine()
    result["command"] = " ".join(sys.argv)
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
