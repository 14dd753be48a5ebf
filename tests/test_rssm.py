import pytest
import torch

from cpcrl.errors import ConfigError
from cpcrl.nets.rssm import RSSM, map_state
from cpcrl.objectives.world_model import WorldModelConfig

T, B, E, A = 5, 3, 7, 2


def make(kind, **kw):
    torch.manual_seed(0)
    sizes = dict(deter=16, stoch=4, hidden=16, latents=3, classes=5)
    return RSSM(E, A, kind=kind, **{**sizes, **kw})


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_observe_and_imagine_shapes(kind):
    rssm = make(kind)
    stoch = 4 if kind == "gaussian" else 15
    post, prior = rssm.observe(torch.randn(T, B, E), torch.randn(T, B, A), torch.zeros(T, B, dtype=torch.bool))
    for state in (post, prior):
        assert state["deter"].shape == (T, B, 16) and state["stoch"].shape == (T, B, stoch)
        assert rssm.features(state).shape == (T, B, rssm.feature_dim) == (T, B, 16 + stoch)
        assert rssm.kl(post, prior).shape == (T, B)
    assert torch.equal(post["deter"], prior["deter"])  # same h_t, different s_t
    start = map_state(lambda x: x.flatten(0, 1), post)  # Dreamer: imagine from every posterior state
    states, actions = rssm.imagine(lambda f: torch.tanh(f[..., :A]), start, horizon=4)
    assert states["deter"].shape == (4, T * B, 16) and actions.shape == (4, T * B, A)
    states, actions = rssm.imagine(torch.zeros(6, T * B, A), start)
    assert states["stoch"].shape == (6, T * B, stoch)


@pytest.mark.parametrize("kind", ["gaussian", "categorical"])
def test_is_first_resets_state_and_previous_action(kind):
    rssm = make(kind)
    embed = torch.randn(B, E)
    junk = {k: torch.randn_like(v) for k, v in rssm.initial(B).items()}
    first = torch.ones(B, dtype=torch.bool)
    post, prior = rssm.obs_step(junk, torch.randn(B, A), embed, first, sample=False)
    ref_post, ref_prior = rssm.obs_step(rssm.initial(B), torch.zeros(B, A), embed, ~first, sample=False)
    for k in post:
        torch.testing.assert_close(post[k], ref_post[k])
        torch.testing.assert_close(prior[k], ref_prior[k])
    # and without the flag the junk state does matter
    other, _ = rssm.obs_step(junk, torch.randn(B, A), embed, ~first, sample=False)
    assert not torch.allclose(other["deter"], ref_post["deter"])


def test_is_first_mid_sequence_equals_fresh_start():
    rssm = make("gaussian")
    embed, actions = torch.randn(T, B, E), torch.randn(T, B, A)
    is_first = torch.zeros(T, B, dtype=torch.bool)
    is_first[2, 1] = True
    post, _ = rssm.observe(embed, actions, is_first, sample=False)
    fresh, _ = rssm.observe(embed[2:, 1:2], actions[2:, 1:2], torch.ones(T - 2, 1, dtype=torch.bool) & (
        torch.arange(T - 2)[:, None] == 0), sample=False)
    torch.testing.assert_close(post["deter"][2:, 1:2], fresh["deter"])
    torch.testing.assert_close(post["mean"][2:, 1:2], fresh["mean"])


def test_imagine_never_reads_an_observation_and_keeps_gradients():
    rssm = make("categorical")
    rssm.post_net.register_forward_hook(lambda *a: pytest.fail("imagine used the posterior"))
    policy = torch.nn.Linear(rssm.feature_dim, A)
    start = rssm.initial(B)
    states, actions = rssm.imagine(lambda f: torch.tanh(policy(f)), start, horizon=5)
    rssm.features(states).pow(2).sum().backward()
    assert policy.weight.grad.abs().sum() > 0 and rssm.gru.weight_ih.grad.abs().sum() > 0
    assert rssm.prior_net[0].weight.grad.abs().sum() > 0


def test_gaussian_std_floor_and_reparameterised_sample():
    rssm = make("gaussian", min_std=0.1)
    post, _ = rssm.observe(torch.randn(T, B, E) * 100, torch.randn(T, B, A), torch.zeros(T, B, dtype=torch.bool))
    assert (post["std"] >= 0.1).all()
    post["stoch"].sum().backward()
    assert rssm.post_net[0].weight.grad.abs().sum() > 0


def test_categorical_straight_through_onehot_with_unimix():
    rssm = make("categorical", unimix=0.01)
    post, _ = rssm.observe(torch.randn(T, B, E) * 50, torch.randn(T, B, A), torch.zeros(T, B, dtype=torch.bool))
    stoch = post["stoch"].unflatten(-1, (3, 5))
    assert set(stoch.detach().unique().tolist()) <= {0.0, 1.0} and (stoch.sum(-1) == 1).all()
    assert (post["logits"].softmax(-1) >= 0.01 / 5 - 1e-7).all()  # 1% unimix keeps every class alive
    (stoch * torch.arange(5.0)).sum().backward()  # straight-through: gradient reaches the logits
    assert rssm.post_net[2].weight.grad.abs().sum() > 0


def test_mode_is_deterministic():
    for kind in ("gaussian", "categorical"):
        rssm = make(kind)
        args = (torch.randn(T, B, E), torch.randn(T, B, A), torch.zeros(T, B, dtype=torch.bool))
        a, _ = rssm.observe(*args, sample=False)
        b, _ = rssm.observe(*args, sample=False)
        assert torch.equal(a["stoch"], b["stoch"])


def test_bad_kind():
    with pytest.raises(ConfigError, match="world_model.kind='beta': valid are gaussian, categorical"):
        WorldModelConfig(name="rssm_beta", kind="beta")


# --- DreamerV3's normalised GRU (2023 code = sheeprl 0.8.4 LayerNormGRUCell) and the normed input/prior/post nets --

def test_layernorm_gru_one_step_by_hand():
    import math

    from cpcrl.nets.rssm import LayerNormGRUCell
    cell = LayerNormGRUCell(1, 1)  # x [N, 1], h [N, 1]: Linear([h, x] -> 3, no bias), LayerNorm over the 3
    with torch.no_grad():
        cell.linear.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))  # rows: reset, cand, update
    h, x = 0.5, -1.0
    z = [h, x, h + x]                                   # W [h, x] = [0.5, -1, -0.5]
    mean = sum(z) / 3
    var = sum((v - mean) ** 2 for v in z) / 3           # biased, as LayerNorm; eps 1e-3 (DreamerV3's)
    r, c, u = [(v - mean) / math.sqrt(var + 1e-3) for v in z]
    sigmoid = lambda v: 1 / (1 + math.exp(-v))          # noqa: E731
    r, u = sigmoid(r), sigmoid(u - 1)
    c = math.tanh(r * c)
    want = u * c + (1 - u) * h
    out = cell(torch.tensor([[x]]), torch.tensor([[h]]))
    assert out.item() == pytest.approx(want, rel=1e-6)
    assert cell.linear.bias is None and cell.norm.eps == 1e-3


def test_layernorm_gru_update_gate_is_biased_to_keep_the_state():
    from cpcrl.nets.rssm import LayerNormGRUCell
    cell = LayerNormGRUCell(3, 4)
    with torch.no_grad():
        cell.linear.weight.zero_()   # LayerNorm(0) = its shift = 0: r = 0.5, c = tanh(0) = 0, u = sigmoid(0 - 1)
    h = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    out = cell(torch.randn(1, 3), h)
    keep = 1 - torch.sigmoid(torch.tensor(-1.0))   # 0.731: nn.GRUCell keeps 0.5 at zero weights
    torch.testing.assert_close(out, keep * h)


def test_rssm_norm_and_gru_options():
    from torch import nn

    from cpcrl.nets.rssm import LayerNormGRUCell
    plain = make("categorical")
    assert isinstance(plain.gru, nn.GRUCell)
    assert not any(isinstance(m, nn.LayerNorm) for m in plain.modules())
    # the parameter names of the plain RSSM are those of earlier checkpoints (PlaNet, Dreamer v1)
    assert {"img_in.0.weight", "img_in.0.bias", "prior_net.0.bias", "prior_net.2.weight", "post_net.2.bias",
            "gru.weight_ih", "gru.bias_hh"} <= set(plain.state_dict())
    normed = make("categorical", norm="layer", gru="layernorm", activation="silu")
    assert isinstance(normed.gru, LayerNormGRUCell)
    for net in (normed.img_in, normed.prior_net, normed.post_net):  # Linear (no bias) -> LayerNorm -> SiLU
        assert net[0].bias is None and isinstance(net[1], nn.LayerNorm) and net[1].eps == 1e-3
        assert isinstance(net[2], nn.SiLU)
    post, _ = normed.observe(torch.randn(T, B, E), torch.randn(T, B, A), torch.zeros(T, B, dtype=torch.bool))
    assert post["deter"].shape == (T, B, 16) and torch.isfinite(post["deter"]).all()
    with pytest.raises(ConfigError, match="gru='lstm': valid are plain, layernorm"):
        make("categorical", gru="lstm")
