"""PlaNet: planning and update speed, and the pendulum learning curve.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_planet.py [--json results/planet.json]      # speed (~1 min)
    PYTHONPATH=. .venv/bin/python benchmarks/bench_planet.py learn --seed 0 --episodes 50 \\
        --planner cem --json benchmarks/results/planet_pendulum_seed0.json                         # target run

speed: ms per planned action (one env, default RSSM 200/30/200) at each planner budget, and world-model
updates/s at PlaNet's batch 50 x 50 (vector obs) and on 64x64 images (batch 50 x 50 and a smaller one).
learn: `agent=planet env=pendulum` through the agent API (same code path as the CLI), one seed; prints and
stores the return of every training episode. Target: mean return better than -400 within 50 episodes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from cpcrl.agents import compose_agent
from cpcrl.agents.planet import PlaNet
from cpcrl.collector import Collector
from cpcrl.envs.factory import make_gym_env

ROOT = Path(__file__).resolve().parents[1]
PLANNERS = sorted(p.stem for p in (ROOT / "conf" / "agent" / "planner").glob("*.yaml"))  # agent/planner presets
PENDULUM_OBS = gym.spaces.Box(-8, 8, (3,), np.float32)
UNIT_ACTION = gym.spaces.Box(-1, 1, (1,), np.float32)


def fake_episodes(agent: PlaNet, obs_shape, dtype, episodes: int = 4, length: int = 200) -> None:
    rng = np.random.default_rng(0)
    for _ in range(episodes):
        obs = rng.integers(0, 255, (length, *obs_shape)) if dtype == np.uint8 else rng.normal(size=(length, *obs_shape))
        agent.replay.add_episode({"obs": obs.astype(dtype), "action": rng.uniform(-1, 1, (length, 1)),
                                  "reward": rng.normal(size=length), "is_first": np.arange(length) == 0,
                                  "is_terminal": np.zeros(length, bool)})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_calls(fn, repeats: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def speed(device: torch.device, compile_mode: str = "none") -> dict:
    rows = []
    compiled = f"device.compile={compile_mode}"
    for name in PLANNERS:
        agent = compose_agent(PENDULUM_OBS, UNIT_ACTION, "agent=planet", f"agent/planner={name}", compiled,
                              device=device)
        budget = agent.plan_cfg.as_dict()
        state = {"s": agent.initial_state(1)}
        obs, first = torch.zeros(1, 3, device=device), torch.zeros(1, dtype=torch.bool, device=device)

        def act():
            _, state["s"] = agent.act(obs, state["s"], first, explore=True)
        repeats = 5 if name == "cem" else 20
        if compile_mode != "none":  # compile (and record CUDA graphs) before timing
            time_calls(lambda: (act(), sync(device)), 3)
        ms = 1000 * time_calls(lambda: (act(), sync(device)), repeats)
        rows.append({"what": f"plan ms/action ({name}: {budget})", "value": round(ms, 1)})
        print(f"{rows[-1]['what']:<75} {ms:9.1f}", flush=True)
    for label, space, batch, length, repeats in [
            ("updates/s vector obs, batch 50 x 50", PENDULUM_OBS, 50, 50, 10),
            ("updates/s 64x64 images, batch 50 x 50", gym.spaces.Box(0, 255, (3, 64, 64), np.uint8), 50, 50, 2),
            ("updates/s 64x64 images, batch 16 x 32", gym.spaces.Box(0, 255, (3, 64, 64), np.uint8), 16, 32, 3)]:
        agent = compose_agent(space, UNIT_ACTION, "agent=planet", compiled, device=device, batch_size=batch,
                              seq_len=length)
        fake_episodes(agent, space.shape, space.dtype)
        if compile_mode != "none":
            time_calls(lambda: (agent.update(), sync(device)), 3)
        ups = 1.0 / time_calls(lambda: (agent.update(), sync(device)), repeats)
        rows.append({"what": label, "value": round(ups, 2)})
        print(f"{label:<75} {ups:9.2f}", flush=True)
    return {"rows": rows}


def learn(seed: int, episodes: int, planner: str, action_repeat: int, collect_interval: int, num_envs: int,
          device: torch.device) -> dict:
    torch.manual_seed(seed)
    envs = make_gym_env("Pendulum-v1", num_envs)
    agent = compose_agent(envs.single_observation_space, envs.single_action_space, "agent=planet",
                          f"agent/planner={planner}", f"seed={seed}", device=device, action_repeat=action_repeat,
                          collect_interval=collect_interval)
    collector = Collector(envs, device, seed=seed)
    curve, t0 = [], time.perf_counter()
    while collector.episodes < episodes:
        seen = collector.episodes
        metrics = agent.train_iteration(collector)
        new = list(collector.returns)[-(collector.episodes - seen):] if collector.episodes > seen else []
        curve += [round(float(r), 1) for r in new]
        print(f"episodes {collector.episodes:3d}  last return {np.mean(new):8.1f}  loss/model "
              f"{metrics['loss/model']:8.3f}  kl_raw {metrics['wm/kl_raw']:.2f}  "
              f"plan {metrics['perf/plan_ms']:.0f} ms  "
              f"upd/s {metrics['perf/updates_per_s']:.1f}  {time.perf_counter() - t0:6.0f}s", flush=True)
    last10 = float(np.mean(curve[-10:]))
    return {"seed": seed, "planner": planner, "action_repeat": action_repeat, "collect_interval": collect_interval,
            "episodes": len(curve), "returns": curve, "mean_last_10": round(last10, 1),
            "best_10_window": round(max(np.mean(curve[i:i + 10]) for i in range(max(1, len(curve) - 9))), 1),
            "target": "mean return > -400 within 50 episodes", "wall_s": round(time.perf_counter() - t0, 1)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", nargs="?", default="speed", choices=["speed", "learn"])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--planner", default="cem", choices=PLANNERS)
    parser.add_argument("--action-repeat", type=int, default=4)  # as experiment=planet_pendulum
    parser.add_argument("--collect-interval", type=int, default=100)
    parser.add_argument("--num-envs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--compile", default="none", help="speed: device.compile (none | default | reduce-overhead)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result = speed(device, args.compile) if args.mode == "speed" else learn(args.seed, args.episodes, args.planner,
                                                              args.action_repeat, args.collect_interval,
                                                              args.num_envs, device)
    result.update({"mode": args.mode, "compile": args.compile,
                   "machine": platform.processor() or platform.machine(), "device": args.device,
                   "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
                   "threads": args.threads, "torch": torch.__version__,
                   "date": datetime.datetime.now().isoformat(timespec="seconds"), "command": " ".join(sys.argv)})
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
