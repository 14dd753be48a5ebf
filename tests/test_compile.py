"""`device.compile`: the compiled recurrent steps train exactly as the eager reference (same seed, same random draws
through inductor's `fallback_random`, the same parameters after the same updates to float rounding), and agents
without a compiled path refuse it in one line. The GPU's CUDA-graph mode is checked in tests/test_cuda.py."""

import pytest
import torch

from cpcrl.agents import compose_agent
from cpcrl.collector import Collector
from cpcrl.device import cpp_compiler
from cpcrl.envs.factory import make_gym_env
from tests.conftest import cpcrl


def iterations(n: int):
    return lambda agent, collector: [agent.train_iteration(collector) for _ in range(n)]


def planet_updates_and_plans(agent, collector):
    """A seed episode, 3 model updates (observe), then 4 planned actions (CEM over imagined img_steps): a whole
    planned episode takes minutes on 2 busy cores."""
    agent.collect(collector, 1, random=True)
    metrics = [agent.update() for _ in range(3)]
    state, obs = None, collector.obs_tensor()
    for t in range(4):
        action, state = agent.act(obs, state, collector.tensor(collector.is_first if t == 0 else [False] * 2),
                                  explore=False)
        metrics.append({"loss/plan_action": float(action.abs().sum())})
    return metrics


# agent, env, overrides, agent params, what is trained: small enough that a cold compile fits in make test
CASES = {
    # v3: categorical RSSM, REINFORCE actor (the imagination step's enable_grad branch), two-hot heads
    "dreamer_v3": ("CartPole-v1", ("agent=dreamer",),
                   dict(prefill=64, train_ratio=8, batch_size=4, seq_len=16, imag_starts=32), iterations(12)),
    # v1: Gaussian RSSM, the pathwise actor (gradients through the compiled dynamics)
    "dreamer_v1": ("Pendulum-v1", ("agent=dreamer", "agent/dreamer_version=v1", "world_model=rssm_gaussian"),
                   dict(prefill=64, train_ratio=8, batch_size=4, seq_len=16, imag_starts=32), iterations(12)),
    "ppo_lstm": ("CartPole-v1", ("agent=ppo_lstm",), dict(num_steps=32), iterations(3)),
    "planet": ("Pendulum-v1", ("agent=planet", "agent/planner=cem_fast"), dict(batch_size=8, seq_len=16),
               planet_updates_and_plans),
}


def trained(name: str, mode: str, device: str = "cpu"):
    env_id, overrides, params, train = CASES[name]
    torch.manual_seed(0)
    envs = make_gym_env(env_id, 2)
    agent = compose_agent(envs.single_observation_space, envs.single_action_space, *overrides, "seed=0",
                          f"device.compile={mode}", device=device, **params)
    init = [p.detach().clone() for p in agent.parameters()]
    collector = Collector(envs, torch.device(device), seed=0)
    metrics = train(agent, collector)
    envs.close()
    return agent, metrics, init


def assert_same_training(name: str) -> None:
    eager, eager_metrics, init = trained(name, "none")
    comp, comp_metrics, _ = trained(name, "default")
    losses = {k for m in eager_metrics for k in m if k.startswith("loss/")}
    assert losses, eager_metrics[-1]  # the iterations updated
    for a, b in zip(eager_metrics, comp_metrics):
        for k in losses & set(a):
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-5), (k, a[k], b[k])
    moved = max((p - p0).abs().max().item() for p, p0 in zip(eager.parameters(), init))
    assert moved > 1e-4  # training changed the weights, so equal weights below say the updates were equal
    for (key, p), q in zip(eager.named_parameters(), comp.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}")


# inductor's CPU kernels are C++: where no compiler exists, device.compile is refused (test_device.py) instead
needs_compiler = pytest.mark.skipif(cpp_compiler() is None, reason="torch.compile on the CPU needs a C++ compiler")


@needs_compiler
def test_compiled_dreamer_trains_as_eager():
    assert_same_training("dreamer_v3")


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("name", ["dreamer_v1", "ppo_lstm", "planet"])
def test_compiled_agent_trains_as_eager(name):
    assert_same_training(name)


def test_compiled_steps_keep_checkpoint_keys():
    envs = make_gym_env("CartPole-v1", 1)
    eager = compose_agent(envs.single_observation_space, envs.single_action_space, "agent=dreamer", "seed=0")
    comp = compose_agent(envs.single_observation_space, envs.single_action_space, "agent=dreamer", "seed=0",
                         "device.compile=default")
    envs.close()
    assert comp.rssm.obs_step is not eager.rssm.obs_step.__func__  # compiled: an instance attribute now
    assert list(comp.state_dict()) == list(eager.state_dict())  # a compiled run's checkpoint loads eager, and back


@pytest.mark.parametrize("args, message", [
    (("device.compile=fast",), "device.compile='fast': valid are none, default, reduce-overhead, max-autotune"),
    (("agent=reinforce", "device.compile=default"),
     "device.compile=default: agent=reinforce has no compiled path; valid: device.compile=none, or an agent with one"),
])
def test_bad_compile_gives_one_line(args, message, tmp_path):
    proc = cpcrl(*args, "env=cartpole", "hydra.run.dir=run", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "run").exists()
