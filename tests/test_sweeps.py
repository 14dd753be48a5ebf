"""Real Hydra multiruns through the launcher plugins, an Optuna search, and cpcrl-report on a real sweep."""

import csv
import json
import math
import statistics

import matplotlib.image
import pytest
import yaml

from cpcrl.report import bootstrap_ci, main as report_main
from cpcrl.wandb_file import read_run
from tests.conftest import cpcrl
from tests.test_cli import rows

TINY = ["agent=reinforce", "env=cube2x2", "device=cpu", "train.total_steps=2048", "train.log_every=512",
        "eval.every=1024", "eval.episodes=8", "eval.num_envs=8", "checkpoint.every=0", "env.num_envs=16"]


def sweep_dirs(cwd):
    return sorted(p.parent for p in (cwd / "outputs" / "multirun").rglob("summary.json"))


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_two_job_multirun_with_launcher(tmp_path, launcher):
    cpcrl("-m", f"hydra/launcher={launcher}", *TINY, "logger=wandb", "seed=0,1", cwd=tmp_path, timeout=400)
    runs = sweep_dirs(tmp_path)
    assert len(runs) == 2
    sweep_name = runs[0].parent.name
    groups = {read_run(r)["run"]["group"] for r in runs}
    assert groups == {sweep_name}  # the dashboard compares a sweep's runs side by side
    assert all(json.loads((r / "summary.json").read_text())["env_step"] >= 2048 for r in runs)


def test_optuna_search_four_trials_in_sqlite(tmp_path):
    cpcrl("hparams_search=reinforce_cube", *TINY, "logger=none", "hydra.sweeper.n_trials=4",
          "hydra.sweeper.storage=sqlite:///study.db", cwd=tmp_path, timeout=400)
    runs = sweep_dirs(tmp_path)
    assert len(runs) == 4
    lrs = {yaml.safe_load((r / ".hydra" / "config.yaml").read_text())["agent"]["lr"] for r in runs}
    assert len(lrs) == 4  # the sampler proposed a different learning rate per trial
    best = yaml.safe_load(next((tmp_path / "outputs" / "multirun").rglob("optimization_results.yaml")).read_text())
    finals = [json.loads((r / "summary.json").read_text())["eval/return_mean"] for r in runs]
    assert best["best_value"] == pytest.approx(max(finals))  # the objective is the run's final eval return
    assert (tmp_path / "study.db").stat().st_size > 0


def run_config(run_dir) -> str:
    """The report's group label of a run of the lr sweep below (seeds pooled)."""
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    return next(o for o in overrides if o.startswith("agent.lr="))


def first_step_at(run_dir, threshold: float) -> float:
    """By hand: the env_step of the first eval whose return reaches the threshold; inf if none does."""
    return next((r["env_step"] for r in rows(run_dir) if r.get("eval/return_mean", -math.inf) >= threshold), math.inf)


def test_report_on_a_real_sweep(tmp_path):
    cpcrl("-m", *TINY, "logger=none", "agent.lr=0.001,0.01", "seed=0,1", cwd=tmp_path, timeout=400)
    sweep = next((tmp_path / "outputs" / "multirun").glob("*/*"))
    runs = sweep_dirs(tmp_path)
    best = {r: max(row["eval/return_mean"] for row in rows(r) if "eval/return_mean" in row) for r in runs}
    # every run reaches its own best: the lowest best is reached by all, the highest only by the runs holding it
    low, high = min(best.values()), max(best.values())
    assert low < high, f"the four runs' best eval returns are all {low}: no threshold splits them"
    for threshold in (low, high):
        assert report_main([str(sweep), "--threshold", str(threshold)]) == 0
        table = {r["config"]: r for r in csv.DictReader(open(sweep / "report.csv"))}
        assert sorted(table) == ["agent.lr=0.001", "agent.lr=0.01"]
        for config, row in table.items():
            steps = [first_step_at(r, threshold) for r in runs if run_config(r) == config]
            assert row["seeds"] == "2" == str(len(steps))
            assert float(row["steps_to_threshold"]) == statistics.median(steps)  # inf unless both seeds reach it
            assert row["reached"] == f"{sum(map(math.isfinite, steps))}/2"

    # a run's final score: the mean of its last 3 evaluations (cpcrl.report)
    finals = [statistics.mean([r["eval/return_mean"] for r in rows(d) if "eval/return_mean" in r][-3:])
              for d in runs if run_config(d) == "agent.lr=0.01"]
    row = table["agent.lr=0.01"]
    assert float(row["mean"]) == pytest.approx(sum(finals) / 2)
    assert float(row["ci_low"]) <= float(row["mean"]) <= float(row["ci_high"])
    image = matplotlib.image.imread(sweep / "curves.png")
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert "agent.lr=0.001" in (sweep / "report.md").read_text()


def test_bootstrap_ci_by_hand():
    assert bootstrap_ci([2.0]) == (2.0, 2.0, 2.0)
    mean, lo, hi = bootstrap_ci([0.0, 10.0])
    assert mean == 5.0 and lo == 0.0 and hi == 10.0  # resamples of two seeds span both extremes


def test_sweep_bad_input_is_one_line(tmp_path):
    proc = cpcrl("-m", *TINY, "train.nope=1,2", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Key 'nope' is not in struct" in proc.stderr
    assert not (tmp_path / "outputs").exists()
    (tmp_path / "empty").mkdir()
    assert report_main([str(tmp_path / "empty")]) == 2


def test_cpc_ablation_preset_groups_runs_by_experiment(tmp_path):
    cpcrl("-m", "experiment=cpc_ablation", "env=tmaze", "env.num_envs=4", "train.total_steps=512", "eval.every=0",
          "eval.episodes=4", "eval.num_envs=4", "agent.num_steps=16", "seed=0",
          "agent.cpc.weight=0,1.0", "logger=wandb", cwd=tmp_path, timeout=400)
    runs = sweep_dirs(tmp_path)
    assert len(runs) == 2
    meta = [read_run(r)["run"] for r in runs]
    assert {m["group"] for m in meta} == {"cpc_ablation"} and {m["job_type"] for m in meta} == {"cpc_rl"}
    assert sorted("agent.cpc.weight=0," in m["display_name"] or "agent.cpc.weight=1.0" in m["display_name"]
                  for m in meta) == [True, True]
    weights = sorted(yaml.safe_load((r / ".hydra" / "config.yaml").read_text())["agent"]["cpc"]["weight"] for r in runs)
    assert weights == [0, 1.0]


def test_report_pushes_table_and_plot_to_wandb(tmp_path):
    cpcrl("-m", *TINY, "logger=none", "seed=0,1", cwd=tmp_path, timeout=400)
    sweep = next((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert report_main([str(sweep), "--wandb", "--project", "t"]) == 0
    wb = read_run(sweep)
    assert wb["run"]["job_type"] == "report"
    logged = {k for row in wb["history"] for k in row}
    assert any(k.startswith("report/table") for k in logged) and any(k.startswith("report/curves") for k in logged)


def test_sweep_job_dir_names_stay_below_the_file_name_limit():
    from cpcrl.config import DIRNAME_LIMIT, short_dirname

    assert short_dirname("agent.lr=0.001,seed=1") == "agent.lr=0.001,seed=1"  # short names are kept as they are
    trial = ",".join(f"agent.p{i}=0.971952540157093" for i in range(8))  # an Optuna trial's overrides: 191 chars
    a, b = short_dirname(trial), short_dirname(trial.replace("p7=0.97", "p7=0.96"))
    assert len(a) == len(b) == DIRNAME_LIMIT and a[:100] == trial[:100]
    assert a != b  # the hash keeps trials that differ only past the cut apart
