import pytest
import torch

from cpcrl.objectives.returns import discounted_returns, gae, lambda_returns


def col(*xs, dtype=torch.float32):
    """A single batch column `[T, 1]`."""
    return torch.tensor(xs, dtype=dtype).unsqueeze(-1)


def test_discounted_returns_reinforce_seed_example():
    rewards = torch.tensor([[-1.0, -1.0], [0.0, -1.0]])
    returns = discounted_returns(rewards, None, 0.9)
    torch.testing.assert_close(returns, torch.tensor([[-1.0, -1.9], [0.0, -1.0]]))
    torch.testing.assert_close(discounted_returns(rewards, torch.zeros(2, 2, dtype=torch.bool), 0.9), returns)


def test_discounted_returns_done_in_the_middle():
    # gamma=0.5, r=[1,2,3,4], episode ends at t=1, bootstrap 10 for the episode running at the end:
    # R_3 = 4 + .5*10 = 9, R_2 = 3 + .5*9 = 7.5, R_1 = 2 (done), R_0 = 1 + .5*2 = 2
    rewards = col(1.0, 2.0, 3.0, 4.0)
    dones = col(False, True, False, False, dtype=torch.bool)
    returns = discounted_returns(rewards, dones, 0.5, bootstrap=torch.tensor([10.0]))
    torch.testing.assert_close(returns, col(2.0, 2.0, 7.5, 9.0))


def test_gae_hand_computed_termination_truncation_and_no_ending():
    # gamma=lam=0.5 (gamma*lam=0.25), r=[1,2,3], v=[1,2,3] in all three columns.
    # (a) terminated at t=1: delta=[1+.5*2-1, 2+0-2, 3+.5*4-3]=[1,0,2]; A_2=2, A_1=0, A_0=1
    # (b) truncated at t=1, V(final obs)=8: delta_1 = 2+.5*8-2 = 4; A_2=2, A_1=4 (stops), A_0=1+.25*4=2
    # (c) no ending: delta=[1,1.5,2]; A_2=2, A_1=1.5+.25*2=2, A_0=1+.25*2=1.5
    rewards = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    values = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0]])
    next_values = torch.tensor([[2.0, 2.0, 2.0], [99.0, 8.0, 3.0], [4.0, 4.0, 4.0]])
    terminated = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)
    dones = torch.tensor([[0, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.bool)
    advantages, returns = gae(rewards, values, next_values, terminated, dones, 0.5, 0.5)
    expected = torch.tensor([[1.0, 2.0, 1.5], [0.0, 4.0, 2.0], [2.0, 2.0, 2.0]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, expected + values)


def test_gae_lambda_one_is_discounted_returns_minus_values():
    torch.manual_seed(0)
    T, B, gamma = 7, 4, 0.9
    rewards, all_values = torch.randn(T, B), torch.randn(T + 1, B)
    values, next_values = all_values[:-1], all_values[1:]
    no_end = torch.zeros(T, B, dtype=torch.bool)
    advantages, returns = gae(rewards, values, next_values, no_end, no_end, gamma, 1.0)
    mc = discounted_returns(rewards, no_end, gamma, bootstrap=all_values[-1])
    torch.testing.assert_close(advantages, mc - values)
    torch.testing.assert_close(returns, mc)


def lambda_case(lam, cont=(1.0, 1.0, 1.0, 1.0)):
    return lambda_returns(col(0.0, 1.0, 2.0, 3.0), col(10.0, 20.0, 30.0, 40.0), col(*cont), 0.5, lam)


@pytest.mark.parametrize("lam, cont, expected", [
    (0.5, (1, 1, 1, 1), (9.8125, 15.25, 23.0)),
    (0.0, (1, 1, 1, 1), (11.0, 17.0, 23.0)),
    (1.0, (1, 1, 1, 1), (7.75, 13.5, 23.0)),
    (0.5, (1, 1, 0, 1), (6.5, 2.0, 23.0)),
])
def test_lambda_returns_hand_values(lam, cont, expected):
    torch.testing.assert_close(lambda_case(lam, cont), col(*expected))


def test_lambda_returns_gradient_flows_into_values():
    # lam=0: R_t = r_{t+1} + gamma * v_{t+1}, so d(sum R)/dv = [0, gamma, gamma, gamma].
    values = col(10.0, 20.0, 30.0, 40.0).requires_grad_()
    lambda_returns(col(0.0, 1.0, 2.0, 3.0), values, torch.ones(4, 1), 0.5, 0.0).sum().backward()
    torch.testing.assert_close(values.grad, col(0.0, 0.5, 0.5, 0.5))


@pytest.mark.parametrize("device", ["cpu", "meta"])  # meta catches stray tensors created on the wrong device
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_device_preserved(device, dtype):
    T, B = 5, 3

    def make(n=T):
        return torch.ones(n, B, dtype=dtype, device=device)

    flags = torch.zeros(T, B, dtype=torch.bool, device=device)
    outs = [discounted_returns(make(), flags, 0.9),
            discounted_returns(make(), flags, 0.9, bootstrap=make(1)[0]),
            *gae(make(), make(), make(), flags, flags, 0.99, 0.95)]
    for out in outs:
        assert out.shape == (T, B) and out.dtype == dtype and out.device.type == device
    out = lambda_returns(make(), make(), make(), 0.99, 0.95)
    assert out.shape == (T - 1, B) and out.dtype == dtype and out.device.type == device
