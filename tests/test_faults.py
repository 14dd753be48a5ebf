"""Fault injection (issue 15), a small version of benchmarks/bench_faults.py: ppo_lstm, cpc_rl and dreamer, each
SIGKILLed at checkpoint writes, W&B flushes and random times (real processes), resumed every time; then last.pt
loads, metrics.jsonl holds every row once, the W&B history over the run's files equals it, no temp file is left.
The full run (>= 30 kills) and its counts are in docs/BENCHMARKS.md."""

import pytest

from benchmarks.bench_faults import fault_injection

pytestmark = pytest.mark.slow


def test_kills_at_checkpoint_writes_wandb_flushes_and_random_times_corrupt_nothing(tmp_path):
    result = fault_injection(kills_per_agent=3, cwd=tmp_path, seed=1)
    assert result["corruptions"] == 0, [r["problems"] for r in result["runs"]]
    assert result["kills"] >= 6 and result["mid_checkpoint_write"] >= 1, result
