"""InfoNCE against slow loop references (seed 000), episode-boundary masking, and the CPC head."""

import pytest
import torch
import torch.nn.functional as F

from cpcrl.nets.cpc import CPCHead
from cpcrl.objectives.infonce import infonce_loss, valid_pairs


def reference_batch(preds, z, is_first, temperature=1.0):
    """The seed's loops: for each t, k the (B, B) logits pred @ positive.T, labels arange(B);
    anchors whose (t, t+k) crosses an episode start are skipped."""
    K, T, B, _ = preds.shape
    total, n = 0.0, 0
    for k in range(1, K + 1):
        for t in range(T - k):
            logits = preds[k - 1, t] @ z[t + k].T / temperature
            ce = F.cross_entropy(logits, torch.arange(B), reduction="none")
            for b in range(B):
                if not is_first[t + 1: t + k + 1, b].any():
                    total, n = total + ce[b], n + 1
    return total / max(n, 1), n


def reference_batch_time(preds, z, is_first):
    K, T, B, _ = preds.shape
    flat = z.reshape(T * B, -1)
    total, n = 0.0, 0
    for k in range(1, K + 1):
        for t in range(T - k):
            for b in range(B):
                if is_first[t + 1: t + k + 1, b].any():
                    continue
                logits = flat @ preds[k - 1, t, b]
                total = total - torch.log_softmax(logits, 0)[(t + k) * B + b]
                n += 1
    return total / n, n


def random_case(T=7, B=5, K=3, D=4, resets=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    preds = torch.randn(K, T, B, D, generator=g, dtype=torch.float64)
    z = torch.randn(T, B, D, generator=g, dtype=torch.float64)
    is_first = torch.zeros(T, B, dtype=torch.bool)
    if resets:
        is_first[0] = True
        is_first[3, 1] = is_first[2, 4] = is_first[5, 4] = True
    return preds, z, is_first


@pytest.mark.parametrize("resets", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_batch_negatives_equal_the_seed_loops(resets, temperature):
    preds, z, is_first = random_case(resets=resets)
    loss, acc, count = infonce_loss(preds, z, is_first, "batch", temperature)
    ref, n = reference_batch(preds, z, is_first, temperature)
    assert count == n
    assert abs(loss.item() - float(ref)) < 1e-6


def test_no_resets_equals_the_seed_average_over_t_and_k():
    # The seed averages per-(t, k) cross-entropies over B anchors: the same as the mean over all pairs.
    preds, z, is_first = random_case()
    K, T, B, _ = preds.shape
    terms = [F.cross_entropy(preds[k - 1, t] @ z[t + k].T, torch.arange(B)) for k in range(1, K + 1) for t in range(T - k)]
    assert abs(infonce_loss(preds, z, is_first)[0].item() - torch.stack(terms).mean().item()) < 1e-6


@pytest.mark.parametrize("resets", [False, True])
def test_batch_time_negatives_equal_loops(resets):
    preds, z, is_first = random_case(resets=resets, seed=1)
    loss, _, count = infonce_loss(preds, z, is_first, "batch_time")
    ref, n = reference_batch_time(preds, z, is_first)
    assert count == n and abs(loss.item() - float(ref)) < 1e-6


def test_valid_pairs_by_hand():
    is_first = torch.tensor([[1], [0], [1], [0]], dtype=torch.bool)  # episodes: steps 0-1, 2-3
    ok = valid_pairs(is_first, 2)
    assert ok[0, :, 0].tolist() == [True, False, True, False]  # k=1: 0->1 ok, 1->2 crosses, 2->3 ok, 3->end
    assert ok[1, :, 0].tolist() == [False, False, False, False]  # k=2: every pair crosses or runs off


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
