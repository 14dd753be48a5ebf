"""REINFORCE against the seed's numbers (seed 002); its learning test (the real cube) is in test_learning.py."""

import numpy as np
import torch

from cpcrl.agents.reinforce import reinforce_loss
from cpcrl.nets.mlp import mlp
from cpcrl.objectives.returns import discounted_returns


def test_seed_masked_batch_example():
    # Seed 002 section 5: env0 ends after one step, env1 after two; gamma 0.9.
    rewards = torch.tensor([[-1.0, -1.0], [0.0, -1.0]])
    active = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    log_probs = torch.tensor([[-0.20, -0.50], [-9.99, -0.70]])
    returns = discounted_returns(rewards, torch.zeros_like(rewards), 0.9)
    assert torch.allclose(returns, torch.tensor([[-1.0, -1.9], [0.0, -1.0]]))
    loss = reinforce_loss(log_probs, returns, active)
    # (0.2 + 0.95 + 0.7) / 3 with the sign of a loss to minimise
    assert abs(loss.item() - (-0.6166667)) < 1e-6


def test_seed_exact_gradient_step_matches_numpy():
    """One SGD step on -G log pi(a|s) through our ELU policy equals the hand-derived NumPy update to 1e-10."""
    rng = np.random.default_rng(123)
    in_dim, hidden, n_act, lr, gamma = 5, 4, 12, 1e-2, 0.95
    x = rng.normal(size=(in_dim,))
    W1, b1 = rng.normal(scale=0.1, size=(in_dim, hidden)), rng.normal(scale=0.01, size=(hidden,))
    W2, b2 = rng.normal(scale=0.1, size=(hidden, n_act)), rng.normal(scale=0.01, size=(n_act,))

    policy = mlp(in_dim, [hidden], n_act, "elu").double()
    with torch.no_grad():
        policy[0].weight.copy_(torch.from_numpy(W1.T)), policy[0].bias.copy_(torch.from_numpy(b1))
        policy[2].weight.copy_(torch.from_numpy(W2.T)), policy[2].bias.copy_(torch.from_numpy(b2))
    a, G = 4, -1.0 + gamma * -1.0  # the seed's two -1 rewards
    logits = policy(torch.from_numpy(x)[None])
    log_prob = torch.log_softmax(logits, -1)[:, a]
    loss = reinforce_loss(log_prob[None], torch.tensor([[G]], dtype=torch.float64),
                          torch.ones(1, 1, dtype=torch.float64))
    opt = torch.optim.SGD(policy.parameters(), lr=lr)
    opt.zero_grad(), loss.backward(), opt.step()

    # NumPy mirror: d log pi / dz = e_a - pi, back through ELU by hand.
    pre = x @ W1 + b1
    h = np.where(pre > 0, pre, np.exp(pre) - 1)
    z = h @ W2 + b2
    pi = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    delta = np.eye(n_act)[a] - pi
    g_pre = (W2 @ delta) * np.where(pre > 0, 1.0, np.exp(pre))
    W2n, b2n = W2 + lr * G * np.outer(h, delta), b2 + lr * G * delta
    W1n, b1n = W1 + lr * G * np.outer(x, g_pre), b1 + lr * G * g_pre

    for got, want in ((policy[0].weight.detach().numpy().T, W1n), (policy[0].bias.detach().numpy(), b1n),
                      (policy[2].weight.detach().numpy().T, W2n), (policy[2].bias.detach().numpy(), b2n)):
        np.testing.assert_allclose(got, want, atol=1e-10, rtol=0)
