"""Suites (conf/suite/*.yaml), agent=random, and cpcrl-report on a real tiny suite multirun."""

import csv
import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_module

from cpcrl.agents.random import RandomAgent, RandomConfig
from cpcrl.collector import Collector
from cpcrl.errors import ConfigError
from cpcrl.report import main as report_main, suite_names
from cpcrl.wandb_file import read_run
from tests.conftest import ROOT, cpcrl

SUITES = sorted(p.stem for p in (ROOT / "conf" / "suite").glob("*.yaml"))
TINY = ["agent=random", "agent.rollout_steps=4,8", "seed=0,1", "train.total_steps=320", "train.log_every=64",
        "eval.every=64", "eval.episodes=4", "eval.num_envs=4", "checkpoint.every=0", "device=cpu"]


def compose_cfg(*overrides):
    with initialize_config_module(config_module="cpcrl.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def test_every_suite_is_listed():
    assert suite_names() == SUITES and {"classic_pomdp", "cube"} <= set(SUITES)


@pytest.mark.parametrize("name", SUITES)
def test_suite_sweeps_exactly_its_tasks_and_each_task_composes(name):
    cfg = compose_cfg(f"suite={name}")
    suite = cfg.suite
    assert suite.name == name and suite.metric.startswith("eval/")
    # the multirun is over the suite key only, with exactly the task names (in their order)
    assert dict(cfg.hydra.sweeper.params) == {suite.key: ",".join(str(t) for t in suite.tasks)}
    for task, scores in suite.tasks.items():
        assert scores.random < scores.reference, task
        one = compose_cfg(f"suite={name}", f"{suite.key}={task}")
        value = one
        for part in suite.key.split("."):
            value = value[part]
        assert str(value.name if hasattr(value, "name") else value) == str(task)


def test_unknown_suite_is_one_line(tmp_path):
    proc = cpcrl("-m", "suite=nope", "agent=random", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "suite" in proc.stderr and all(s in proc.stderr for s in SUITES)  # the valid choices
    assert not (tmp_path / "outputs").exists()


# ---------------------------------------------------------------------------------------------- agent=random


class MaskedEnv:
    """A 2-env vector env whose valid actions change every step; it records what it was asked to do."""

    num_envs = 2
    single_observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    single_action_space = gym.spaces.Discrete(4)

    def __init__(self):
        self.t, self.taken = 0, []
        self.rng = np.random.default_rng(0)

    def _mask(self):
        mask = self.rng.random((2, 4)) < 0.5
        mask[:, 0] |= ~mask.any(1)  # at least one valid action
        self.mask = mask
        return mask

    def reset(self, seed=None):
        return np.zeros((2, 3), np.float32), {"action_mask": self._mask()}

    def step(self, action):
        self.taken.append((np.asarray(action).copy(), self.mask.copy()))
        self.t += 1
        done = np.array([self.t % 5 == 0, False])
        obs = np.zeros((2, 3), np.float32)
        return obs, np.ones(2), done, np.zeros(2, bool), {"final_obs": obs, "action_mask": self._mask()}


def test_random_agent_is_uniform_over_the_valid_actions():
    agent = RandomAgent(MaskedEnv.single_observation_space, gym.spaces.Discrete(5), torch.device("cpu"), RandomConfig())
    obs, n = torch.zeros(8000, 3), 8000
    mask = torch.zeros(n, 5, dtype=torch.bool)
    mask[:, [1, 3]] = True
    for explore in (True, False):  # a random policy has no greedy mode: evaluation draws the same way
        action, _ = agent.act(obs, None, None, mask, explore=explore)
        assert set(action.tolist()) == {1, 3}
        assert (action == 1).float().mean().item() == pytest.approx(0.5, abs=3 * 0.5 / n**0.5)  # 3 sigma
    action, _ = agent.act(obs, None, None, None)
    assert torch.bincount(action, minlength=5).float().div(n).tolist() == pytest.approx([0.2] * 5, abs=0.015)
    assert list(agent.parameters()) == [] and agent.optimizers == {}  # it learns nothing


def test_random_agent_is_uniform_in_the_box():
    box = gym.spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 4.0], np.float32))
    agent = RandomAgent(MaskedEnv.single_observation_space, box, torch.device("cpu"), RandomConfig())
    action, _ = agent.act(torch.zeros(20000, 3), None, None)
    assert action.shape == (20000, 2)
    assert (action >= torch.tensor(box.low)).all() and (action <= torch.tensor(box.high)).all()
    assert action.mean(0).tolist() == pytest.approx([0.0, 2.0], abs=0.03)  # the middle of each interval
    assert action.var(0).tolist() == pytest.approx([4 / 12, 16 / 12], rel=0.05)  # (high - low)^2 / 12


def test_random_agent_train_iteration_only_collects_valid_actions():
    env = MaskedEnv()
    collector = Collector(env, torch.device("cpu"), seed=0)
    agent = RandomAgent(env.single_observation_space, env.single_action_space, torch.device("cpu"),
                        RandomConfig(rollout_steps=6))
    metrics = agent.train_iteration(collector)
    assert collector.env_step == 6 * env.num_envs and len(env.taken) == 6
    assert all(mask[np.arange(2), action].all() for action, mask in env.taken)  # the mask given with each obs
    assert metrics["train/valid_actions"] == pytest.approx(np.mean([m.sum(1).mean() for _, m in env.taken]))
    with pytest.raises(ConfigError, match="agent.rollout_steps=0: must be a positive integer"):
        RandomConfig(rollout_steps=0)


# ---------------------------------------------------------------------------------------------- the report


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A real suite multirun: 3 tasks x 2 configs (agent.rollout_steps) x 2 seeds, W&B offline (~15 s)."""
    cwd = tmp_path_factory.mktemp("suite")
    cpcrl("-m", "suite=classic_pomdp", *TINY, "logger=wandb", cwd=cwd, timeout=400)
    (sweep,) = (cwd / "outputs" / "multirun").glob("*/*")
    return sweep


def run_dirs(sweep):
    return sorted(p.parent for p in sweep.rglob("summary.json"))


def by_hand(sweep, last_k=3):
    """config -> task -> normalised final scores, read straight from the files (no cpcrl.report code)."""
    suite = yaml.safe_load((ROOT / "conf" / "suite" / "classic_pomdp.yaml").read_text())["suite"]
    out = {}
    for run in run_dirs(sweep):
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()))
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        evals = [r["eval/return_mean"] for r in rows if "eval/return_mean" in r]
        assert evals[-1] == json.loads((run / "summary.json").read_text())["eval/return_mean"]
        task = suite["tasks"][overrides["env"]]
        score = (np.mean(evals[-last_k:]) - task["random"]) / (task["reference"] - task["random"])
        out.setdefault(f"agent.rollout_steps={overrides['agent.rollout_steps']}", {}).setdefault(
            overrides["env"], []).append(score)
    return out


def iqm_by_hand(values):
    x = np.sort(values)
    cut = len(x) // 4
    return x[cut:len(x) - cut].mean()


def test_suite_multirun_is_one_wandb_group_per_sweep(sweep):
    runs = run_dirs(sweep)
    assert len(runs) == 12 and sweep.name.endswith("random_classic_pomdp")
    assert {read_run(r)["run"]["group"] for r in runs} == {sweep.name}


def test_report_on_a_real_suite(sweep):
    assert report_main([str(sweep), "--wandb", "--project", "t"]) == 0
    scores = by_hand(sweep)
    aggregates = {r["config"]: r for r in csv.DictReader(open(sweep / "report_aggregates.csv"))}
    assert sorted(aggregates) == sorted(scores) == ["agent.rollout_steps=4", "agent.rollout_steps=8"]
    for config, per_task in scores.items():
        row = aggregates[config]
        assert row["runs"] == "6" and row["tasks"] == "3"
        pooled = np.concatenate([per_task[t] for t in ("cartpole_pomdp", "pendulum_pomdp", "tmaze")])
        assert float(row["iqm"]) == pytest.approx(iqm_by_hand(pooled), abs=1e-9)  # 12 runs: 3 cut from each end
        assert float(row["mean"]) == pytest.approx(np.mean([np.mean(v) for v in per_task.values()]), abs=1e-9)
        assert float(row["optimality_gap"]) == pytest.approx(1 - np.minimum(pooled, 1).mean(), abs=1e-9)
        for name in ("mean", "median", "iqm", "optimality_gap"):
            assert float(row[f"{name}_low"]) <= float(row[name]) <= float(row[f"{name}_high"])
    (pair,) = list(csv.DictReader(open(sweep / "report_improvement.csv")))
    x, y = scores[pair["x"]], scores[pair["y"]]
    p = np.mean([np.mean([(a > b) + 0.5 * (a == b) for a in x[t] for b in y[t]]) for t in x])
    assert float(pair["p"]) == pytest.approx(p) and float(pair["p_low"]) <= float(pair["p"]) <= float(pair["p_high"])
    per_task = list(csv.DictReader(open(sweep / "report.csv")))
    assert len(per_task) == 6 and {r["task"] for r in per_task} == {"cartpole_pomdp", "pendulum_pomdp", "tmaze"}
    text = (sweep / "report.md").read_text()
    assert "IQM" in text and "P(X > Y)" in text and "last 3 evaluations" in text
    for image in ("curves.png", "profile.png", "sample_efficiency.png"):
        assert (sweep / image).stat().st_size > 10_000, image
    wb = read_run(sweep)  # the report run itself: tables and images in one run
    logged = {k.split(".")[0] for row in wb["history"] for k in row}
    assert wb["run"]["job_type"] == "report"
    assert {"report/table", "report/aggregates", "report/improvement", "report/curves", "report/profile",
            "report/sample_efficiency"} <= logged


def test_report_baseline_and_last_k(sweep, tmp_path):
    assert report_main([str(sweep), "--baseline", "agent.rollout_steps=8", "--last-k", "1", "--out",
                        str(tmp_path)]) == 0
    (pair,) = list(csv.DictReader(open(tmp_path / "report_improvement.csv")))
    assert (pair["x"], pair["y"]) == ("agent.rollout_steps=4", "agent.rollout_steps=8")
    scores = by_hand(sweep, last_k=1)  # the final evaluation only: summary.json's score
    row = {r["config"]: r for r in csv.DictReader(open(tmp_path / "report_aggregates.csv"))}["agent.rollout_steps=4"]
    pooled = np.concatenate(list(scores["agent.rollout_steps=4"].values()))
    assert float(row["iqm"]) == pytest.approx(iqm_by_hand(pooled), abs=1e-9)


@pytest.mark.parametrize("args, says", [
    (["--suite", "nope"], "valid are classic_pomdp, cube"),
    (["--baseline", "agent.rollout_steps=5"], "valid are: agent.rollout_steps=4 | agent.rollout_steps=8"),
    (["--pair", "agent.rollout_steps=4", "nope"], "'nope' is not a config"),
    (["--metric", "eval/length_mean"], "scores are for eval/return_mean"),
    (["--last-k", "0"], "must be at least 1"),
])
def test_report_bad_input_is_one_line(sweep, tmp_path, capsys, args, says):
    assert report_main([str(sweep), "--out", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cpcrl-report: error: ") and says in err, err


def test_report_on_an_unfinished_run_dir_is_one_line(sweep, tmp_path):
    run = tmp_path / "killed"
    (run / ".hydra").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"env_step": 64}\n')
    proc = subprocess.run([sys.executable, "-m", "cpcrl.report", str(run)], capture_output=True, text=True,
                          timeout=120)  # the real command: one line, no traceback
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "has no summary.json" in proc.stderr


def test_runs_made_without_suite_are_scored_with_the_suite_flag(sweep, tmp_path):
    """The same runs with the suite taken out of their configs: --suite classic_pomdp gives the same aggregates."""
    plain = tmp_path / "plain"
    for run in run_dirs(sweep):
        copy = plain / run.name
        (copy / ".hydra").mkdir(parents=True)
        for name in ("metrics.jsonl", "summary.json"):
            (copy / name).write_text((run / name).read_text())
        config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
        del config["suite"]
        (copy / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
        overrides = [o for o in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()) if "suite" not in o]
        (copy / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (plain / "zz_killed").mkdir()
    (plain / "zz_killed" / "metrics.jsonl").write_text('{"env_step": 64}\n')  # a killed run in the sweep: skipped
    assert report_main([str(plain)]) == 0
    assert "skipped 1 unfinished run(s)" in (plain / "report.md").read_text()
    assert not (plain / "report_aggregates.csv").exists()  # no suite: no normalisation, the per-config table
    assert len(list(csv.DictReader(open(plain / "report.csv")))) == 6  # configs = rollout_steps x env
    assert report_main([str(plain), "--suite", "classic_pomdp", "--out", str(tmp_path / "as_suite")]) == 0
    assert report_main([str(sweep), "--out", str(tmp_path / "made_with_suite")]) == 0
    read = lambda d: list(csv.DictReader(open(tmp_path / d / "report_aggregates.csv")))  # noqa: E731
    assert read("as_suite") == read("made_with_suite")
