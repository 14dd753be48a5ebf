"""Learning tests: every agent, through the real CLI, reaches in a real env what no random or untrained agent reaches.

Each case's budget and threshold come from a measured distribution, not from one run: seeds 0-9 on this
machine's kernels and on other CPUs' (`ATEN_CPU_CAPABILITY=default` and `=avx2`), with 1 and 2 threads, measured
by `python benchmarks/learning_distributions.py <case>` (raw runs in benchmarks/results/learning_<case>.json,
the table in docs/BENCHMARKS.md, "Learning tests"). The threshold sits well below the worst measured run and
well above what a broken learner gets (random policy, feed-forward net on a POMDP); both are written per case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from tests.conftest import cpcrl


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]   # the CLI overrides (seed, threads, logger and run dir are added by the caller)
    metric: str             # a key of summary.json
    threshold: float        # the test asserts summary[metric] >= threshold
    measured: str           # the distribution it was set from, and what broken learners get
    slow: bool = False
    same_eval: bool = True  # greedy acting draws no random numbers, so a fresh eval replays the final eval


CASES: dict[str, Case] = {
    "reinforce_cube_depth1": Case(
        ("agent=reinforce", "env=cube2x2", "env.scramble_depth=1", "device=cpu", "eval.every=0"),
        "eval/solve_rate", 0.95,
        "35 runs (seeds 0-9 x native/avx2/default kernels, seeds 0-4 at 2 threads): every one 1.0; "
        "untrained (train.total_steps=1, one update): 0.29-0.88, median 0.59 over 5 seeds"),
    "ppo_lstm_cartpole_pomdp": Case(
        ("experiment=ppo_cartpole_pomdp", "train.total_steps=20480"),
        "eval/return_mean", 100.0,
        "35 runs: min 173.9, median 500 (the two below 250: default kernels); feed-forward (world_model=none) "
        "42-46 over 5 seeds; untrained (one rollout + update): 9.3-9.4"),
    "cpc_rl_cartpole_pomdp": Case(
        ("experiment=cpc_ablation", "agent.cpc.weight=0.1", "train.total_steps=20480", "eval.every=0",
         "eval.episodes=100", "eval.num_envs=100"),
        "eval/return_mean", 100.0,
        "35 runs: min 161.2 (2 threads), median 500; untrained (one rollout + update): 9.3-9.4"),
    # v3 (categorical RSSM, REINFORCE actor) on CartPole, shrunk to fit the suite: deter 64, units 64 x 1 layer,
    # 8 x 8 latents, 8 x 32 chunks at train ratio 32, imagination from 64 of the 256 posterior states.
    "dreamer_cartpole": Case(
        ("agent=dreamer", "env=cartpole", "env.num_envs=4", "device=cpu", "train.total_steps=12000",
         "train.log_every=1000", "eval.every=0", "eval.episodes=20", "eval.num_envs=20", "checkpoint.every=0",
         "agent.prefill=1000", "agent.batch_size=8", "agent.seq_len=32", "agent.train_ratio=32",
         "agent.imag_starts=64", "world_model.deter=64", "world_model.hidden=64", "world_model.encoder.layers=1",
         "world_model.latents=8", "world_model.classes=8", "agent.model_lr=1e-3", "agent.actor_lr=3e-4",
         "agent.critic_lr=1e-3"),
        "eval/return_mean", 80.0,
        "DreamerV3 nets (LayerNorm + SiLU, LayerNormGRUCell): 16 runs (seeds 0-4 native and default kernels, 0-2 "
        "avx2, 0-2 at 2 threads): min 168.6, median 433.1; the plain nets before (benchmarks/results/pre_parity/): "
        "min 104.3, median 306.5 over 13; untrained (prefill only, plain nets): 13-60.5; a uniform random policy ~22"),
    # PlaNet on CartPole (categorical CEM, continue head), shrunk to fit the suite: RSSM 64/8/64, 16 x 16 chunks,
    # 50 updates per 4 planned episodes, CEM 100 candidates / top 10 / 3 iterations / horizon 10, episodes
    # capped at 200 steps (so a good planner's eval stays cheap).
    "planet_cartpole": Case(
        ("experiment=planet_cartpole", "env.num_envs=4", "env.max_episode_steps=200", "agent.collect_episodes=4",
         "world_model.deter=64", "world_model.hidden=64", "world_model.stoch=8", "world_model.encoder.hidden=64",
         "world_model.decoder.hidden=64", "world_model.heads.hidden=64", "agent.batch_size=16", "agent.seq_len=16",
         "agent.collect_interval=50", "agent.lr=3e-3", "agent.planner.candidates=100",
         "agent.planner.top_k=10", "agent.planner.iterations=3",
         "agent.planner.horizon=10", "train.total_steps=2400", "train.log_every=200", "eval.every=0",
         "eval.episodes=10", "eval.num_envs=10", "checkpoint.every=0", "device=cpu"),
        "eval/return_mean", 70.0,
        "18 runs (seeds 0-9 native, 0-2 default and avx2, 0-1 at 2 threads): min 96.8, median 169 (max 200); "
        "random policy ~22; untrained (train.total_steps=1, one update): 9.0-41.7 over 4 seeds",
        same_eval=False),  # CEM samples its candidates even when greedy
    # Longer checks (`make test-slow`): the presets themselves, at their own budgets.
    "ppo_lstm_cartpole_pomdp_preset": Case(
        ("experiment=ppo_cartpole_pomdp",), "eval/return_mean", 100.0,
        "8 runs (seeds 0-3 native and default): min 194.0, median 500 (an Intel Xeon gave 192.9 at seed 0)",
        slow=True),
    "ppo_lstm_pendulum_pomdp_preset": Case(
        ("experiment=ppo_pendulum_pomdp",), "eval/return_mean", -400.0,
        "8 runs (seeds 0-3 native and default kernels): -221 to -195; a random policy ~ -1200", slow=True),
}


def run_case(case: Case, tmp_path, seed: int = 0, threads: int = 1) -> dict:
    cpcrl(*case.args, f"seed={seed}", f"device.threads={threads}", "logger=none", "hydra.run.dir=run",
          cwd=tmp_path, timeout=900)
    return json.loads((tmp_path / "run" / "summary.json").read_text())


def eval_checkpoint(case: Case, tmp_path, seed: int = 0, threads: int = 1) -> dict:
    """mode=eval on the run's last.pt in a fresh process, with the run's eval settings and seed."""
    same_eval = [a for a in case.args if a.startswith("eval.")]
    cpcrl("mode=eval", "checkpoint=run", *same_eval, f"seed={seed}", f"device.threads={threads}", "logger=none",
          "hydra.run.dir=ev", cwd=tmp_path, timeout=600)
    return json.loads((tmp_path / "ev" / "eval.json").read_text())


@pytest.mark.learning
@pytest.mark.parametrize("name", [n for n, c in CASES.items() if not c.slow])
def test_agent_learns(name, tmp_path):
    case = CASES[name]
    summary = run_case(case, tmp_path)
    assert summary[case.metric] >= case.threshold, (name, summary[case.metric], case.measured)
    # The checkpoint holds everything the policy needs (weights, observation-normaliser stats, belief size):
    # evaluated in a fresh process on the same eval seeds, it plays the same episodes as the run's final eval
    # (every case evaluates only at the end, so the final eval is the eval envs' first).
    result = eval_checkpoint(case, tmp_path)
    assert result["env_step"] == summary["env_step"]
    if not case.same_eval:  # the same model and episodes, other planner noise: still the learned level
        assert result[case.metric] >= case.threshold, (name, result[case.metric])
        return
    for key in ("eval/return_mean", "eval/return_std", "eval/length_mean"):
        assert result[key] == pytest.approx(summary[key], rel=1e-9), key


@pytest.mark.learning
@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.slow])
def test_agent_learns_slow(name, tmp_path):
    case = CASES[name]
    summary = run_case(case, tmp_path)
    assert summary[case.metric] >= case.threshold, (name, summary[case.metric], case.measured)
