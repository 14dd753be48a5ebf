"""cpcrl-report's probe table (cpcrl/report.py): per config, each probe score's final value per run (the mean over the
last K evaluations, as for the return; a probe.json as is), its mean and bootstrap CI over seeds, beside the return.
Run dirs written by hand with hand-computed expectations; a real run's is in tests/test_probes.py."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from cpcrl.report import _score_order, main as report_main, split_probe_key


def write_run(path: Path, overrides: list[str], evals: list[dict], probe_json: dict[str, dict] | None = None) -> None:
    """A finished run dir: `evals` are the evaluation rows (a train row before each, as a run logs them), the last
    one also summary.json's; `probe_json` maps a mode=probe dir name (its time) to its probe.json."""
    (path / ".hydra").mkdir(parents=True)
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    rows = []
    for i, row in enumerate(evals):
        rows += [{"env_step": 1000 * i + 500, "train/episode_return": 1.0}, {"env_step": 1000 * (i + 1), **row}]
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path / "summary.json").write_text(json.dumps({"env_step": 1000 * len(evals), **(evals[-1] if evals else {})}))
    for name, result in (probe_json or {}).items():
        (path / "probe" / name).mkdir(parents=True)
        (path / "probe" / name / "probe.json").write_text(json.dumps(result))


def ev(ret: float, belief: float, random: float, obs: float, **more) -> dict:
    return {"eval/return_mean": ret, "probe/state_r2": belief, "probe_random/state_r2": random,
            "probe_obs/state_r2": obs, "probe/samples": 400, **more}


@pytest.fixture
def sweep(tmp_path) -> Path:
    """Two configs (cpc weight 0 / 1) x 2 seeds, 4 evaluations each; weight 1's seed 0 also probed by mode=probe twice
    (the newer probe.json counts) and its seed 1 once."""
    write_run(tmp_path / "w0_s0", ["agent.cpc.weight=0", "seed=0"],
              [ev(0, 0.0, 0.0, 0.0), ev(10, 0.2, 0.1, 0.0), ev(20, 0.4, 0.2, 0.1), ev(30, 0.6, 0.3, 0.2)])
    write_run(tmp_path / "w0_s1", ["agent.cpc.weight=0", "seed=1"],
              [ev(0, 0.0, 0.0, 0.0), ev(40, 0.5, 0.4, 0.3), ev(50, 0.7, 0.5, 0.3), ev(60, 0.9, 0.6, 0.3)])
    last = ev(100, 0.9, 0.1, 0.0, **{"probe/state0_r2": 0.8})
    write_run(tmp_path / "w1_s0", ["agent.cpc.weight=1", "seed=0"],
              [ev(0, 0.0, 0.0, 0.0), ev(100, 0.9, 0.1, 0.0), ev(100, 0.9, 0.1, 0.0), last],
              {"2026-01-01_00-00-00": {"probe/class_acc": 0.1},
               "2026-01-02_00-00-00": {"probe/class_acc": 0.75, "probe_random/class_acc": 0.5,
                                       "probe/class_acc_t0": 1.0, "probe/class_acc_t1": 0.5, "probe/samples": 99,
                                       "checkpoint": "x", "env_step": 3000}})
    write_run(tmp_path / "w1_s1", ["agent.cpc.weight=1", "seed=1"],
              [ev(0, 0.0, 0.0, 0.0), ev(50, 0.3, 0.3, 0.1), ev(50, 0.3, 0.3, 0.1), ev(50, 0.3, 0.3, 0.1)],
              {"2026-01-03_00-00-00": {"probe/class_acc": 0.25, "probe_random/class_acc": 0.5,
                                       "probe/class_acc_t0": 1.0, "probe/class_acc_t1": 0.0}})
    return tmp_path


def probe_rows(path: Path) -> dict[tuple[str, str, str], dict]:
    return {(r["config"], r["from"], r["score"]): r for r in csv.DictReader(open(path / "report_probes.csv"))}


def test_probe_scores_per_config_mean_and_ci_over_seeds_by_hand(sweep):
    assert report_main([str(sweep)]) == 0
    rows = probe_rows(sweep)
    w0 = rows[("agent.cpc.weight=0", "metrics.jsonl", "state_r2")]
    # finals over the last 3 evals: seed 0 (0.2+0.4+0.6)/3 = 0.4, seed 1 (0.5+0.7+0.9)/3 = 0.7 -> mean 0.55; two
    # seeds: every resample is one of (0.4, 0.4), (0.4, 0.7), (0.7, 0.7), so the CI spans both extremes
    assert float(w0["belief"]) == pytest.approx(0.55)
    assert float(w0["belief_low"]) == pytest.approx(0.4) and float(w0["belief_high"]) == pytest.approx(0.7)
    assert float(w0["random"]) == pytest.approx((0.2 + 0.5) / 2)          # (0.1+0.2+0.3)/3, (0.4+0.5+0.6)/3
    assert float(w0["obs"]) == pytest.approx((0.1 + 0.3) / 2)             # (0+0.1+0.2)/3, (0.3+0.3+0.3)/3
    assert w0["seeds"] == "2"
    # beside it, the config's final return, the same numbers as report.csv's: (20 + 50) / 2
    per_config = {r["config"]: r for r in csv.DictReader(open(sweep / "report.csv"))}
    assert float(w0["final_metric"]) == pytest.approx(35.0) == float(per_config["agent.cpc.weight=0"]["mean"])
    w1 = rows[("agent.cpc.weight=1", "metrics.jsonl", "state_r2")]
    assert float(w1["belief"]) == pytest.approx(0.6) and float(w1["final_metric"]) == pytest.approx(75.0)
    # a score only one seed logged (and only at its last eval): that value, that count
    one = rows[("agent.cpc.weight=1", "metrics.jsonl", "state0_r2")]
    assert float(one["belief"]) == pytest.approx(0.8) and one["seeds"] == "1" and one["random"] == ""
    assert not any(score == "samples" for _, _, score in rows)  # a count of steps, not a score


def test_last_k_applies_to_the_probe_scores_as_to_the_return(sweep):
    assert report_main([str(sweep), "--last-k", "1"]) == 0
    w0 = probe_rows(sweep)[("agent.cpc.weight=0", "metrics.jsonl", "state_r2")]
    assert float(w0["belief"]) == pytest.approx((0.6 + 0.9) / 2) and float(w0["final_metric"]) == pytest.approx(45)


def test_the_newest_probe_json_of_each_run_is_read_as_is(sweep):
    assert report_main([str(sweep)]) == 0
    rows = probe_rows(sweep)
    acc = rows[("agent.cpc.weight=1", "probe.json", "class_acc")]
    assert float(acc["belief"]) == pytest.approx((0.75 + 0.25) / 2) and acc["seeds"] == "2"  # not the older 0.1
    assert float(acc["random"]) == pytest.approx(0.5) and float(acc["final_metric"]) == pytest.approx(75.0)
    assert float(rows[("agent.cpc.weight=1", "probe.json", "class_acc_t1")]["belief"]) == pytest.approx(0.25)
    assert not any(config == "agent.cpc.weight=0" and origin == "probe.json" for config, origin, _ in rows)
    # report.md: the summary scores with CIs, the per-time ones only in the csv
    text = (sweep / "report.md").read_text()
    assert "## Belief probes" in text and "| probe.json | class_acc | 2 |" in text
    assert "class_acc_t1" not in text
    assert "| agent.cpc.weight=0 | metrics.jsonl | state_r2 | 2 | 35 [20, 50] | 0.550 [0.400, 0.700] |" in text


def test_no_probe_section_for_runs_without_probes(tmp_path):
    write_run(tmp_path / "a", ["seed=0"], [{"eval/return_mean": 1.0}])
    write_run(tmp_path / "b", ["seed=1"], [{"eval/return_mean": 3.0}])
    assert report_main([str(tmp_path)]) == 0
    assert not (tmp_path / "report_probes.csv").exists() and "probes" not in (tmp_path / "report.md").read_text()


def test_probe_key_names_and_order():
    assert split_probe_key("probe/state_r2") == ("belief", "state_r2")
    assert split_probe_key("probe_random/class0_acc") == ("random", "class0_acc")
    assert split_probe_key("probe_obs/class_acc_t3") == ("obs", "class_acc_t3")
    assert split_probe_key("probe/samples") is None and split_probe_key("eval/return_mean") is None
    scores = ["class_acc_t10", "state1_r2", "class_acc_t2", "state_r2_mlp", "state10_r2", "class_acc", "state_r2"]
    assert sorted(scores, key=_score_order) == ["class_acc", "state_r2", "state_r2_mlp", "state1_r2", "state10_r2",
                                                "class_acc_t2", "class_acc_t10"]
