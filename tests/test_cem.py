import pytest
import torch

from cpcrl.errors import ConfigError
from cpcrl.planning import CEMConfig, cem_categorical, cem_continuous


def test_cem_finds_quadratic_optimum_and_std_shrinks():
    torch.manual_seed(0)
    target = torch.rand(4, 2) * 1.6 - 0.8  # [H, A], inside the action box
    score = lambda a: -((a - target) ** 2).sum((-2, -1))  # noqa: E731
    stds = []
    for iterations in (1, 3, 10):
        torch.manual_seed(1)
        mean, std = cem_continuous(score, 3, 2, CEMConfig(4, 1000, 100, iterations))
        stds.append(std.max().item())
    assert mean.shape == (3, 4, 2)
    assert (mean - target).abs().max() < 1e-2
    assert 1.0 > stds[0] > stds[1] > stds[2]


def test_cem_scores_all_candidates_in_one_call_per_iteration():
    calls = []

    def score(a):
        calls.append(a.shape)
        return -a.pow(2).sum((-2, -1))
    cem_continuous(score, 2, 3, CEMConfig(5, 64, 8, 4))
    assert calls == [(2, 64, 5, 3)] * 4


def test_categorical_cem_finds_best_sequence_and_respects_the_mask():
    torch.manual_seed(0)
    best = torch.tensor([[3, 1, 4], [0, 2, 1]])
    score = lambda a: (a.argmax(-1) == best[:, None]).float().sum(-1)  # noqa: E731
    probs = cem_categorical(score, 2, 5, CEMConfig(3, 200, 20, 5))
    assert torch.equal(probs.argmax(-1), best)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, 3] = mask[:, 0] = False  # the best first actions are illegal
    probs = cem_categorical(score, 2, 5, CEMConfig(3, 200, 20, 5), first_mask=mask)
    assert (probs[:, 0][~mask] == 0).all()
    assert torch.equal(probs[:, 1:].argmax(-1), best[:, 1:])


def test_bad_budgets():
    with pytest.raises(ConfigError, match="top_k=200 > candidates=100"):
        CEMConfig(12, 100, 200, 10)
    with pytest.raises(ConfigError, match="horizon=0"):
        CEMConfig(0, 100, 10, 10)
