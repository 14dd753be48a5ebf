"""`device=cuda`: every agent trains on the GPU through the CLI, its checkpoint evaluates on the CPU, and the
math gives the CPU's numbers. Skipped where torch sees no GPU (CI); run on a GPU machine with `pytest -m cuda`."""

import json

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import cpcrl

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

COMMON = ["device=cuda", "logger=wandb", "eval.episodes=4", "seed=0"]
AGENTS = {
    "reinforce_cube": ["agent=reinforce", "env=cube2x2", "train.total_steps=4096", "eval.every=2048",
                       "checkpoint.every=2048"],
    "ppo_lstm_cartpole_pomdp": ["experiment=ppo_cartpole_pomdp", "train.total_steps=4096", "eval.every=2048",
                                "checkpoint.every=2048"],
    "cpc_rl_cube": ["agent=cpc_rl", "env=cube2x2", "train.total_steps=4096", "eval.every=2048",
                    "checkpoint.every=2048"],
    "planet_pendulum": ["experiment=planet_pendulum", "agent.planner=cem_fast", "agent.seed_episodes=1",
                        "agent.collect_interval=5", "train.total_steps=600", "eval.every=400",
                        "checkpoint.every=400", "eval.episodes=1"],
    "dreamer_v3_cartpole": ["experiment=dreamer_v3_cartpole", "agent.prefill=500", "train.total_steps=1500",
                            "eval.every=1000", "checkpoint.every=1000"],
    # the compiled recurrent steps as CUDA graphs (device.compile); the checkpoint evaluates eager on the CPU
    "dreamer_v3_cartpole_compiled": ["experiment=dreamer_v3_cartpole", "agent.prefill=500", "train.total_steps=1500",
                                     "eval.every=1000", "checkpoint.every=1000", "device.compile=reduce-overhead"],
    "ppo_lstm_cube_compiled": ["agent=ppo_lstm", "env=cube2x2", "env.num_envs=256", "train.total_steps=32768",
                               "eval.every=16384", "checkpoint.every=16384", "device.compile=reduce-overhead"],
    "dreamer_v1_pendulum_bf16": ["experiment=dreamer_v1_pendulum", "agent.prefill=400", "train.total_steps=1000",
                                 "eval.every=800", "checkpoint.every=800", "eval.episodes=1",
                                 "device.precision=bf16"],
}


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_agent_trains_on_cuda_and_its_checkpoint_evaluates_on_cpu(name, tmp_path):
    cpcrl(*AGENTS[name], *COMMON, "hydra.run.dir=run", cwd=tmp_path, timeout=600)
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert all(v == v for v in summary.values() if isinstance(v, float)), summary  # no NaN
    payload = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert OmegaConf.create(payload["config"]).device.type == "cuda"
    proc = cpcrl("mode=eval", "checkpoint=run", "device=cpu", "device.compile=none", "eval.episodes=2", cwd=tmp_path,
                 timeout=600)
    assert len(list((run / "eval").glob("*/eval.json"))) == 1, proc.stdout


def test_training_tensors_live_on_the_gpu():
    from cpcrl.collector import Collector
    from cpcrl.envs.factory import make_gym_env
    from tests.conftest import composed_agent

    envs = make_gym_env("CartPole-v1", 2)
    agent = composed_agent(envs.single_observation_space, envs.single_action_space, "agent=dreamer", device="cuda",
                           prefill=200, train_ratio=64, batch_size=4, seq_len=16)
    collector = Collector(envs, torch.device("cuda"), seed=0)
    metrics = agent.train_iteration(collector)
    assert all(p.is_cuda for p in agent.parameters())
    assert all(torch.isfinite(torch.as_tensor(v)) for v in metrics.values() if isinstance(v, float))
    envs.close()


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
@pytest.mark.parametrize("name", ["dreamer_v3", "dreamer_v1", "ppo_lstm", "planet"])
def test_compiled_agent_trains_as_eager_on_the_gpu(name, mode):
    """tests/test_compile.py's check on the GPU: the same seed, the same updates, the same weights as eager."""
    from tests.test_compile import trained

    torch.backends.cuda.matmul.allow_tf32 = False
    eager, eager_metrics, _ = trained(name, "none", device="cuda")
    comp, comp_metrics, _ = trained(name, mode, device="cuda")
    for (key, p), q in zip(eager.named_parameters(), comp.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-4, msg=lambda m, key=key: f"{key}: {m}")


def test_math_matches_the_cpu():
    from cpcrl.nets.rssm import RSSM
    from cpcrl.objectives.infonce import infonce_loss
    from cpcrl.objectives.returns import lambda_returns

    torch.backends.cuda.matmul.allow_tf32 = False
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(16, 64, generator=g), torch.randn(16, 64, generator=g)
    continues = (torch.rand(16, 64, generator=g) > 0.1).float()
    cpu = lambda_returns(rewards, values, continues, 0.99, 0.95)
    gpu = lambda_returns(rewards.cuda(), values.cuda(), continues.cuda(), 0.99, 0.95)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)

    preds, z = torch.randn(3, 20, 8, 16, generator=g), torch.randn(20, 8, 16, generator=g)
    is_first = torch.rand(20, 8, generator=g) < 0.05
    for negatives in ("batch", "batch_time"):
        loss_cpu, acc_cpu, n_cpu = infonce_loss(preds, z, is_first, negatives)
        loss_gpu, acc_gpu, n_gpu = infonce_loss(preds.cuda(), z.cuda(), is_first.cuda(), negatives)
        torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, rtol=1e-5, atol=1e-5)
        assert int(n_gpu) == int(n_cpu)

    rssm = RSSM(embed_dim=12, action_dim=2, kind="categorical", deter=32, hidden=32, latents=4, classes=4)
    embed, actions = torch.randn(10, 3, 12, generator=g), torch.randn(10, 3, 2, generator=g)
    first = torch.zeros(10, 3, dtype=torch.bool)
    first[0] = True
    post_cpu, _ = rssm.observe(embed, actions, first, sample=False)
    post_gpu, _ = rssm.cuda().observe(embed.cuda(), actions.cuda(), first.cuda(), sample=False)
    torch.testing.assert_close(post_gpu["deter"].cpu(), post_cpu["deter"], rtol=1e-4, atol=1e-4)
