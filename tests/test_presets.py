"""Every experiment preset and every agent x world_model x env combination the config allows, on the CPU.

Each case is composed the way `cpcrl` composes it (Hydra's compose API on conf/, then `cpcrl.config.validate`),
shrunk to tiny sizes (`shrink`: sizes only, never kinds), built with cpcrl.train's builders, trained until
the agent has updated once, and taken through a checkpoint round trip: a real file written by
`cpcrl.checkpoint.save_checkpoint` and read back with its weights_only load, as `resume=` does.

The case lists are read from conf/ and the agent classes, so a new preset, agent, world model or env is
covered without editing this file.
"""

from __future__ import annotations

import copy
import functools
import math

import hydra
import numpy as np
import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from cpcrl import device as devices
from cpcrl.agents import compose_config
from cpcrl.agents.dreamer import WORLD_MODEL_KIND
from cpcrl.checkpoint import load_checkpoint, save_checkpoint
from cpcrl.collector import Collector
from cpcrl.config import validate
from cpcrl.train import build_agent, load_agent_state, make_env

CONF = ROOT / "conf"
CPU = torch.device("cpu")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@functools.cache
def composed(*overrides: str) -> DictConfig:
    return compose_config(*overrides)


def agent_class(agent: str):
    return hydra.utils.get_class(composed(f"agent={agent}").agent._target_)


def version_for(agent: str, world_model: str) -> list[str]:
    """Dreamer's version is tied to the RSSM kind (v1 Gaussian, v3 categorical; any other pair is a
    ConfigError by design), so each world model it fits comes with its version."""
    if agent_class(agent).name != "dreamer":
        return []
    kind = composed(f"world_model={world_model}").world_model.kind
    return [f"agent.version={v}" for v, k in WORLD_MODEL_KIND.items() if k == kind]


# the pairs `validate` accepts: the world models each agent class declares it fits
PAIRS = [(a, w) for a in options("agent") for w in options("world_model") if w in agent_class(a).world_models]
COMBOS = {f"{a}-{w}-{e}": [f"agent={a}", f"world_model={w}", f"env={e}", *version_for(a, w)]
          for a, w in PAIRS for e in options("env")}  # env=gym runs its default id
CASES = {**{f"experiment={p}": [f"experiment={p}"] for p in options("experiment")}, **COMBOS}

# Tiny sizes, written over whichever of these keys the composed config has.
TINY_NET = {"hidden": 8, "layers": 1, "depth": 2}  # MLP width and depth; conv depth (first layer's channels)
TINY_WORLD_MODEL = {"deter": 8, "hidden": 8, "stoch": 4, "latents": 2, "classes": 3, "lstm_hidden": 8}
TINY_AGENT = {
    "hidden": [8],                                                                   # reinforce
    "num_steps": 8, "truncation_length": 4, "update_epochs": 1, "num_minibatches": 2,  # ppo_lstm, cpc_rl
    "seed_episodes": 1, "collect_interval": 1, "collect_episodes": 1,                 # planet
    "batch_size": 2, "seq_len": 4,                                                    # planet, dreamer
    "horizon": 2, "prefill": 8,                          # dreamer
}
TINY_PLANNER = {"horizon": 2, "candidates": 8, "top_k": 2, "iterations": 1}
TINY_ENV = {"num_envs": 2, "max_steps": 4, "max_episode_steps": 8}  # max_steps: the cube's truncation


def _present(tiny: dict, node: DictConfig) -> dict:
    return {k: v for k, v in tiny.items() if k in node}


def shrink(cfg: DictConfig) -> DictConfig:
    """The composed config at tiny sizes and short schedules. Only sizes change: the agent, world model and
    decoder kinds, the env, pixels, action repeat, the planner preset and Dreamer's version stay as composed."""
    agent, wm = cfg.agent, cfg.world_model
    small = {"env": _present(TINY_ENV, cfg.env), "agent": _present(TINY_AGENT, agent),
             "world_model": {**_present(TINY_WORLD_MODEL, wm),
                             **{part: _present(TINY_NET, wm[part]) for part in ("encoder", "decoder", "heads")
                                if part in wm}}}
    if "cpc" in agent:  # predicted steps must fit in one truncation_length chunk
        small["agent"]["cpc"] = {"horizon": min(agent.cpc.horizon, TINY_AGENT["truncation_length"] - 1)}
    if "planner" in agent:
        small["agent"]["planner"] = TINY_PLANNER
    if "train_ratio" in agent:  # 1.5 updates per vector-env step: the fraction carried over is state to keep
        small["agent"]["train_ratio"] = 1.5 * TINY_AGENT["batch_size"] * TINY_AGENT["seq_len"] / TINY_ENV["num_envs"]
    if agent.get("imag_starts"):
        small["agent"]["imag_starts"] = 4
    return OmegaConf.merge(cfg, small)


# what `shrink` must leave as composed
STRUCTURE = ("agent._target_", "agent.version", "agent.action_repeat", "agent.rl_loss",
             "world_model.name", "world_model.kind", "world_model.decoder.kind", "world_model.decoder.onehot_groups",
             "env._target_", "env.id", "env.observe", "env.pixels", "env.action_repeat", "env.prev_action",
             "env.curriculum.enabled")


def compose_case(overrides: list[str]) -> DictConfig:
    """Composed and validated as `cpcrl` does it, then shrunk (and validated again)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, "device=cpu", "logger=none"])
    validate(cfg)
    small = shrink(cfg)
    validate(small)
    assert {k: OmegaConf.select(small, k) for k in STRUCTURE} == {k: OmegaConf.select(cfg, k) for k in STRUCTURE}
    return small


def tree_diff(a, b, path: str = "") -> list[str]:
    """Where two checkpoint trees differ (nested dicts, lists, tuples, tensors, arrays, scalars): [] if equal."""
    if type(a) is not type(b):
        return [f"{path}: {type(a).__name__} vs {type(b).__name__}"]
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(map(str, a.keys() ^ b.keys()))} in only one"]
        return [d for k in a for d in tree_diff(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, (list, tuple)):
        if len(a) != len(b):
            return [f"{path}: length {len(a)} vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in tree_diff(x, y, f"{path}[{i}]")]
    if isinstance(a, torch.Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        same = a.dtype == b.dtype and np.array_equal(a, b)
    else:
        same = a == b
    return [] if same else [path]


def agent_state(agent) -> dict:
    """What a checkpoint must restore: the agent's checkpoint_state, and every buffer of its modules (a buffer
    registered persistent=False would drop out of the state_dict, and so out of the checkpoint)."""
    return {"checkpoint": agent.checkpoint_state(), "buffers": dict(agent.named_buffers())}


def train_until_updated(agent, collector, max_iterations: int = 20) -> dict:
    """Model-based agents first fill their replay; an iteration with a `loss/...` metric has updated."""
    for _ in range(max_iterations):
        metrics = agent.train_iteration(collector)
        if any(k.startswith("loss/") for k in metrics) or not list(agent.parameters()):  # random: nothing to learn
            return metrics
    raise AssertionError(f"no update in {max_iterations} iterations: {sorted(metrics)}")


def next_iteration(agent, cfg: DictConfig, rng: dict) -> dict:
    """One train_iteration from `rng` on fresh envs reset with the run's seed; -> the agent's state after it."""
    devices.set_rng_state(rng)
    envs = make_env(cfg.env)
    agent.train_iteration(Collector(envs, CPU, seed=int(cfg.seed)))
    envs.close()
    return copy.deepcopy(agent_state(agent))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_compose_build_train_and_checkpoint_round_trip(overrides, tmp_path):
    if "env=popgym" in overrides:
        pytest.importorskip("popgym")  # the `popgym` extra (make install has it)
    cfg = compose_case(overrides)
    if "save_replay" in cfg.agent:  # the replay travels in the checkpoint: a loaded agent learns from the same data
        cfg.agent.save_replay = True
    envs = make_env(cfg.env)
    devices.seed_everything(int(cfg.seed))
    agent = build_agent(cfg, envs, CPU)
    metrics = train_until_updated(agent, Collector(envs, CPU, seed=int(cfg.seed)))
    envs.close()
    assert all(math.isfinite(v) for v in metrics.values()), metrics

    path = tmp_path / "checkpoints" / "last.pt"
    # the payload a run writes (cpcrl.train.TrainingRun.checkpoint): load_checkpoint refuses anything less
    save_checkpoint(path, {"agent": agent.checkpoint_state(), "rng": devices.rng_state(), "agent_name": agent.name,
                           "config": OmegaConf.to_yaml(cfg, resolve=True),
                           "counters": {"env_step": 0, "episodes": 0, "iteration": 1, "wall_s": 0.0}})
    payload = load_checkpoint(path)
    devices.seed_everything(int(cfg.seed) + 1)  # other initial weights: whatever the load misses differs
    loaded = build_agent(cfg, envs, CPU)
    load_agent_state(loaded, payload, path)
    # (a) every tensor and number: weights, buffers (normalisers, slow critic), optimizer moments, counters, replay
    assert tree_diff(agent_state(agent), agent_state(loaded)) == []

    # (b) the same next iteration, from the saved RNG state on envs reset with the run's seed (new episodes, as
    # after a resume). The trained agent still holds whatever the checkpoint misses: that shows up as a difference.
    before = copy.deepcopy(agent.state_dict())
    after = next_iteration(agent, cfg, payload["rng"])
    assert tree_diff(next_iteration(loaded, cfg, payload["rng"]), after) == []
    if list(agent.parameters()):  # agent=random has nothing to change
        assert tree_diff(before, after["checkpoint"]["model"]), "the iteration did not change the agent"
