"""`cpcrl-report`: compare runs from their local files (no W&B needed).

Runs are grouped into configs by the command-line overrides that differ between them (seeds pooled; in a
suite, the task key too). The statistics are in cpcrl/stats.py.

Final score of a run (the one definition every table, CI and plot uses): the mean of the metric over the
run's last K evaluations in metrics.jsonl (K = --last-k, default 3; the last one is the final evaluation,
the one in summary.json), not the best one; a run without evaluation rows falls back to summary.json's value.

Without a suite: per config, the mean final score with a 95% bootstrap CI over seeds, the solve rate, env
steps until the metric first reaches --threshold, SPS; learning curves (mean and CI band over seeds).

With a suite (runs made with `suite=<name>`, whose config carries the tasks' random and reference scores,
or `--suite <name>` for runs made without it): every final score is normalised per task,
(score - random) / (reference - random), and per config the report gives the mean, median, IQM and
optimality gap over all tasks and runs, each with a 95% stratified-bootstrap CI (runs resampled within each
task), the probability of improvement for every pair of configs (or each against --baseline, or the
--pair's named), a performance profile and an IQM sample-efficiency curve (CI bands), beside a per-task table.
--threshold then applies to the normalised score. Writes report.md, report.csv (per config and task),
report_aggregates.csv, report_improvement.csv and the PNGs next to the runs; --wandb pushes them to one run.

Belief probes (cpcrl.probes): where runs logged `probe/*` (eval.probe=true) or hold a probe.json (mode=probe), a
probe table per config (and task): each probe score's final value per run, by the same definition as the metric's
(the mean over the last K evaluations; a probe.json is one measurement on the final checkpoint, read as is), its
mean with a 95% bootstrap CI over seeds for the belief and for each control (`probe_<control>/`: random, obs),
next to the final metric; in report.md and report_probes.csv (which also has the per-time scores).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from cpcrl import stats
from cpcrl.stats import mean_interval as bootstrap_ci  # noqa: F401  (the per-config mean CI; tests import it here)

IGNORED = ("seed", "resume", "checkpoint", "checkpoint.path", "logger", "device", "mode")
LAST_K = 3  # evaluations averaged into a run's final score
CURVE_POINTS = 25  # env-step grid of the sample-efficiency curve
PROFILE_POINTS = 101  # tau grid of the performance profile
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: reading 1,000 runs stays fast


class ReportError(Exception):
    """Bad input to cpcrl-report: printed as one line, exit status 2."""


def _suite_dir() -> Path:
    """conf/suite/ as installed (the top-level conf/ is the package cpcrl.conf)."""
    import cpcrl.conf

    return Path(cpcrl.conf.__path__[0]) / "suite"


def suite_names() -> list[str]:
    return sorted(p.stem for p in _suite_dir().glob("*.yaml"))


def load_suite(name: str) -> dict:
    """A packaged suite's definition: {name, key, metric, tasks: {task: {random, reference}}}."""
    path = _suite_dir() / f"{name}.yaml"
    if not path.exists():
        raise ReportError(f"--suite {name!r} is not a suite; valid are {', '.join(suite_names())}")
    return _clean_suite(yaml.load(path.read_text(), Loader=Loader)["suite"])


def _clean_suite(suite: dict) -> dict:
    return {"name": str(suite["name"]), "key": str(suite["key"]), "metric": str(suite["metric"]),
            "tasks": {str(k): {"random": float(v["random"]), "reference": float(v["reference"])}
                      for k, v in suite["tasks"].items()}}


def find_runs(paths: list[Path]) -> list[Path]:
    """The finished runs (dirs with summary.json) given or under the paths; a given run dir must be finished."""
    runs = []
    for p in paths:
        if (p / "summary.json").exists():
            runs.append(p)
            continue
        if (p / ".hydra").is_dir() or (p / "metrics.jsonl").exists():
            raise ReportError(f"{p} has no summary.json: the run has not finished (a run writes it after its "
                              "final evaluation); give finished run dirs or a sweep dir")
        if p.is_dir():
            runs += [s.parent for s in p.rglob("summary.json") if s.parent.parent.name != "eval"]
    return sorted(set(runs))


def unfinished_runs(paths: list[Path]) -> list[Path]:
    """Run dirs under the paths with metrics.jsonl but no summary.json (killed or still running)."""
    return sorted({m.parent for p in paths if p.is_dir() for m in p.rglob("metrics.jsonl")
                   if not (m.parent / "summary.json").exists()})


def load_run(run: Path) -> dict:
    overrides_file = run / ".hydra" / "overrides.yaml"
    overrides = yaml.load(overrides_file.read_text(), Loader=Loader) or [] if overrides_file.exists() else []
    pairs = dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o and not o.startswith("hydra"))
    metrics = run / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.exists() else []
    config_file = run / ".hydra" / "config.yaml"
    config_text = config_file.read_text() if config_file.exists() else ""
    suite = None
    if "\nsuite:" in config_text:  # parse the config only when the run was made with suite=
        suite = _clean_suite(yaml.load(config_text, Loader=Loader)["suite"])
    probe_file = find_probe_json(run)
    return {"dir": run, "overrides": pairs, "summary": json.loads((run / "summary.json").read_text()),
            "rows": rows, "suite": suite, "config_file": config_file,
            "probe_json": json.loads(probe_file.read_text()) if probe_file else None}


def find_probe_json(run: Path) -> Path | None:
    """The run's newest mode=probe result: <run>/probe/<time>/probe.json (time names sort), else <run>/probe.json."""
    found = sorted((run / "probe").glob("*/probe.json")) or [p for p in [run / "probe.json"] if p.exists()]
    return found[-1] if found else None


def final_score(run: dict, metric: str, last_k: int = LAST_K) -> float | None:
    """The mean of `metric` over the run's last `last_k` evaluation rows (summary.json's value if none)."""
    values = [r[metric] for r in run["rows"] if r.get(metric) is not None]
    if values:
        return float(np.mean(values[-last_k:]))
    value = run["summary"].get(metric)
    return None if value is None else float(value)


def run_task(run: dict, key: str) -> str | None:
    """The run's task in a suite: its value of the suite key (the override, else its config's value)."""
    if key in run["overrides"]:
        return run["overrides"][key]
    if not run["config_file"].exists():
        return None
    value = yaml.load(run["config_file"].read_text(), Loader=Loader)
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, dict):  # a config group (env=...): its option's name
        value = value.get("name")
    return None if value is None else str(value)


def steps_to_threshold(rows: list[dict], metric: str, threshold: float, transform=None) -> float:
    for r in rows:
        if r.get(metric) is not None and (transform(r[metric]) if transform else r[metric]) >= threshold:
            return float(r["env_step"])
    return float("inf")


def group_runs(runs: list[dict], exclude: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    """Configs: runs with the same values of the overrides that differ between runs (seeds, `exclude` pooled)."""
    keys = sorted({k for r in runs for k in r["overrides"]} - set(IGNORED) - set(exclude))
    differing = [k for k in keys if len({r["overrides"].get(k) for r in runs}) > 1]
    groups = defaultdict(list)
    for r in runs:
        label = ",".join(f"{k}={r['overrides'].get(k, '-')}" for k in differing) or "all runs"
        groups[label].append(r)
    return dict(sorted(groups.items()))


def resolve_suite(runs: list[dict], name: str | None) -> dict | None:
    if name is not None:
        return load_suite(name)
    found = {r["suite"]["name"]: r["suite"] for r in runs if r["suite"] is not None}
    if len(found) > 1:
        raise ReportError(f"the runs come from several suites ({', '.join(sorted(found))}); report one at a time "
                          "or pass --suite NAME")
    return next(iter(found.values()), None)


# ---------------------------------------------------------------------------------------------- tables


def _normaliser(suite: dict | None, task: str):
    if suite is None:
        return None
    scores = suite["tasks"][task]
    return lambda v: float(stats.normalise(v, scores["random"], scores["reference"]))


def per_task_table(cells: dict[tuple[str, str], list[dict]], metric: str, suite: dict | None,
                   threshold: float | None, last_k: int) -> list[dict]:
    """One row per (config, task): the final score's mean and CI over seeds, normalised, steps, SPS."""
    table = []
    for (label, task), runs in cells.items():
        norm = _normaliser(suite, task)
        row = {"config": label} | ({"task": task} if suite else {}) | {"seeds": len(runs)}
        finals = [v for v in (final_score(r, metric, last_k) for r in runs) if v is not None]
        if finals:
            row["mean"], row["ci_low"], row["ci_high"] = bootstrap_ci(finals)
            if norm:
                row["normalised"] = float(np.mean([norm(v) for v in finals]))
        solves = [r["summary"]["eval/solve_rate"] for r in runs if "eval/solve_rate" in r["summary"]]
        if solves:
            row["solve_rate"], row["solve_ci_low"], row["solve_ci_high"] = bootstrap_ci(solves)
        if threshold is not None:
            steps = [steps_to_threshold(r["rows"], metric, threshold, norm) for r in runs]
            row["steps_to_threshold"] = float(np.median(steps))
            row["reached"] = f"{sum(np.isfinite(steps))}/{len(steps)}"
        sps = [r["summary"]["perf/sps"] for r in runs if "perf/sps" in r["summary"]]
        row["sps"] = float(np.mean(sps)) if sps else float("nan")
        table.append(row)
    return table


def normalised_scores(cells, metric: str, suite: dict, last_k: int) -> dict[str, dict[str, np.ndarray]]:
    """config -> task -> the normalised final scores of its runs."""
    out: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
    for (label, task), runs in cells.items():
        norm = _normaliser(suite, task)
        values = [norm(v) for v in (final_score(r, metric, last_k) for r in runs) if v is not None]
        if values:
            out[label][task] = np.asarray(values)
    return dict(out)


def aggregate_table(scores: dict[str, dict[str, np.ndarray]], reps: int) -> list[dict]:
    table = []
    for label, per_task in scores.items():
        row = {"config": label, "runs": sum(len(v) for v in per_task.values()), "tasks": len(per_task)}
        for name, (point, low, high) in stats.aggregate_intervals(list(per_task.values()), reps).items():
            row[name], row[f"{name}_low"], row[f"{name}_high"] = point, low, high
        table.append(row)
    return table


def improvement_pairs(labels: list[str], baseline: str | None, pairs: list[list[str]] | None) -> list[tuple[str, str]]:
    for name in [baseline] + [x for p in pairs or [] for x in p]:
        if name is not None and name not in labels:
            raise ReportError(f"{name!r} is not a config of these runs; valid are: {' | '.join(labels)}")
    if pairs:
        return [(x, y) for x, y in pairs]
    if baseline is not None:
        return [(x, baseline) for x in labels if x != baseline]
    return list(itertools.combinations(labels, 2))


def improvement_table(scores: dict[str, dict[str, np.ndarray]], pairs: list[tuple[str, str]], reps: int) -> list[dict]:
    """P(X > Y) with its CI, on the tasks both configs ran."""
    table = []
    for x, y in pairs:
        common = sorted(set(scores[x]) & set(scores[y]))
        row = {"x": x, "y": y, "tasks": len(common)}
        if common:
            point, low, high = stats.bootstrap_interval(
                stats.probability_of_improvement, [[scores[x][t] for t in common], [scores[y][t] for t in common]],
                reps)
            row |= {"p": float(point), "p_low": float(low), "p_high": float(high)}
        table.append(row)
    return table


# probes.py's metric names: probe/<score> (the probed belief), probe_<control>/<score> (a control on the same steps)
PROBE_KEY = re.compile(r"^probe(?:_(?P<control>[a-z0-9]+))?/(?P<score>.+)$")
BELIEF = "belief"
PROBE_ORIGINS = ("metrics.jsonl", "probe.json")  # eval.probe=true's rows, mode=probe's file
PER_DIM = re.compile(r"^(?:state|class)(\d+)_")  # state<d>_r2, class<c>_acc: one score per dim / column
PER_TIME = re.compile(r"_t(\d+)$")  # class_acc_t<t>: one score per step since the start (report_probes.csv only)


def split_probe_key(key: str) -> tuple[str, str] | None:
    """`probe/<score>` -> ("belief", score), `probe_<control>/<score>` -> (control, score); None for any other key
    and for `probe/samples` (a count of steps, not a score)."""
    match = PROBE_KEY.match(key)
    if match is None or match["score"] == "samples":
        return None
    return match["control"] or BELIEF, match["score"]


def run_probe_scores(run: dict, last_k: int) -> dict[str, dict[tuple[str, str], float]]:
    """origin -> {(belief or control, score): the run's final value}: from metrics.jsonl by `final_score` (the
    mean over the last `last_k` evaluations), from probe.json its values."""
    logged = dict.fromkeys([k for r in run["rows"] for k in r] + list(run["summary"]))  # probes' order: belief first
    out: dict[str, dict[tuple[str, str], float]] = {origin: {} for origin in PROBE_ORIGINS}
    for key in logged:
        name = split_probe_key(key)
        value = final_score(run, key, last_k) if name else None
        if value is not None and np.isfinite(value):
            out["metrics.jsonl"][name] = value
    for key, value in (run["probe_json"] or {}).items():
        name = split_probe_key(key)
        if name and isinstance(value, (int, float)) and np.isfinite(value):
            out["probe.json"][name] = float(value)
    return out


def _score_order(score: str) -> tuple:
    """Summary scores first (state_r2, state_r2_mlp, class_acc, ...), then per dim / column, then per time, each
    numerically."""
    for group, pattern in ((2, PER_TIME), (1, PER_DIM)):
        match = pattern.search(score)
        if match:
            return group, score[:match.start(1)] + score[match.end(1):], int(match[1])
    return 0, score, -1


def probe_table(cells: dict[tuple[str, str], list[dict]], tasks_table: list[dict], suite: dict | None,
                last_k: int) -> list[dict]:
    """One row per (config, task, origin, probe score): the mean over seeds of the runs' final values with a 95%
    bootstrap CI, for the belief and each control, beside the config's final metric (from `tasks_table`)."""
    metric_of = {(r["config"], r.get("task", "-")): r for r in tasks_table}
    table = []
    for (label, task), runs in cells.items():
        per_run = [run_probe_scores(r, last_k) for r in runs]
        final = metric_of[(label, task)]
        for origin in PROBE_ORIGINS:
            names = list(dict.fromkeys(name for p in per_run for name in p[origin]))
            sources = list(dict.fromkeys(c for c, _ in names))
            for score in sorted({s for _, s in names}, key=_score_order):
                row = {"config": label} | ({"task": task} if suite else {}) | {"from": origin, "score": score}
                row["seeds"] = sum(any((source, score) in p[origin] for source in sources) for p in per_run)
                if "mean" in final:
                    row |= {"final_metric": final["mean"], "final_metric_low": final["ci_low"],
                            "final_metric_high": final["ci_high"]}
                for source in sources:
                    values = [p[origin][(source, score)] for p in per_run if (source, score) in p[origin]]
                    if values:
                        row[source], row[f"{source}_low"], row[f"{source}_high"] = bootstrap_ci(values)
                table.append(row)
    return table


# ---------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curve(run: dict, metric: str, transform=None) -> np.ndarray:
    points = [(r["env_step"], transform(r[metric]) if transform else r[metric])
              for r in run["rows"] if r.get(metric) is not None]
    return np.asarray(points, dtype=float).reshape(-1, 2)


def _band(ax, x, point, low, high, label: str) -> None:
    ax.plot(x, point, label=label)
    ax.fill_between(x, low, high, alpha=0.2)


def _finish_axes(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)


def plot_curves(cells, metric: str, path: Path, tasks: list[str]) -> None:
    """The raw metric against env steps, one panel per task, mean and CI band over seeds per config."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for (label, t), runs in cells.items():
            curves = [c for c in (_curve(r, metric) for r in runs) if len(c)]
            if t != task or not curves:
                continue
            grid = np.unique(np.concatenate([c[:, 0] for c in curves]))
            ys = np.stack([np.interp(grid, c[:, 0], c[:, 1]) for c in curves])
            bands = np.array([bootstrap_ci(col, reps=1000) for col in ys.T])
            _band(ax, grid, bands[:, 0], bands[:, 1], bands[:, 2], f"{label} (n={len(curves)})")
        ax.set_title(task if task != "-" else "", fontsize=10)
        _finish_axes(ax, "env steps", metric)
    _save(fig, path)


def profile_taus(scores: dict[str, dict[str, np.ndarray]]) -> np.ndarray:
    pooled = np.concatenate([v for per_task in scores.values() for v in per_task.values()])
    return np.linspace(min(0.0, pooled.min()), max(1.0, pooled.max()), PROFILE_POINTS)


def plot_profiles(scores, path: Path, reps: int) -> dict[str, dict]:
    """Performance profiles: the fraction of runs with normalised score > tau, with a CI band."""
    plt = _plt()
    taus = profile_taus(scores)
    out = {}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, per_task in scores.items():
        point, low, high = stats.bootstrap_interval(lambda t: stats.performance_profile(t, taus),
                                                    [list(per_task.values())], reps)
        out[label] = {"tau": taus.tolist(), "fraction": point.tolist(), "low": low.tolist(), "high": high.tolist()}
        _band(ax, taus, point, low, high, label)
    _finish_axes(ax, "normalised score tau", "fraction of runs with score > tau")
    _save(fig, path)
    return out


def plot_sample_efficiency(cells, metric: str, suite: dict, path: Path, reps: int) -> dict[str, dict]:
    """IQM of the normalised score against env steps (each run's eval curve interpolated), with a CI band."""
    plt = _plt()
    by_config: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for (label, task), runs in cells.items():
        norm = _normaliser(suite, task)
        by_config[label][task] += [c for c in (_curve(r, metric, norm) for r in runs) if len(c)]
    out = {}
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, per_task in by_config.items():
        curves = [c for cs in per_task.values() for c in cs]
        if not curves:
            continue
        grid = np.linspace(max(c[0, 0] for c in curves), min(c[-1, 0] for c in curves), CURVE_POINTS)
        at = [np.stack([np.interp(grid, c[:, 0], c[:, 1]) for c in cs], -1) for cs in per_task.values()]
        bands = np.array([stats.bootstrap_interval(stats.iqm, [[a[g] for a in at]], min(reps, 1000))
                          for g in range(len(grid))], dtype=float)
        out[label] = {"env_step": grid.tolist(), "iqm": bands[:, 0].tolist(), "low": bands[:, 1].tolist(),
                      "high": bands[:, 2].tolist()}
        _band(ax, grid, bands[:, 0], bands[:, 1], bands[:, 2], label)
    _finish_axes(ax, "env steps", "IQM normalised score")
    _save(fig, path)
    return out


# ---------------------------------------------------------------------------------------------- output


def _ci(row: dict, key: str, digits: str = ".3g") -> str:
    if key not in row:
        return "-"
    return f"{row[key]:{digits}} [{row[f'{key}_low']:{digits}}, {row[f'{key}_high']:{digits}}]"


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
    if key == "normalised":
        return f"{row[key]:.3f}"
    return f"{row[key]:,.0f}" if isinstance(row[key], float) else str(row[key])


TASK_COLUMNS = [("config", "config"), ("task", "task"), ("seeds", "seeds"), ("mean", "final {metric} (95% CI)"),
                ("normalised", "normalised"), ("solve_rate", "solve rate (95% CI)"),
                ("steps_to_threshold", "steps to {threshold}"), ("sps", "SPS")]
AGGREGATE_COLUMNS = [("mean", "mean"), ("median", "median"), ("iqm", "IQM"), ("optimality_gap", "optimality gap")]


def _md_table(heads: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)] + ["| " + " | ".join(r) + " |" for r in rows]


def _write_csv(path: Path, table: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in table for k in r))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)


def task_columns(suite: dict | None) -> list[tuple[str, str]]:
    return [c for c in TASK_COLUMNS if suite or c[0] not in ("task", "normalised")]


def probe_columns(probes: list[dict], suite: dict | None) -> list[tuple[str, str]]:
    """(key, head) of the probe table: the belief, then each control, in the order cpcrl.probes logs them."""
    sources = list(dict.fromkeys(k for r in probes for k in r if f"{k}_low" in r and k != "final_metric"))
    return ([("config", "config")] + ([("task", "task")] if suite else []) +
            [("from", "from"), ("score", "probe score"), ("seeds", "seeds"),
             ("final_metric", "final {metric} (95% CI)")] + [(c, f"{c} (95% CI)") for c in sources])


def probe_cells(probes: list[dict], cols: list[tuple[str, str]]) -> list[list[str]]:
    """The rows shown (per-time scores only in report_probes.csv), the final metric once per config and task."""
    shown, last = [], None
    for r in probes:
        if PER_TIME.search(r["score"]):
            continue
        cell = (r["config"], r.get("task"))
        shown.append([("" if cell == last else _ci(r, k)) if k == "final_metric" else
                      _ci(r, k, ".3f") if f"{k}_low" in r else str(r.get(k, "-")) for k, _ in cols])
        last = cell
    return shown


def write_report(out: Path, metric: str, threshold: float | None, last_k: int, suite: dict | None,
                 tasks_table: list[dict], aggregates: list[dict], improvement: list[dict], images: list[str],
                 notes: list[str], probes: list[dict]) -> None:
    cols = task_columns(suite)
    lines = ["# cpcrl report", ""]
    lines.append(f"Final score of a run: the mean of `{metric}` over its last {last_k} evaluations "
                 "(the last is the final evaluation). CIs are 95%.")
    if suite:
        lines += ["", f"Suite `{suite['name']}` (task = `{suite['key']}`); normalised score = (score - random) / "
                  "(reference - random); aggregates over all tasks and runs with stratified-bootstrap CIs "
                  "(runs resampled within each task).", ""]
        lines += _md_table(["task", "random", "reference"],
                           [[t, f"{s['random']:.4g}", f"{s['reference']:.4g}"] for t, s in suite["tasks"].items()])
    if aggregates:
        lines += ["", "## Aggregates (normalised final scores)", ""]
        lines += _md_table(["config", "runs", "tasks"] + [h for _, h in AGGREGATE_COLUMNS],
                           [[r["config"], str(r["runs"]), str(r["tasks"])] + [_ci(r, k) for k, _ in AGGREGATE_COLUMNS]
                            for r in aggregates])
    if improvement:
        lines += ["", "## Probability of improvement P(X > Y)", ""]
        lines += _md_table(["X", "Y", "tasks", "P(X > Y) (95% CI)"],
                           [[r["x"], r["y"], str(r["tasks"]), _ci(r, "p", ".3f")] for r in improvement])
    lines += ["", "## Per task" if suite else "## Per config", ""]
    lines += _md_table([h.format(metric=metric, threshold=threshold) for _, h in cols],
                       [[_fmt(r, k) for k, _ in cols] for r in tasks_table])
    if probes:
        pcols = probe_columns(probes, suite)
        lines += ["", "## Belief probes", "",
                  f"Held-out probe scores (`cpcrl.probes`): R^2 (`*_r2`) or accuracy (`*_acc`) of a decoder from the "
                  "belief to the env's hidden state; `random` is a randomly initialised agent of the same architecture "
                  "and `obs` the raw observation, probed on the same steps. From metrics.jsonl (eval.probe=true): a "
                  f"run's final value is the mean over its last {last_k} evaluations, as for `{metric}`; from "
                  "probe.json (mode=probe): its values. Mean over seeds with a 95% bootstrap CI; the per-time scores "
                  "are in report_probes.csv.", ""]
        lines += _md_table([h.format(metric=metric) for _, h in pcols], probe_cells(probes, pcols))
    lines += [""] + [f"- {n}" for n in notes] + [""] + [f"![{Path(i).stem}]({i})" for i in images]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _write_csv(out / "report.csv", tasks_table)
    if probes:
        _write_csv(out / "report_probes.csv", probes)
    if aggregates:
        _write_csv(out / "report_aggregates.csv", aggregates)
    if improvement:
        _write_csv(out / "report_improvement.csv", improvement)


def push_to_wandb(tables: dict[str, list[dict]], out: Path, images: list[str], project: str) -> None:
    """One report run: every table and every plot."""
    import wandb

    from cpcrl.logging import wandb_mode

    run = wandb.init(project=project, job_type="report", name=f"report-{out.name}", dir=str(out),
                     mode=wandb_mode("auto"), settings=wandb.Settings(silent=True, console="off"))
    logged = {}
    for name, table in tables.items():
        if table:
            fields = list(dict.fromkeys(k for r in table for k in r))
            logged[f"report/{name}"] = wandb.Table(columns=fields, data=[[r.get(k) for k in fields] for r in table])
    for image in images:
        logged[f"report/{Path(image).stem}"] = wandb.Image(str(out / image))
    run.log(logged)
    run.finish()
    # finish() hands the run to the wandb service, which may still be writing the run file when it returns;
    # teardown waits for the service to exit, so the file is whole once this returns (a reader right after a
    # loaded machine's report found no run record).
    wandb.teardown()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cpcrl-report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="sweep dirs or run dirs")
    parser.add_argument("--metric", default=None,
                        help="final/curve metric (default: the suite's metric, else eval/return_mean)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="report env steps until the metric (normalised in a suite) first reaches this")
    parser.add_argument("--last-k", type=int, default=LAST_K,
                        help=f"evaluations averaged into a run's final score (default {LAST_K})")
    parser.add_argument("--suite", default=None,
                        help="score the runs as tasks of this suite (default: the suite the runs were made with)")
    parser.add_argument("--baseline", default=None, help="P(X > baseline) for every other config X")
    parser.add_argument("--pair", nargs=2, action="append", metavar=("X", "Y"), default=None,
                        help="P(X > Y) for this pair of configs (repeatable); default: every pair")
    parser.add_argument("--reps", type=int, default=stats.REPS,
                        help=f"bootstrap replicates (default {stats.REPS})")
    parser.add_argument("--out", type=Path, default=None, help="where report.* go (default: the first path)")
    parser.add_argument("--wandb", action="store_true", help="also push the tables and plots to a W&B run")
    parser.add_argument("--project", default="cpcrl")
    return parser


def report(args: argparse.Namespace) -> tuple[Path, dict]:
    """Everything but the console: -> (out dir, {tables, images, notes, suite, metric})."""
    missing = [str(p) for p in args.paths if not p.exists()]
    if missing:
        raise ReportError(f"{', '.join(missing)} does not exist")
    if args.last_k < 1 or args.reps < 1:
        raise ReportError(f"--last-k={args.last_k} --reps={args.reps}: both must be at least 1")
    found, unfinished = find_runs(args.paths), unfinished_runs(args.paths)
    if not found:
        raise ReportError(f"no finished runs under {', '.join(map(str, args.paths))} "
                          "(a run dir holds summary.json; give a sweep dir or run dirs)")
    runs = [load_run(r) for r in found]
    notes = [f"skipped {len(unfinished)} unfinished run(s) without summary.json, e.g. {unfinished[0]}"] \
        if unfinished else []
    suite = resolve_suite(runs, args.suite)
    metric = args.metric or (suite["metric"] if suite else "eval/return_mean")
    if suite and metric != suite["metric"]:
        raise ReportError(f"--metric {metric}: suite {suite['name']}'s random and reference scores are for "
                          f"{suite['metric']}")
    if not any(metric in r["summary"] for r in runs):
        valid = sorted({k for r in runs for k, v in r["summary"].items() if isinstance(v, (int, float))})
        raise ReportError(f"no run has {metric!r}; valid are {', '.join(valid)}")

    if suite:
        tasks_of = {id(r): run_task(r, suite["key"]) for r in runs}
        outside = [r for r in runs if tasks_of[id(r)] not in suite["tasks"]]
        runs = [r for r in runs if tasks_of[id(r)] in suite["tasks"]]
        if not runs:
            raise ReportError(f"no run is a task of suite {suite['name']} ({suite['key']} in "
                              f"{', '.join(suite['tasks'])})")
        if outside:
            notes.append(f"ignored {len(outside)} run(s) whose {suite['key']} is not a task of suite {suite['name']}")
        groups = group_runs(runs, exclude=("suite", suite["key"]))
        order = [t for t in suite["tasks"] if any(tasks_of[id(r)] == t for r in runs)]
        cells = {(label, t): [r for r in g if tasks_of[id(r)] == t] for label, g in groups.items() for t in order}
        cells = {k: v for k, v in cells.items() if v}
    else:
        groups = group_runs(runs)
        order = ["-"]
        cells = {(label, "-"): g for label, g in groups.items()}
    out = args.out or (args.paths[0] if args.paths[0].is_dir() else Path.cwd())
    out.mkdir(parents=True, exist_ok=True)

    tasks_table = per_task_table(cells, metric, suite, args.threshold, args.last_k)
    images = ["curves.png"]
    plot_curves(cells, metric, out / "curves.png", order)
    aggregates, improvement, curves = [], [], {}
    labels = list(groups)
    if suite:
        scores = normalised_scores(cells, metric, suite, args.last_k)
        aggregates = aggregate_table(scores, args.reps)
        lacking = [label for label, per_task in scores.items() if len(per_task) < len(suite["tasks"])]
        if lacking:
            notes.append(f"configs without runs on every task (aggregated over the tasks they have): "
                         f"{' | '.join(lacking)}")
        pairs = improvement_pairs(labels, args.baseline, args.pair)
        improvement = improvement_table(scores, pairs, args.reps)
        curves["profile"] = plot_profiles(scores, out / "profile.png", args.reps)
        curves["sample_efficiency"] = plot_sample_efficiency(cells, metric, suite, out / "sample_efficiency.png",
                                                             args.reps)
        images += ["profile.png", "sample_efficiency.png"]
    elif args.baseline or args.pair:  # one task: P(X > Y) over seeds needs no normalisation
        scores = {label: {"-": np.asarray([final_score(r, metric, args.last_k) for r in g
                                           if final_score(r, metric, args.last_k) is not None])}
                  for label, g in groups.items()}
        improvement = improvement_table(scores, improvement_pairs(labels, args.baseline, args.pair), args.reps)
    probes = probe_table(cells, tasks_table, suite, args.last_k)
    write_report(out, metric, args.threshold, args.last_k, suite, tasks_table, aggregates, improvement, images, notes,
                 probes)
    (out / "report_curves.json").write_text(json.dumps(curves))
    return out, {"tables": {"table": tasks_table, "aggregates": aggregates, "improvement": improvement,
                            "probes": probes},
                 "images": images, "notes": notes, "suite": suite, "metric": metric, "runs": len(runs),
                 "configs": len(groups)}


def print_report(out: Path, result: dict, threshold: float | None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    tables, suite, metric = result["tables"], result["suite"], result["metric"]
    if tables["aggregates"]:
        t = Table(title=f"suite {suite['name']}: normalised final scores (95% stratified-bootstrap CI)",
                  header_style="bold")
        for head in ["config", "runs"] + [h for _, h in AGGREGATE_COLUMNS]:
            t.add_column(head)
        for r in tables["aggregates"]:
            t.add_row(r["config"], str(r["runs"]), *(_ci(r, k) for k, _ in AGGREGATE_COLUMNS))
        console.print(t)
    if tables["improvement"]:
        t = Table(title="probability of improvement", header_style="bold")
        for head in ("X", "Y", "P(X > Y) (95% CI)"):
            t.add_column(head)
        for r in tables["improvement"]:
            t.add_row(r["x"], r["y"], _ci(r, "p", ".3f"))
        console.print(t)
    cols = task_columns(suite)
    t = Table(title=f"{result['runs']} runs, {result['configs']} configs", header_style="bold")
    for _, head in cols:
        t.add_column(head.format(metric=metric, threshold=threshold))
    for r in tables["table"]:
        t.add_row(*(_fmt(r, k) for k, _ in cols))
    console.print(t)
    if tables["probes"]:
        pcols = probe_columns(tables["probes"], suite)
        t = Table(title="belief probes (held-out; final value per run, mean and 95% CI over seeds)",
                  header_style="bold")
        for _, head in pcols:
            t.add_column(head.format(metric=metric))
        for cells in probe_cells(tables["probes"], pcols):
            t.add_row(*cells)
        console.print(t)
    for note in result["notes"]:
        console.print(f"note: {note}")
    console.print(f"wrote {out / 'report.md'}, report*.csv, {', '.join(result['images'])}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out, result = report(args)
    except ReportError as e:
        print(f"cpcrl-report: error: {e}", file=sys.stderr)
        return 2
    print_report(out, result, args.threshold)
    if args.wandb:
        push_to_wandb(result["tables"], out, result["images"], args.project)
    return 0


if __name__ == "__main__":
    sys.exit(main())
