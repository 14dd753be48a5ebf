"""LSTMBelief: resets inside the recurrence equal fresh sequences; packed sequences equal the step loop."""

import pytest
import torch

from cpcrl.nets.recurrent import LSTMBelief, LSTMConfig, MLPBelief


def _belief(layers=1):
    torch.manual_seed(0)
    return LSTMBelief(obs_dim=3, hidden=16, lstm_hidden=8, num_layers=layers)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("method", ["auto", "loop"])
def test_sequence_reset_equals_fresh_sequence(layers, method):
    m = _belief(layers)
    T, B, r = 10, 3, 4
    obs = torch.randn(T, B, 3)
    state = tuple(torch.randn(layers, B, 8) for _ in range(2))  # a non-zero carried state
    is_first = torch.zeros(T, B, dtype=torch.bool)
    is_first[r, 1] = True  # env 1 starts a new episode at step r
    feats, _ = m.sequence(obs, state, is_first, method=method)
    fresh, _ = m.sequence(obs[r:, 1:2], m.initial_state(1), torch.zeros(T - r, 1, dtype=torch.bool), method=method)
    torch.testing.assert_close(feats[r:, 1], fresh[:, 0], atol=1e-6, rtol=0)
    # without the reset the features differ (the test can fail)
    no_reset, _ = m.sequence(obs, state, torch.zeros_like(is_first), method=method)
    assert (no_reset[r:, 1] - fresh[:, 0]).abs().max() > 1e-3
    # envs without a reset are untouched by env 1's reset
    torch.testing.assert_close(feats[:, [0, 2]], no_reset[:, [0, 2]], atol=1e-6, rtol=0)


def test_step_reset_equals_fresh_step():
    m = _belief()
    obs = torch.randn(4, 3)
    state = tuple(torch.randn(1, 4, 8) for _ in range(2))
    is_first = torch.tensor([False, True, False, True])
    feats, (h, c) = m.step(obs, state, is_first)
    fresh, (hf, cf) = m.step(obs[is_first], m.initial_state(2), torch.zeros(2, dtype=torch.bool))
    torch.testing.assert_close(feats[is_first], fresh, atol=1e-6, rtol=0)
    torch.testing.assert_close(h[:, is_first], hf, atol=1e-6, rtol=0)
    kept, _ = m.step(obs[~is_first], tuple(s[:, ~is_first] for s in state), torch.zeros(2, dtype=torch.bool))
    torch.testing.assert_close(feats[~is_first], kept, atol=1e-6, rtol=0)
    assert (feats[is_first] - m.step(obs, state, torch.zeros(4, dtype=torch.bool))[0][is_first]).abs().max() > 1e-3


@pytest.mark.parametrize("layers", [1, 2])
def test_sequence_equals_step_by_step(layers):
    """Random resets everywhere (incl. t=0 and two in one env): features and last state equal `step` in a loop."""
    m = _belief(layers)
    T, B = 12, 6
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(T, B, 3, generator=g)
    is_first = torch.rand(T, B, generator=g) < 0.25
    is_first[0, 0], is_first[3, 2], is_first[7, 2] = True, True, True
    state = tuple(torch.randn(layers, B, 8, generator=g) for _ in range(2))
    feats, (h, c) = m.sequence(obs, state, is_first)
    s, outs = state, []
    for t in range(T):
        f, s = m.step(obs[t], s, is_first[t])
        outs.append(f)
    torch.testing.assert_close(feats, torch.stack(outs), atol=1e-6, rtol=0)
    torch.testing.assert_close(h, s[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(c, s[1], atol=1e-6, rtol=0)
    # gradients flow through the masked path to the encoder and the LSTM
    feats.sum().backward()
    assert m.encoder[0].weight.grad.abs().sum() > 0 and m.lstm.weight_hh_l0.grad.abs().sum() > 0


@pytest.mark.parametrize("layers", [1, 2])
def test_cell_step_equals_step(layers):
    """The gates written out (what device.compile compiles) give nn.LSTM's step, resets included."""
    m = _belief(layers)
    g = torch.Generator().manual_seed(2)
    s_step = s_cell = tuple(torch.randn(layers, 5, 8, generator=g) for _ in range(2))
    for _ in range(6):
        obs, is_first = torch.randn(5, 3, generator=g), torch.rand(5, generator=g) < 0.3
        (f_step, s_step), (f_cell, s_cell) = m.step(obs, s_step, is_first), m.cell_step(obs, s_cell, is_first)
        torch.testing.assert_close(f_cell, f_step, atol=1e-6, rtol=0)
        torch.testing.assert_close(s_cell, s_step, atol=1e-6, rtol=0)


def test_mlp_belief_is_stateless():
    m = MLPBelief(3, 16, 8)
    assert m.initial_state(4) is None
    obs = torch.randn(5, 4, 3)
    feats, state = m.sequence(obs, None, torch.zeros(5, 4, dtype=torch.bool))
    assert state is None and feats.shape == (5, 4, 8)
    torch.testing.assert_close(feats[2], m.step(obs[2], None, torch.ones(4, dtype=torch.bool))[0])


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="world_model.lstm_hidden=0: must be a positive integer"):
        LSTMConfig(hidden=16, lstm_hidden=0)
