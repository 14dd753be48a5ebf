import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Independent, Normal, kl_divergence

from cpcrl.config import typed
from cpcrl.errors import ConfigError
from cpcrl.nets.codecs import MLPEncoder
from cpcrl.nets.rssm import RSSM
from cpcrl.objectives.world_model import KLConfig, kl_loss, kl_per_step, onehot_nll, overshooting_kl

T, B, E, A = 6, 4, 5, 2


def gaussian_pair():
    torch.manual_seed(0)
    post = {"mean": torch.randn(T, B, 3, requires_grad=True), "std": (torch.rand(T, B, 3) + 0.5).requires_grad_()}
    prior = {"mean": torch.randn(T, B, 3, requires_grad=True), "std": (torch.rand(T, B, 3) + 0.5).requires_grad_()}
    return post, prior


def grads(rssm, post, prior, cfg):
    kl_per_step(rssm, post, prior, cfg).sum().backward()
    out = [t.grad.clone() for t in (post["mean"], prior["mean"])]
    for t in (*post.values(), *prior.values()):
        t.grad = None
    return out


RSSM_G = RSSM(E, A, kind="gaussian", deter=8, stoch=3, hidden=8)


def test_regular_and_free_bits():
    post, prior = gaussian_pair()
    ref = kl_divergence(Independent(Normal(post["mean"], post["std"]), 1),
                        Independent(Normal(prior["mean"], prior["std"]), 1))
    torch.testing.assert_close(kl_per_step(RSSM_G, post, prior, KLConfig("regular")), ref)
    big = KLConfig("free_bits", free_nats=1e6)
    assert torch.all(kl_per_step(RSSM_G, post, prior, big) == 1e6)
    g_post, g_prior = grads(RSSM_G, post, prior, big)  # below the free nats: no gradient at all
    assert g_post.abs().sum() == 0 and g_prior.abs().sum() == 0


def test_balanced_has_gradients_split_by_alpha():
    # seed 001 detached both terms (no gradient); here alpha goes to the prior and 1 - alpha to the posterior
    post, prior = gaussian_pair()
    g_post, g_prior = grads(RSSM_G, post, prior, KLConfig("balanced", free_nats=0.0, balance_alpha=0.8))
    r_post, r_prior = grads(RSSM_G, post, prior, KLConfig("regular"))
    assert g_post.abs().sum() > 0 and g_prior.abs().sum() > 0
    torch.testing.assert_close(g_prior, 0.8 * r_prior)
    torch.testing.assert_close(g_post, 0.2 * r_post)
    value = kl_per_step(RSSM_G, post, prior, KLConfig("balanced", free_nats=0.0))
    torch.testing.assert_close(value, kl_per_step(RSSM_G, post, prior, KLConfig("regular")))


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_dreamerv3_dyn_moves_prior_only_rep_moves_posterior_only(kind):
    torch.manual_seed(0)
    rssm = RSSM(16, A, kind=kind, deter=8, stoch=3, hidden=8, latents=3, classes=4)
    encoder = MLPEncoder(E, 16, 1)
    obs, actions = torch.randn(T, B, E), torch.randn(T, B, A)

    def grad_norms(dyn_scale, rep_scale):
        rssm.zero_grad(set_to_none=False), encoder.zero_grad(set_to_none=False)
        post, prior = rssm.observe(encoder(obs), actions, torch.zeros(T, B, dtype=torch.bool))
        # the first step only: later priors legitimately see earlier posterior samples through h
        first = lambda s: {k: v[0] for k, v in s.items()}  # noqa: E731
        cfg = KLConfig("dreamerv3", free_nats=0.0, dyn_scale=dyn_scale, rep_scale=rep_scale)
        kl_per_step(rssm, first(post), first(prior), cfg).mean().backward()
        norm = lambda m: sum(0.0 if p.grad is None else p.grad.abs().sum().item() for p in m.parameters())  # noqa: E731
        return norm(rssm.prior_net), norm(rssm.post_net), norm(encoder)

    prior_g, post_g, enc_g = grad_norms(1.0, 0.0)  # dyn
    assert prior_g > 0 and post_g == 0 and enc_g == 0
    prior_g, post_g, enc_g = grad_norms(0.0, 1.0)  # rep
    assert prior_g == 0 and post_g > 0 and enc_g > 0


def test_dreamerv3_default_scales_and_free_bits():
    post, prior = gaussian_pair()
    cfg = KLConfig("dreamerv3", free_nats=1.0)
    kl = kl_per_step(RSSM_G, post, prior, KLConfig("regular")).detach()
    torch.testing.assert_close(kl_per_step(RSSM_G, post, prior, cfg), 0.6 * kl.clamp(min=1.0))


def test_overshooting_distance_one_is_the_plain_kl():
    torch.manual_seed(0)
    rssm = RSSM(E, A, deter=8, stoch=3, hidden=8)
    actions, is_first = torch.randn(T, B, A), torch.zeros(T, B, dtype=torch.bool)
    is_first[3, 0] = True
    post, prior = rssm.observe(torch.randn(T, B, E), actions, is_first)
    cfg = KLConfig("free_bits", free_nats=0.5)
    plain, _ = kl_loss(rssm, post, prior, cfg)
    torch.testing.assert_close(overshooting_kl(rssm, post, prior, actions, is_first, 1, 1.0, cfg), plain)
    over = overshooting_kl(rssm, post, prior, actions, is_first, 3, 1.0, cfg)
    assert torch.isfinite(over) and not torch.isclose(over, plain)
    over.backward()
    with pytest.raises(ConfigError, match=">= 1"):
        overshooting_kl(rssm, post, prior, actions, is_first, 0, 1.0, cfg)


def test_unknown_kl_strategy():
    with pytest.raises(ConfigError, match="regular, free_bits, balanced, dreamerv3"):
        KLConfig("sparse")
    with pytest.raises(ConfigError, match="world_model.kl.free_bit: no such key in world_model.kl; valid are strategy"):
        typed(KLConfig, {"strategy": "regular", "free_bit": 1}, "world_model.kl")


def test_onehot_nll_is_cross_entropy_per_group():
    groups = [(4, 3), (2, 5)]
    target = torch.cat([F.one_hot(torch.randint(3, (7, 4)), 3).flatten(1),
                        F.one_hot(torch.randint(5, (7, 2)), 5).flatten(1)], 1).float()
    logits = torch.randn(7, 22)
    ref = (F.cross_entropy(logits[:, :12].reshape(-1, 3), target[:, :12].reshape(-1, 3).argmax(-1),
                           reduction="none").view(7, 4).sum(1)
           + F.cross_entropy(logits[:, 12:].reshape(-1, 5), target[:, 12:].reshape(-1, 5).argmax(-1),
                             reduction="none").view(7, 2).sum(1))
    torch.testing.assert_close(onehot_nll(logits, target, groups), ref)
    target[:, 12:] = 0  # no past action yet: contributes nothing
    torch.testing.assert_close(onehot_nll(logits, target, groups),
                               ref - ref + onehot_nll(logits[:, :12], target[:, :12], groups[:1]))


# --- DreamerV3's nets and reconstruction weight ---------------------------------------------------------------

def test_mlp_layer_norm_is_dreamerv3s():
    from torch import nn

    from cpcrl.nets.mlp import mlp
    torch.manual_seed(0)
    net = mlp(3, [5, 5], 2, "silu", "layer")
    kinds = [type(m) for m in net]
    assert kinds == [nn.Linear, nn.LayerNorm, nn.SiLU] * 2 + [nn.Linear]
    assert net[0].bias is None and net[3].bias is None and net[-1].bias is not None  # the norm shifts instead
    x = torch.tensor([[1.0, -2.0, 4.0]])
    z = x @ net[0].weight.T
    by_hand = (z - z.mean()) / torch.sqrt(z.var(unbiased=False) + 1e-3)   # eps 1e-3; gain 1, shift 0 at init
    torch.testing.assert_close(net[1](z), by_hand)
    plain = mlp(3, [5], 2, "elu")
    assert [type(m) for m in plain] == [nn.Linear, nn.ELU, nn.Linear] and plain[0].bias is not None
    with pytest.raises(ConfigError, match="norm='batch': valid are none, layer"):
        mlp(3, [5], 2, "elu", "batch")


def test_conv_layers_normalise_channels():
    from cpcrl.nets.codecs import ConvDecoder, ConvEncoder
    from cpcrl.nets.mlp import ChannelLayerNorm
    enc = ConvEncoder(4, "silu", norm="layer")
    norms = [m for m in enc.net if isinstance(m, ChannelLayerNorm)]
    assert len(norms) == 4 and all(m.bias is None for m in enc.net if isinstance(m, torch.nn.Conv2d))
    x = torch.randn(2, 3, 5, 5)
    by_hand = (x - x.mean(1, keepdim=True)) / torch.sqrt(x.var(1, unbiased=False, keepdim=True) + 1e-3)
    torch.testing.assert_close(ChannelLayerNorm(3, eps=1e-3)(x), by_hand)   # per pixel, over the channels
    assert enc(torch.zeros(2, 3, 64, 64, dtype=torch.uint8)).shape == (2, enc.out_dim)
    dec = ConvDecoder(6, 4, "silu", norm="layer")
    assert sum(isinstance(m, ChannelLayerNorm) for m in dec.net) == 3   # not after the output layer
    assert dec(torch.randn(2, 6)).shape == (2, 3, 64, 64)


def test_reconstruction_weight_by_hand():
    from cpcrl.objectives.world_model import gaussian_nll
    pred, target = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])   # squared errors 1 and 4
    assert gaussian_nll(pred, target).item() == 2.5              # -log N(x; pred, 1) + const: 0.5 * 5
    assert gaussian_nll(pred, target, scale=1.0).item() == 5.0   # DreamerV3: the plain squared error
    groups = [(2, 0)]
    assert onehot_nll(pred, target, groups, scale=1.0).item() == 5.0
