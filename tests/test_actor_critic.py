import pytest
import torch
from torch import nn

from cpcrl.objectives.actor_critic import (
    ReturnNormalizer,
    ema_update,
    imagination_weights,
    percentile_ema,
    return_scale,
)


def test_percentile_ema_arithmetic_by_hand():
    returns = torch.arange(101.0)  # q5 = 5, q95 = 95 exactly (linear interpolation on 0..100)
    low, high = percentile_ema(torch.tensor(0.0), torch.tensor(0.0), returns, decay=0.99)
    assert low.item() == pytest.approx(0.01 * 5) and high.item() == pytest.approx(0.01 * 95)
    low, high = percentile_ema(torch.tensor(10.0), torch.tensor(30.0), returns.view(101, 1), decay=0.5)
    assert low.item() == pytest.approx(0.5 * 10 + 0.5 * 5) and high.item() == pytest.approx(0.5 * 30 + 0.5 * 95)


def test_return_scale_floor():
    assert return_scale(torch.tensor(0.05), torch.tensor(0.95)).item() == 1.0          # range 0.9 < floor 1
    assert return_scale(torch.tensor(7.5), torch.tensor(62.5)).item() == pytest.approx(55.0)
    assert return_scale(torch.tensor(0.0), torch.tensor(0.5), floor=0.25).item() == 0.5


def test_return_normalizer_updates_its_buffers():
    norm = ReturnNormalizer(decay=0.99)
    returns = torch.arange(101.0)
    assert norm(returns).item() == 1.0  # EMA range 0.9 after one step: the floor holds
    assert norm.low.item() == pytest.approx(0.05) and norm.high.item() == pytest.approx(0.95)
    norm(returns)  # second step: 0.99 * 0.05 + 0.01 * 5 = 0.0995; 0.99 * 0.95 + 0.01 * 95 = 1.8905
    assert norm.low.item() == pytest.approx(0.0995) and norm.high.item() == pytest.approx(1.8905)
    assert norm(returns, update=False).item() == pytest.approx(1.8905 - 0.0995)
    assert norm.low.item() == pytest.approx(0.0995)  # not updated
    fresh = ReturnNormalizer(decay=0.0)
    assert fresh(returns).item() == pytest.approx(90.0)
    assert ReturnNormalizer(enabled=False)(returns * 1000).item() == 1.0
    assert set(norm.state_dict()) == {"low", "high"}  # checkpointed


def test_slow_critic_ema_arithmetic():
    slow, critic = nn.Linear(2, 1), nn.Linear(2, 1)
    nn.init.constant_(slow.weight, 1.0), nn.init.constant_(slow.bias, -1.0)
    nn.init.constant_(critic.weight, 3.0), nn.init.constant_(critic.bias, 1.0)
    ema_update(slow, critic, decay=0.98)
    assert torch.allclose(slow.weight, torch.full((1, 2), 0.98 * 1 + 0.02 * 3))   # 1.04
    assert torch.allclose(slow.bias, torch.tensor([0.98 * -1 + 0.02 * 1]))        # -0.96
    ema_update(slow, critic, decay=0.98)
    assert torch.allclose(slow.weight, torch.full((1, 2), 0.98 * 1.04 + 0.02 * 3))  # 1.0792
    assert torch.equal(critic.weight, torch.full((1, 2), 3.0))  # the source is untouched


def test_imagination_weights_by_hand():
    # continues of states 0..3 (c_0 unused); gamma 0.5: w = [1, 0.5 * 1, 0.5 * 1 * 0.5 * 0.5]
    continues = torch.tensor([[0.0], [1.0], [0.5], [1.0]], requires_grad=True)
    weights = imagination_weights(continues, 0.5)
    assert torch.allclose(weights, torch.tensor([[1.0], [0.5], [0.125]]))
    assert not weights.requires_grad  # stop-gradient
