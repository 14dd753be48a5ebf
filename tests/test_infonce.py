"""InfoNCE against slow loop references (both anchor ranges, seed 000's among them), episode-boundary
masking, and the CPC head."""

import pytest
import torch
import torch.nn.functional as F

from cpcrl.nets.cpc import CPCHead
from cpcrl.objectives.infonce import infonce_loss, valid_pairs


def batch_terms(preds, z, is_first, t, k, temperature=1.0):
    """The seed's (B, B) logits pred @ positive.T with labels arange(B), one cross-entropy per anchor b;
    anchors whose (t, t+k) crosses an episode start are skipped."""
    B = z.shape[1]
    ce = F.cross_entropy(preds[k - 1, t] @ z[t + k].T / temperature, torch.arange(B), reduction="none")
    return [ce[b] for b in range(B) if not is_first[t + 1: t + k + 1, b].any()]


def batch_time_terms(preds, z, is_first, t, k, temperature=1.0):
    """Every latent of the batch is a candidate; the positive is z[t + k, b]."""
    T, B, _ = z.shape
    flat = z.reshape(T * B, -1)
    return [-torch.log_softmax(flat @ preds[k - 1, t, b] / temperature, 0)[(t + k) * B + b]
            for b in range(B) if not is_first[t + 1: t + k + 1, b].any()]


def per_horizon_anchor_terms(terms_at, K, T):
    """anchors="all": for each horizon k every anchor t < T - k, all available pairs."""
    return [term for k in range(1, K + 1) for t in range(T - k) for term in terms_at(t, k)]


def seed_anchor_terms(terms_at, K, T):
    """anchors="common": seed 000's loop, `for t in range(T - self.horizon): for k in range(1, horizon + 1)`."""
    terms = []
    for t in range(T - K):
        for k in range(1, K + 1):
            terms += terms_at(t, k)
    return terms


TERMS = {"batch": batch_terms, "batch_time": batch_time_terms}
ANCHOR_LOOPS = {"all": per_horizon_anchor_terms, "common": seed_anchor_terms}


def reference_loss(preds, z, is_first, negatives, anchors, temperature=1.0):
    """Mean over the loop's valid pairs, and their number."""
    K, T = preds.shape[:2]
    terms = ANCHOR_LOOPS[anchors](lambda t, k: TERMS[negatives](preds, z, is_first, t, k, temperature), K, T)
    return sum(terms) / max(len(terms), 1), len(terms)


def seed_compute_cpc_loss(z_seq, c_seq, cpc_proj, horizon):
    """Seed 000's compute_cpc_loss line for line: z_seq, c_seq (B, T, D), one projector for every k, no masks."""
    B, T, D = z_seq.shape
    loss = 0
    terms = 0
    for t in range(T - horizon):
        anchor = c_seq[:, t]
        pred = cpc_proj(anchor)
        for k in range(1, horizon + 1):
            positive = z_seq[:, t + k]
            logits = pred @ positive.T
            labels = torch.arange(B)
            loss += F.cross_entropy(logits, labels)
            terms += 1
    return loss / terms


def random_case(T=7, B=5, K=3, D=4, resets=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    preds = torch.randn(K, T, B, D, generator=g, dtype=torch.float64)
    z = torch.randn(T, B, D, generator=g, dtype=torch.float64)
    is_first = torch.zeros(T, B, dtype=torch.bool)
    if resets:
        is_first[0] = True
        is_first[3, 1] = is_first[2, 4] = is_first[5, 4] = True
    return preds, z, is_first


@pytest.mark.parametrize("anchors", ["all", "common"])
@pytest.mark.parametrize("negatives", ["batch", "batch_time"])
@pytest.mark.parametrize("resets", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_loss_equals_its_anchor_range_loop(anchors, negatives, resets, temperature):
    preds, z, is_first = random_case(resets=resets, seed=int(resets))
    loss, _, count = infonce_loss(preds, z, is_first, negatives, temperature, anchors=anchors)
    ref, n = reference_loss(preds, z, is_first, negatives, anchors, temperature)
    assert count == n
    assert abs(loss.item() - float(ref)) < 1e-6


def test_common_anchors_equal_the_seeds_compute_cpc_loss():
    # No resets and one shared projector: seed 000's mean of per-(t, k) batch means is the mean over pairs.
    torch.manual_seed(0)
    T, B, H, D, K = 7, 5, 6, 4, 3
    c, z = torch.randn(T, B, H, dtype=torch.float64), torch.randn(T, B, D, dtype=torch.float64)
    head = CPCHead(H, D, K, "shared").double()
    loss, _, count = infonce_loss(head(c), z, torch.zeros(T, B, dtype=torch.bool), anchors="common")
    seed = seed_compute_cpc_loss(z.transpose(0, 1), c.transpose(0, 1), lambda anchor: anchor @ head.weight[0], K)
    assert count == B * K * (T - K)
    assert abs(loss.item() - seed.item()) < 1e-6


def test_anchor_ranges_differ_beyond_one_horizon():
    preds, z, is_first = random_case(T=7, B=5, K=3)
    (all_loss, _, all_n), (common_loss, _, common_n) = (infonce_loss(preds, z, is_first, anchors=a)
                                                        for a in ("all", "common"))
    assert all_n == 5 * (6 + 5 + 4) and common_n == 5 * 3 * 4  # B * sum_k (T - k) vs B * K * (T - K)
    assert abs(all_loss.item() - common_loss.item()) > 1e-3
    one = random_case(T=7, B=5, K=1)
    for negatives in ("batch", "batch_time"):
        (a, acc_a, n_a), (c, acc_c, n_c) = (infonce_loss(*one, negatives, anchors=x) for x in ("all", "common"))
        assert n_a == n_c == 5 * 6 and a.item() == c.item() and torch.equal(acc_a, acc_c)  # K=1: T-k == T-K


def test_bad_anchors_value_is_one_line():
    with pytest.raises(ValueError, match=r"^cpc.anchors='first': valid are all, common$"):
        infonce_loss(*random_case(), anchors="first")


def test_valid_pairs_by_hand():
    is_first = torch.tensor([[1], [0], [1], [0]], dtype=torch.bool)  # episodes: steps 0-1, 2-3
    ok = valid_pairs(is_first, 2)
    assert ok[0, :, 0].tolist() == [True, False, True, False]  # k=1: 0->1 ok, 1->2 crosses, 2->3 ok, 3->end
    assert ok[1, :, 0].tolist() == [False, False, False, False]  # k=2: every pair crosses or runs off
    no_resets = torch.zeros(4, 1, dtype=torch.bool)
    assert valid_pairs(no_resets, 2)[:, :, 0].tolist() == [[True, True, True, False], [True, True, False, False]]
    # anchors="common": t < T - K = 2 for both horizons
    assert valid_pairs(no_resets, 2, anchors="common")[:, :, 0].tolist() == [[True, True, False, False]] * 2


def test_every_pair_crossing_gives_no_term_and_no_nan():
    preds, z, _ = random_case(T=4, B=3, K=2)
    preds.requires_grad_(True)
    is_first = torch.ones(4, 3, dtype=torch.bool)  # every step starts an episode
    loss, acc, count = infonce_loss(preds, z, is_first)
    assert count == 0 and loss.item() == 0.0 and not torch.isnan(acc).any()
    loss.backward()
    assert torch.isfinite(preds.grad).all() and preds.grad.abs().sum() == 0


def test_perfect_predictions_have_full_accuracy():
    T, B = 8, 4
    z = torch.eye(T * B, dtype=torch.float64).view(T, B, T * B)  # every latent orthogonal to every other
    preds = torch.stack([F.pad(z[k:], (0, 0, 0, 0, 0, k)) for k in (1, 2)]) * 50
    for negatives in ("batch", "batch_time"):
        loss, acc, _ = infonce_loss(preds, z, torch.zeros(T, B, dtype=torch.bool), negatives)
        assert acc.tolist() == [1.0, 1.0] and loss.item() < 1e-6


def test_head_projections_and_action_conditioning():
    torch.manual_seed(0)
    c = torch.randn(6, 2, 8)
    shared = CPCHead(8, 5, 3, "shared")(c)
    assert shared.shape == (3, 6, 2, 5) and torch.equal(shared[0], shared[2])
    per = CPCHead(8, 5, 3, "per_horizon")(c)
    assert not torch.allclose(per[0], per[2])
    head = CPCHead(8, 5, 3, "per_horizon", action_dim=4)
    actions = torch.randint(0, 4, (6, 2))
    base = head(c, actions)
    changed = actions.clone()
    changed[3] = (changed[3] + 1) % 4  # a_3 may only affect predictions of z_{t+k} with t <= 3 < t + k
    diff = (head(c, changed) - base).abs().sum((-1, -2))  # [K, T]
    for k in range(1, 4):
        for t in range(6):
            assert (diff[k - 1, t] > 0) == (t <= 3 < t + k), (k, t)
    with pytest.raises(ValueError, match="valid are per_horizon, shared"):
        CPCHead(8, 5, 3, "both")


def test_accuracy_rises_above_chance_on_a_predictable_sequence():
    """z_{t+1} is a fixed permutation of z_t: a small encoder+LSTM+head learns to pick the true future."""
    torch.manual_seed(0)
    n_states, T, B, K = 16, 12, 16, 2
    perm = torch.randperm(n_states)
    start = torch.randint(0, n_states, (B,))
    seq = [start]
    for _ in range(T - 1):
        seq.append(perm[seq[-1]])
    obs = F.one_hot(torch.stack(seq), n_states).float()  # [T, B, n]
    encoder, lstm, head = torch.nn.Linear(n_states, 16), torch.nn.LSTM(16, 32), CPCHead(32, 16, K)
    params = [*encoder.parameters(), *lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=3e-3)
    is_first = torch.zeros(T, B, dtype=torch.bool)
    accs = []
    for _ in range(300):
        start = torch.randint(0, n_states, (B,))
        seq = [start]
        for _ in range(T - 1):
            seq.append(perm[seq[-1]])
        obs = F.one_hot(torch.stack(seq), n_states).float()
        z = encoder(obs)
        c, _ = lstm(z)
        loss, acc, _ = infonce_loss(head(c), z, is_first)
        opt.zero_grad(), loss.backward(), opt.step()
        accs.append(acc.mean().item())
    chance = 1 / B
    assert sum(accs[:10]) / 10 < 0.5 and sum(accs[-20:]) / 20 > 3 * chance
