import math

import pytest
import torch

from cpcrl.nets.distributions import (
    MaskedCategorical,
    TanhNormal,
    TwoHotDist,
    diag_normal,
    sample_index,
    straight_through_onehot,
    symexp,
    symlog,
    twohot_bins,
    twohot_encode,
    unimix_logits,
)

# --- MaskedCategorical -------------------------------------------------------------------------------------

def test_masked_categorical_never_samples_masked_actions():
    torch.manual_seed(0)
    logits = torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 0.0, 9.0, 0.0]])
    mask = torch.tensor([[False, True, True, False], [True, False, False, False]])
    samples = MaskedCategorical(logits, mask).sample((10_000,))  # [10000, 2]
    assert mask.gather(-1, samples.T).all()
    assert set(samples[:, 0].tolist()) == {1, 2}  # both legal actions of row 0 show up


def test_masked_categorical_log_prob_and_entropy_by_hand():
    # 3 actions, action 1 illegal: the distribution is softmax over logits {1, 3} only.
    logits = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    dist = MaskedCategorical(logits, torch.tensor([True, False, True]))
    log_z = math.log(math.e ** 1 + math.e ** 3)
    assert dist.log_prob(torch.tensor(0)).item() == pytest.approx(1 - log_z)
    assert dist.log_prob(torch.tensor(2)).item() == pytest.approx(3 - log_z)
    assert dist.probs[1].item() == 0.0
    p0, p2 = 1 / (1 + math.e ** 2), math.e ** 2 / (1 + math.e ** 2)
    entropy = dist.entropy()
    assert entropy.item() == pytest.approx(-(p0 * math.log(p0) + p2 * math.log(p2)))
    entropy.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[1] == 0.0
    assert dist.mode.item() == 2


def test_masked_categorical_mode_is_legal_and_batch_shapes_work():
    logits = torch.randn(4, 3, 5)
    logits[..., 0] = 100.0  # best action overall is illegal everywhere
    mask = torch.rand(4, 3, 5) > 0.5
    mask[..., 0], mask[..., 1] = False, True
    dist = MaskedCategorical(logits, mask)
    assert mask.gather(-1, dist.mode.unsqueeze(-1)).all()
    assert dist.sample().shape == dist.entropy().shape == dist.log_prob(dist.mode).shape == (4, 3)
    assert torch.isfinite(dist.entropy()).all()
    # no mask: plain Categorical
    plain = torch.distributions.Categorical(logits=logits)
    torch.testing.assert_close(MaskedCategorical(logits).entropy(), plain.entropy())


def test_masked_categorical_all_masked_row_raises():
    mask = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match="no legal action"):
        MaskedCategorical(torch.zeros(2, 2), mask)


# --- TanhNormal / diag_normal ------------------------------------------------------------------------------

def test_tanh_normal_log_prob_change_of_variables_by_hand():
    # 1-D: p(a) = N(atanh(a); mu, sigma) / (1 - a^2)
    mu, sigma, a = 0.5, 2.0, 0.3
    x = math.atanh(a)
    expected = -(x - mu) ** 2 / (2 * sigma ** 2) - math.log(sigma) - 0.5 * math.log(2 * math.pi) - math.log(1 - a ** 2)
    dist = TanhNormal(torch.tensor([mu]), torch.tensor([sigma]))
    assert dist.log_prob(torch.tensor([a])).item() == pytest.approx(expected, rel=1e-5)
    assert dist.mode.item() == pytest.approx(math.tanh(mu))


def test_tanh_normal_samples_in_box_and_log_probs_consistent():
    torch.manual_seed(0)
    mean = torch.zeros(1000, 2, requires_grad=True)
    dist = TanhNormal(mean, torch.full((1000, 2), 3.0))
    action, log_prob = dist.rsample_with_log_prob()
    assert action.shape == (1000, 2) and log_prob.shape == (1000,)
    assert (action.abs() <= 1).all() and (dist.sample().abs() <= 1).all()
    moderate = action.abs().max(-1).values < 0.99  # away from the clamp, atanh round trip is accurate
    torch.testing.assert_close(dist.log_prob(action)[moderate], log_prob[moderate], rtol=1e-4, atol=1e-4)
    assert torch.isfinite(dist.log_prob(torch.tensor([1.0, -1.0]))).all()  # saturated actions stay finite
    dist.sample_entropy(4).mean().backward()
    assert torch.isfinite(mean.grad).all()


def test_diag_normal_sums_over_last_dim():
    dist = diag_normal(torch.zeros(5, 3), torch.ones(5, 3))
    assert dist.log_prob(torch.zeros(5, 3)).shape == (5,)
    torch.testing.assert_close(dist.entropy(), torch.full((5,), 3 * 0.5 * math.log(2 * math.pi * math.e)))


# --- symlog / two-hot --------------------------------------------------------------------------------------

def test_symlog_symexp_round_trip():
    x = torch.tensor([-1e6, -123.4, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 42.0, 1e6, 1e30])
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=1e-5, atol=1e-6)
    assert symlog(torch.tensor(math.e - 1)).item() == pytest.approx(1.0)
    assert symlog(torch.tensor(-(math.e - 1))).item() == pytest.approx(-1.0)


def test_twohot_bins_default_and_exactly_symmetric():
    bins = twohot_bins()
    assert bins.shape == (255,) and bins[0] == -20 and bins[-1] == 20 and bins[127] == 0
    assert torch.equal(bins, -bins.flip(0))
    torch.testing.assert_close(bins, torch.linspace(-20, 20, 255))


def test_twohot_encode_hand_weights():
    bins = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    x = torch.tensor([0.25, -1.0, -1.6, 5.0, -5.0])
    expected = torch.tensor([
        [0.0, 0.0, 0.75, 0.25, 0.0],  # between 0 and 1, a quarter of the way up
        [0.0, 1.0, 0.0, 0.0, 0.0],    # exactly on a bin
        [0.6, 0.4, 0.0, 0.0, 0.0],    # -1.6: distance 0.4 to -2, 0.6 to -1
        [0.0, 0.0, 0.0, 0.0, 1.0],    # clamped above
        [1.0, 0.0, 0.0, 0.0, 0.0],    # clamped below
    ])
    torch.testing.assert_close(twohot_encode(x, bins), expected)
    assert twohot_encode(torch.zeros(3, 4), bins).shape == (3, 4, 5)


def test_twohot_dist_round_trip():
    x = torch.tensor([-3e4, -1000.0, -3.7, -1.0, 0.0, 0.5, 2.0, 17.0, 1e4, 3e5])
    bins = twohot_bins()
    dist = TwoHotDist(torch.log(twohot_encode(symlog(x), bins)), bins)
    torch.testing.assert_close(dist.mean, x, rtol=1e-4, atol=1e-5)
    assert torch.equal(dist.mode, dist.mean)


def test_twohot_log_prob_is_cross_entropy_to_the_encoding():
    logits = torch.randn(6, 255)
    x = torch.randn(6) * 50
    target = twohot_encode(symlog(x), twohot_bins())
    cross_entropy = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    torch.testing.assert_close(TwoHotDist(logits).log_prob(x), -cross_entropy)


@pytest.mark.parametrize("num_bins", [255, 256, 41])
def test_uniform_logits_decode_to_exactly_zero(num_bins):
    for logits in (torch.zeros(4, num_bins), torch.full((num_bins,), 3.7)):
        mean = TwoHotDist(logits, twohot_bins(num_bins)).mean
        assert (mean == 0).all(), mean


# --- straight-through one-hot ------------------------------------------------------------------------------

def test_sample_index_draws_each_class_with_its_probability():
    torch.manual_seed(0)
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.0, 1.0]])
    draws = sample_index(probs.expand(200_000, 2, 5).contiguous())
    freq = torch.stack([torch.bincount(draws[:, i], minlength=5) for i in range(2)]).float() / len(draws)
    torch.testing.assert_close(freq, probs, rtol=0, atol=5e-3)  # 4+ standard errors at p = 0.5
    assert freq[0, 1] == 0 and freq[0, 4] == 0  # zero-probability classes (masked actions) never drawn


def test_straight_through_onehot_forward_and_gradient():
    torch.manual_seed(0)
    logits = torch.randn(8, 4, 32, requires_grad=True)
    sample, probs = straight_through_onehot(logits, unimix=0.01)
    assert sample.shape == probs.shape == (8, 4, 32)
    assert ((sample == 0) | (sample == 1)).all() and (sample.sum(-1) == 1).all()
    assert (probs >= 0.01 / 32).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(8, 4))
    weights = torch.randn(32)
    (sample * weights).sum().backward(retain_graph=True)
    expected_grad, = torch.autograd.grad((probs * weights).sum(), logits)
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    torch.testing.assert_close(logits.grad, expected_grad)


def test_unimix_logits():
    logits = torch.tensor([[10.0, -10.0, 0.0, 0.0]])
    mixed = unimix_logits(logits, 0.01)
    torch.testing.assert_close(mixed.exp().sum(-1), torch.ones(1))
    assert mixed.exp().min() >= 0.01 / 4
    torch.testing.assert_close(mixed.exp(), straight_through_onehot(logits, 0.01)[1])
    torch.testing.assert_close(unimix_logits(logits, 0.0), torch.log_softmax(logits, -1))
