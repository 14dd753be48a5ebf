"""`cpcrl-report`: compare runs from their local files (no W&B needed).

Runs are grouped by the command-line overrides that differ between them, seeds pooled; each group gets
the final metric's mean with a 95% bootstrap CI, env steps to a threshold, and SPS. Writes report.md,
report.csv and learning curves (mean and CI band over seeds against env steps) next to the runs.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml
from rich.console import Console
from rich.table import Table

IGNORED = ("seed", "resume", "checkpoint", "checkpoint.path", "logger", "device", "mode")


def find_runs(paths: list[Path]) -> list[Path]:
    runs = []
    for p in paths:
        if (p / "summary.json").exists():
            runs.append(p)
        elif p.is_dir():
            runs += sorted(s.parent for s in p.rglob("summary.json") if "eval" not in s.parent.parts[-2:-1])
    return sorted(set(runs))


def load_run(run: Path) -> dict:
    overrides_file = run / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.exists() else []
    pairs = dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o and not o.startswith("hydra"))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (run / "metrics.jsonl").exists() else []
    return {"dir": run, "overrides": pairs, "summary": json.loads((run / "summary.json").read_text()), "rows": rows}


def bootstrap_ci(values, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and the 2.5/97.5 percentiles of the mean over resampled seeds."""
    x = np.asarray(values, dtype=float)
    if len(x) == 1:
        return float(x[0]), float(x[0]), float(x[0])
    means = x[np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    return float(x.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def steps_to_threshold(rows: list[dict], metric: str, threshold: float) -> float:
    for r in rows:
        if r.get(metric) is not None and r[metric] >= threshold:
            return float(r["env_step"])
    return float("inf")


def group_runs(runs: list[dict]) -> dict[str, list[dict]]:
    keys = sorted({k for r in runs for k in r["overrides"]} - set(IGNORED))
    differing = [k for k in keys if len({r["overrides"].get(k) for r in runs}) > 1]
    groups = defaultdict(list)
    for r in runs:
        label = ",".join(f"{k}={r['overrides'].get(k, '-')}" for k in differing) or "all runs"
        groups[label].append(r)
    return dict(sorted(groups.items()))


def summarise(groups: dict[str, list[dict]], metric: str, threshold: float | None) -> list[dict]:
    table = []
    for label, runs in groups.items():
        finals = [r["summary"][metric] for r in runs if r["summary"].get(metric) is not None]
        row = {"config": label, "seeds": len(runs)}
        if finals:
            row["mean"], row["ci_low"], row["ci_high"] = bootstrap_ci(finals)
        solves = [r["summary"]["eval/solve_rate"] for r in runs if "eval/solve_rate" in r["summary"]]
        if solves:
            row["solve_rate"], row["solve_ci_low"], row["solve_ci_high"] = bootstrap_ci(solves)
        if threshold is not None:
            steps = [steps_to_threshold(r["rows"], metric, threshold) for r in runs]
            row["steps_to_threshold"] = float(np.median(steps))
            row["reached"] = f"{sum(np.isfinite(steps))}/{len(steps)}"
        sps = [r["summary"]["perf/sps"] for r in runs if "perf/sps" in r["summary"]]
        row["sps"] = float(np.mean(sps)) if sps else float("nan")
        table.append(row)
    return table


def plot_curves(groups: dict[str, list[dict]], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, runs in groups.items():
        curves = [[(r["env_step"], r[metric]) for r in run["rows"] if r.get(metric) is not None] for run in runs]
        curves = [np.asarray(c) for c in curves if len(c)]
        if not curves:
            continue
        grid = np.unique(np.concatenate([c[:, 0] for c in curves]))
        ys = np.stack([np.interp(grid, c[:, 0], c[:, 1]) for c in curves])
        bands = np.array([bootstrap_ci(col, n_boot=1000) for col in ys.T])
        ax.plot(grid, bands[:, 0], label=f"{label} (n={len(curves)})")
        ax.fill_between(grid, bands[:, 1], bands[:, 2], alpha=0.2)
    ax.set_xlabel("env steps")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(row: dict, key: str) -> str:
    if key not in row:
        return "-"
    if key == "mean":
        return f"{row['mean']:.4g} [{row['ci_low']:.4g}, {row['ci_high']:.4g}]"
    if key == "solve_rate":
        return f"{row['solve_rate']:.3f} [{row['solve_ci_low']:.3f}, {row['solve_ci_high']:.3f}]"
    if key == "steps_to_threshold":
        v = row[key]
        return (f"{v:,.0f}" if np.isfinite(v) else "not reached") + f" ({row['reached']})"
    return f"{row[key]:,.0f}" if isinstance(row[key], float) else str(row[key])


COLUMNS = [("config", "config"), ("seeds", "seeds"), ("mean", "final {metric} (95% CI)"),
           ("solve_rate", "solve rate (95% CI)"), ("steps_to_threshold", "steps to {threshold}"), ("sps", "SPS")]


def write_report(table: list[dict], out: Path, metric: str, threshold: float | None) -> None:
    heads = [h.format(metric=metric, threshold=threshold) for _, h in COLUMNS]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    lines += ["| " + " | ".join(_fmt(r, k) for k, _ in COLUMNS) + " |" for r in table]
    (out / "report.md").write_text(f"# cpcrl report\n\nMetric: `{metric}`, mean over seeds with a 95% bootstrap CI."
                                   "\n\n" + "\n".join(lines) + "\n\n![curves](curves.png)\n")
    fields = sorted({k for r in table for k in r}, key=lambda k: (k != "config", k))
    with open(out / "report.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)


def push_to_wandb(table: list[dict], out: Path, project: str) -> None:
    import wandb

    from cpcrl.logging import wandb_mode

    run = wandb.init(project=project, job_type="report", name=f"report-{out.name}", dir=str(out),
                     mode=wandb_mode("auto"), settings=wandb.Settings(silent=True, console="off"))
    fields = sorted({k for r in table for k in r}, key=lambda k: (k != "config", k))
    run.log({"report/table": wandb.Table(columns=fields, data=[[r.get(k) for k in fields] for r in table]),
             "report/curves": wandb.Image(str(out / "curves.png"))})
    run.finish()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpcrl-report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="sweep dirs or run dirs")
    parser.add_argument("--metric", default="eval/return_mean", help="final/curve metric (default eval/return_mean)")
    parser.add_argument("--threshold", type=float, default=None, help="report env steps until metric >= this")
    parser.add_argument("--out", type=Path, default=None, help="where report.* go (default: the first path)")
    parser.add_argument("--wandb", action="store_true", help="also push the table and plot to a W&B run")
    parser.add_argument("--project", default="cpcrl")
    args = parser.parse_args(argv)

    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        print(f"cpcrl-report: error: {', '.join(missing)} does not exist", file=sys.stderr)
        return 2
    runs = [load_run(r) for r in find_runs(args.paths)]
    if not runs:
        print(f"cpcrl-report: error: no runs under {', '.join(map(str, args.paths))} "
              "(a run dir holds summary.json; give a sweep dir or run dirs)", file=sys.stderr)
        return 2
    if not any(args.metric in r["summary"] for r in runs):
        valid = sorted({k for r in runs for k, v in r["summary"].items() if isinstance(v, (int, float))})
        print(f"cpcrl-report: error: no run has {args.metric!r}; valid are {', '.join(valid)}", file=sys.stderr)
        return 2
    out = args.out or (args.paths[0] if args.paths[0].is_dir() else Path.cwd())
    out.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    table = summarise(groups, args.metric, args.threshold)
    write_report(table, out, args.metric, args.threshold)
    plot_curves(groups, args.metric, out / "curves.png")

    console = Console()
    rich_table = Table(title=f"{len(runs)} runs, {len(groups)} configs", header_style="bold")
    for _, head in COLUMNS:
        rich_table.add_column(head.format(metric=args.metric, threshold=args.threshold))
    for r in table:
        rich_table.add_row(*(_fmt(r, k) for k, _ in COLUMNS))
    console.print(rich_table)
    console.print(f"wrote {out / 'report.md'}, {out / 'report.csv'}, {out / 'curves.png'}")
    if args.wandb:
        push_to_wandb(table, out, args.project)
    return 0


if __name__ == "__main__":
    sys.exit(main())
