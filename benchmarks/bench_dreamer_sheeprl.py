"""Dreamer update throughput: ours (cpcrl, `agent.version=v3`) against sheeprl 0.8.4's dreamer_v3, at matched compute
on this CPU.

What is timed, on both sides: one gradient update of the world model, then one of the actor and one of the critic
(imagination of horizon 15 from all 16 * 64 posterior states of the batch), on a batch of 16 sequences x 64 steps of
CartPole-v1 vector observations (MLP encoder/decoder, no CNN), fp32, on the CPU, one torch thread (`OMP_NUM_THREADS=1`
and `torch.set_num_threads(1)` in each worker process). Each side's loop body is what its own training loop runs per
gradient step:

- ours: `Dreamer.update()` (as `benchmarks/bench_dreamer.py speed_row` times it): replay sample, world-model update,
  actor + critic update, slow-critic EMA. The replay is filled by the agent's own random prefill (1100 steps, 4 envs).
- sheeprl: the body of the gradient-step loop of `sheeprl.algos.dreamer_v3.dreamer_v3.main`: a batch sampled from its
  `EnvIndependentReplayBuffer` (`sample_batches`, one batch per step), the target-critic EMA, and its `train(...)`
  (world-model update, imagination, actor update, critic update, metric aggregation as with the default
  `metric.log_level=1`). The agent is built with its own `build_agent` from the Hydra config that its CLI composes
  (`exp=dreamer_v3 algo=dreamer_v3_{XS,S} env=gym env.id=CartPole-v1 algo.mlp_keys.encoder=[vector]
  algo.cnn_keys.encoder=[] algo.cnn_keys.decoder=[] algo.mlp_keys.decoder=[vector]
  algo.per_rank_batch_size=16 algo.per_rank_sequence_length=64 algo.horizon=15
  fabric.accelerator=cpu`), with a Lightning `Fabric` on the CPU (32-true, `algo.compile.enabled=False`, its default).
  The buffer holds 1100 steps of random CartPole-v1 play in sheeprl's storage format (4 envs, like ours).
  The CLI's environment loop, logging and checkpointing are left out: they are not part of a gradient update.

Matched sizes (the same network on both sides; the JSON records each side's dims and parameter counts):
- XS: sheeprl `dreamer_v3_XS` (recurrent 256, dense 256, 1 MLP layer, 32 x 32 latents); ours built with the same
  dims (`world_model.deter=256 world_model.hidden=256 world_model.encoder.layers=1 world_model.latents=32
  world_model.classes=32`; our own `size=xs`, 128 wide with 16 x 16 latents, is smaller than any sheeprl preset).
- S: sheeprl `dreamer_v3_S` against ours `agent/dreamer_size=s` (recurrent 512, dense 512, 2 layers, 32 x 32).
Both sides use v3's layers: Linear (no bias) -> LayerNorm -> SiLU in every MLP, a LayerNorm GRU cell, two-hot reward
and critic heads.

The allocator is the same on both sides: `--allocator keep-freed` (default) gives both processes glibc's
`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2^31-1` (what `cpcrl device=cpu` applies to itself through mallopt,
`device.keep_freed_memory`: freed activations stay in the heap instead of being page-faulted in again every update);
`--allocator default` gives neither (ours with `device.keep_freed_memory=false`).

What still differs at matched compute is the algorithm's bookkeeping, which is what is being compared: ours updates
actor and critic with one backward pass of their summed losses (sheeprl two), reuses the imagination's actor pass
and one critic pass for the REINFORCE losses (sheeprl runs both again), and draws categorical samples by inverting
the CDF (sheeprl: torch's multinomial sampling).

Each worker builds its agent, runs `--warmup` updates, then times `--updates` updates (wall clock, perf_counter) and
prints one JSON line. Round r runs, per size, ours and sheeprl back to back (the order flipped every round), so that
the machine's load falls on both alike; the result is the median over the rounds of the paired ratio
ours / sheeprl of that round's updates/s (> 1: ours is faster), at least 5 rounds by default.

Setup (sheeprl in its own venv, never in the project's: its dependencies pin other pillow/opencv etc.; torch first,
the CPU build, so that pip does not pull a CUDA torch):

    python3.11 -m venv /tmp/sheeprl-venv
    /tmp/sheeprl-venv/bin/pip install torch==2.13.0        # +cpu build (here from the machine's local wheel index)
    /tmp/sheeprl-venv/bin/pip install sheeprl==0.8.4       # check first: pip install --dry-run sheeprl==0.8.4

Run on an otherwise idle machine (from the repo root; ours runs with .venv/bin/python, sheeprl with
--sheeprl-python, each in subprocesses):

    PYTHONPATH=. .venv/bin/python benchmarks/bench_dreamer_sheeprl.py \\
        --json benchmarks/results/dreamer_sheeprl.json
    # options: --sizes xs s --rounds 5 --updates-xs 5 --updates-s 3 --warmup 1 --allocator keep-freed|default
    #          --sheeprl-python PATH --ours-python PATH
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine_info import cpu_model  # sibling module: benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
SHEEPRL_ALGO = {"xs": "dreamer_v3_XS", "s": "dreamer_v3_S"}
# our config at each sheeprl preset's dims (sheeprl's configs/algo/dreamer_v3_{XS,S}.yaml)
OURS_SIZE = {"xs": ["agent/dreamer_size=xs", "world_model.deter=256", "world_model.hidden=256",
                    "world_model.encoder.layers=1", "world_model.latents=32", "world_model.classes=32"],
             "s": ["agent/dreamer_size=s"]}
# what `cpcrl.device.keep_freed_memory` sets through mallopt, as glibc environment variables (given to both sides)
KEEP_FREED_MEMORY_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
BATCH, SEQ, HORIZON, PREFILL, NUM_ENVS = 16, 64, 15, 1100, 4


def _threads() -> None:
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def _timed(step, warmup: int, updates: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(updates):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return times


# --- ours ---------------------------------------------------------------------------------------------------------

def worker_ours(size: str, warmup: int, updates: int) -> dict:
    _threads()
    import torch

    from cpcrl.agents import compose_config, make_agent
    from cpcrl.collector import Collector
    from cpcrl.device import make_device
    from cpcrl.envs.factory import make_gym_env

    keep = "true" if os.environ.get("MALLOC_MMAP_MAX_") == KEEP_FREED_MEMORY_ENV["MALLOC_MMAP_MAX_"] else "false"
    overrides = ["agent=dreamer", "seed=0", "device=cpu", f"device.keep_freed_memory={keep}", *OURS_SIZE[size],
                 f"agent.prefill={PREFILL}", "agent.train_ratio=1e-9", "agent.precision=fp32",
                 f"agent.batch_size={BATCH}", f"agent.seq_len={SEQ}", f"agent.horizon={HORIZON}"]
    cfg = compose_config(*overrides)
    make_device(cfg.device)  # as `cpcrl device=cpu` sets torch up
    torch.manual_seed(0)
    envs = make_gym_env("CartPole-v1", NUM_ENVS)
    agent = make_agent(cfg.agent, cfg.world_model, envs.single_observation_space, envs.single_action_space,
                       torch.device("cpu"))
    agent.train_iteration(Collector(envs, torch.device("cpu"), seed=0))  # random prefill + one policy step
    times = _timed(agent.update, warmup, updates)
    envs.close()
    count = lambda mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
    wm = cfg.world_model
    return {"times_s": times, "torch": torch.__version__, "threads": torch.get_num_threads(), "overrides": overrides,
            "dims": {"deter": wm.deter, "units": wm.hidden, "layers": wm.encoder.layers, "latents": wm.latents,
                     "classes": wm.classes, "norm": wm.norm, "gru": wm.gru, "activation": wm.activation,
                     "version": cfg.agent.version, "keep_freed_memory": cfg.device.keep_freed_memory},
            "params": {"trained": count([*agent.world_model_modules, agent.actor, agent.critic]),
                       "world_model": count(agent.world_model_modules), "actor": count([agent.actor]),
                       "critic": count([agent.critic]),
                       "target_critic": count([agent.slow_critic]) if agent.slow_critic is not None else 0},
            "replay_steps": len(agent.replay)}


# --- sheeprl ------------------------------------------------------------------------------------------------------

def _sheeprl_cfg(size: str):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf
    from sheeprl.utils.utils import dotdict

    overrides = ["exp=dreamer_v3", f"algo={SHEEPRL_ALGO[size]}", "env=gym", "env.id=CartPole-v1",
                 f"env.num_envs={NUM_ENVS}", "env.capture_video=False", "algo.cnn_keys.encoder=[]",
                 "algo.mlp_keys.encoder=[vector]", "algo.cnn_keys.decoder=[]", "algo.mlp_keys.decoder=[vector]",
                 f"algo.per_rank_batch_size={BATCH}",
                 f"algo.per_rank_sequence_length={SEQ}", f"algo.horizon={HORIZON}", "fabric.accelerator=cpu",
                 "fabric.precision=32-true", "fabric.devices=1", "buffer.memmap=False", "buffer.size=100000",
                 "model_manager.disabled=True", "num_threads=1", "algo.run_test=False"]
    with initialize_config_module(config_module="sheeprl.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return dotdict(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)), overrides


def _sheeprl_prefill(rb, n_envs: int, steps: int, seed: int) -> None:
    """Random CartPole-v1 play stored as sheeprl's `main` stores it: per step the observation, the one-hot action taken
    from it, the reward/terminated/truncated that led to it and is_first; at an episode end the final observation
    is stored too (zero action), and the next row starts the new episode."""
    import gymnasium as gym
    import numpy as np

    rng = np.random.default_rng(seed)
    for e in range(n_envs):
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=seed + e)
        prev = {"rewards": 0.0, "terminated": 0.0, "truncated": 0.0, "is_first": 1.0}
        for _ in range(steps // n_envs):
            action = int(rng.integers(2))
            row = {"vector": obs[None, None].astype(np.float32),
                   "actions": np.eye(2, dtype=np.float32)[action][None, None],
                   **{k: np.full((1, 1, 1), v, dtype=np.float32) for k, v in prev.items()}}
            rb.add(row, [e])
            obs, reward, terminated, truncated, _ = env.step(action)
            prev = {"rewards": float(reward), "terminated": float(terminated), "truncated": float(truncated),
                    "is_first": 0.0}
            if terminated or truncated:
                final = {"vector": obs[None, None].astype(np.float32),
                         "actions": np.zeros((1, 1, 2), dtype=np.float32),
                         **{k: np.full((1, 1, 1), v, dtype=np.float32) for k, v in prev.items()}}
                rb.add(final, [e])
                obs, _ = env.reset()
                prev = {"rewards": 0.0, "terminated": 0.0, "truncated": 0.0, "is_first": 1.0}
        env.close()


def worker_sheeprl(size: str, warmup: int, updates: int) -> dict:
    _threads()
    os.chdir(os.environ.get("TMPDIR", "/tmp"))  # Fabric/hydra write nothing in the repo
    import gymnasium as gym
    import hydra
    import sheeprl
    import torch
    from lightning.fabric import Fabric
    from sheeprl.algos.dreamer_v2.utils import sample_batches
    from sheeprl.algos.dreamer_v3 import utils as dv3_utils
    from sheeprl.algos.dreamer_v3.agent import build_agent
    from sheeprl.algos.dreamer_v3.dreamer_v3 import train
    from sheeprl.algos.dreamer_v3.utils import Moments
    from sheeprl.data.buffers import EnvIndependentReplayBuffer, SequentialReplayBuffer
    from sheeprl.utils.env import make_env
    from sheeprl.utils.metric import MetricAggregator
    from sheeprl.utils.timer import timer
    from torch.distributions import Distribution

    cfg, overrides = _sheeprl_cfg(size)
    # what `sheeprl.cli.run_algorithm` does before launching the algorithm
    torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    Distribution.set_default_validate_args(cfg.distribution.validate_args)
    timer.disabled = cfg.metric.log_level == 0 or cfg.metric.disable_timer
    for k in set(cfg.metric.aggregator.metrics.keys()) - set(dv3_utils.AGGREGATOR_KEYS):
        cfg.metric.aggregator.metrics.pop(k, None)
    MetricAggregator.disabled = cfg.metric.log_level == 0 or len(cfg.metric.aggregator.metrics) == 0
    fabric = Fabric(accelerator="cpu", devices=1, num_nodes=1, precision=cfg.fabric.precision, strategy="auto")
    fabric.seed_everything(cfg.seed)

    env = make_env(cfg, cfg.seed, 0, None, "train", vector_env_idx=0)()
    observation_space, action_space = env.observation_space, env.action_space
    env.close()
    is_continuous = isinstance(action_space, gym.spaces.Box)
    actions_dim = tuple(action_space.shape if is_continuous else [action_space.n])
    world_model, actor, critic, target_critic, _player = build_agent(
        fabric, actions_dim, is_continuous, cfg, observation_space)
    world_optimizer = hydra.utils.instantiate(cfg.algo.world_model.optimizer, params=world_model.parameters(),
                                              _convert_="all")
    actor_optimizer = hydra.utils.instantiate(cfg.algo.actor.optimizer, params=actor.parameters(), _convert_="all")
    critic_optimizer = hydra.utils.instantiate(cfg.algo.critic.optimizer, params=critic.parameters(), _convert_="all")
    world_optimizer, actor_optimizer, critic_optimizer = fabric.setup_optimizers(
        world_optimizer, actor_optimizer, critic_optimizer)
    m = cfg.algo.actor.moments
    moments = Moments(m.decay, m.max, m.percentile.low, m.percentile.high)
    aggregator = None
    if not MetricAggregator.disabled:
        aggregator = hydra.utils.instantiate(cfg.metric.aggregator, _convert_="all").to(fabric.device)

    rb = EnvIndependentReplayBuffer(cfg.buffer.size // cfg.env.num_envs, n_envs=cfg.env.num_envs, memmap=False,
                                    buffer_cls=SequentialReplayBuffer, seed=cfg.seed)
    _sheeprl_prefill(rb, cfg.env.num_envs, PREFILL, cfg.seed)
    gradient_steps = 0

    def step() -> None:  # the body of the gradient-step loop of sheeprl.algos.dreamer_v3.dreamer_v3.main
        nonlocal gradient_steps
        for batch in sample_batches(fabric, cfg, rb, 1):
            if gradient_steps % cfg.algo.critic.per_rank_target_network_update_freq == 0:
                tau = 1 if gradient_steps == 0 else cfg.algo.critic.tau
                for cp, tcp in zip(critic.module.parameters(), target_critic.parameters()):
                    tcp.data.copy_(tau * cp.data + (1 - tau) * tcp.data)
            train(fabric, world_model, actor, critic, target_critic, world_optimizer, actor_optimizer,
                  critic_optimizer, batch, aggregator, cfg, is_continuous, actions_dim, moments)
            gradient_steps += 1

    times = _timed(step, warmup, updates)
    count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    wm = cfg.algo.world_model
    return {"times_s": times, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "sheeprl": sheeprl.__version__, "algo": SHEEPRL_ALGO[size], "overrides": overrides,
            "dims": {"recurrent_state_size": wm.recurrent_model.recurrent_state_size,
                     "dense_units": cfg.algo.dense_units, "mlp_layers": cfg.algo.mlp_layers,
                     "transition_hidden": wm.transition_model.hidden_size,
                     "representation_hidden": wm.representation_model.hidden_size,
                     "stochastic_size": wm.stochastic_size, "discrete_size": wm.discrete_size,
                     "activation": cfg.algo.dense_act, "batch": [cfg.algo.per_rank_batch_size,
                                                                 cfg.algo.per_rank_sequence_length],
                     "horizon": cfg.algo.horizon, "compile": cfg.algo.compile.enabled,
                     "precision": cfg.fabric.precision, "metrics_aggregated": aggregator is not None},
            "params": {"trained": count(world_model) + count(actor) + count(critic),
                       "world_model": count(world_model), "actor": count(actor), "critic": count(critic),
                       "target_critic": count(target_critic)},
            "replay_steps": int(sum(b.buffer_size if b.full else b._pos for b in rb.buffer))}


# --- driver -------------------------------------------------------------------------------------------------------

def run_worker(python: str, side: str, size: str, warmup: int, updates: int, timeout: float,
               extra_env: dict | None = None) -> dict:
    inherited = {k: v for k, v in os.environ.items() if k not in KEEP_FREED_MEMORY_ENV}  # the allocator is ours to set
    env = {**inherited, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) if side == "ours" else "", "PYTHONWARNINGS": "ignore", **(extra_env or {})}
    cmd = [python, str(Path(__file__).resolve()), "--worker", side, "--size", size, "--warmup", str(warmup),
           "--updates", str(updates)]
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{side} {size} failed ({' '.join(cmd)}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    row = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    row["wall_s"] = round(time.time() - t0, 1)
    row["updates_per_s"] = len(row["times_s"]) / sum(row["times_s"])
    return row


def machine() -> dict:
    model = cpu_model()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(), "loadavg_at_start": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=["ours", "sheeprl"], help=argparse.SUPPRESS)
    parser.add_argument("--size", default="s", help=argparse.SUPPRESS)
    parser.add_argument("--updates", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", nargs="+", default=["xs", "s"], choices=["xs", "s"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--updates-xs", type=int, default=5)
    parser.add_argument("--updates-s", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--ours-python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--sheeprl-python", default="/tmp/sheeprl-venv/bin/python")
    parser.add_argument("--timeout", type=float, default=600.0, help="per worker process, seconds")
    parser.add_argument("--allocator", choices=["keep-freed", "default"], default="keep-freed",
                        help="glibc malloc setting for both sides: keep-freed (what `cpcrl device=cpu` applies, "
                             "device.keep_freed_memory) or glibc's default")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    if args.worker:
        fn = worker_ours if args.worker == "ours" else worker_sheeprl
        print(json.dumps(fn(args.size, args.warmup, args.updates)), flush=True)
        return

    if not Path(args.sheeprl_python).exists():  # `make bench` runs every script; the peer lives in its own venv
        print(f"skipped: no sheeprl venv at {args.sheeprl_python} (set it up as the docstring says, or pass "
              "--sheeprl-python)")
        return
    pythons = {"ours": args.ours_python, "sheeprl": args.sheeprl_python}
    allocator_env = KEEP_FREED_MEMORY_ENV if args.allocator == "keep-freed" else {}
    started = time.time()
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
            "argv": sys.argv[1:], "pythons": pythons,
            "allocator": {"both_sides": args.allocator, "env": allocator_env}}
    runs = {size: {"ours": [], "sheeprl": []} for size in args.sizes}
    for r in range(args.rounds):
        for size in args.sizes:
            updates = args.updates_xs if size == "xs" else args.updates_s
            for side in (("ours", "sheeprl") if r % 2 == 0 else ("sheeprl", "ours")):
                row = run_worker(pythons[side], side, size, args.warmup, updates, args.timeout, allocator_env)
                row["round"] = r
                runs[size][side].append(row)
                print(f"round {r} {size:>2} {side:<7} {row['updates_per_s']:.3f} updates/s "
                      f"({len(row['times_s'])} timed, worker {row['wall_s']} s)", flush=True)

    sizes = {}
    for size, sides in runs.items():
        # paired by round: ours and sheeprl ran back to back under the same load
        ratios = [o["updates_per_s"] / p["updates_per_s"] for o, p in zip(sides["ours"], sides["sheeprl"])]
        med = {side: statistics.median(row["updates_per_s"] for row in rows) for side, rows in sides.items()}
        sizes[size] = {
            "sheeprl_algo": SHEEPRL_ALGO[size], "ours_overrides": sides["ours"][0]["overrides"],
            "median_paired_ratio_ours_over_sheeprl": round(statistics.median(ratios), 3),
            "paired_ratios": [round(x, 3) for x in ratios],
            "median_updates_per_s": {k: round(v, 4) for k, v in med.items()},
            "median_s_per_update": {k: round(1 / v, 3) for k, v in med.items()},
            "dims": {side: rows[0]["dims"] for side, rows in sides.items()},
            "params": {side: rows[0]["params"] for side, rows in sides.items()},
            "sheeprl_overrides": sides["sheeprl"][0]["overrides"],
            "runs": {side: [{"round": row["round"], "updates_per_s": round(row["updates_per_s"], 4),
                             "times_s": [round(t, 3) for t in row["times_s"]], "wall_s": row["wall_s"]}
                            for row in rows] for side, rows in sides.items()},
        }
    first = {side: next(iter(runs.values()))[side][0] for side in ("ours", "sheeprl")}
    meta.update({"torch": {side: first[side]["torch"] for side in first},
                 "torch_threads": {side: first[side]["threads"] for side in first},
                 "sheeprl": first["sheeprl"]["sheeprl"], "loadavg_at_end": list(os.getloadavg()),
                 "batch": [BATCH, SEQ], "horizon": HORIZON, "env": "CartPole-v1", "prefill_steps": PREFILL,
                 "rounds": args.rounds, "warmup": args.warmup,
                 "updates_timed": {"xs": args.updates_xs, "s": args.updates_s},
                 "wall_s": round(time.time() - started, 1)})
    result = {"meta": meta, "sizes": sizes}

    print(f"\n{'size':<18} {'ours upd/s':>11} {'sheeprl upd/s':>14} {'paired ratio (median)':>22}  per round")
    for size, row in sizes.items():
        med = row["median_updates_per_s"]
        print(f"{size + ' = ' + row['sheeprl_algo']:<18} {med['ours']:>11.3f} {med['sheeprl']:>14.3f} "
              f"{row['median_paired_ratio_ours_over_sheeprl']:>22.2f}  {row['paired_ratios']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
