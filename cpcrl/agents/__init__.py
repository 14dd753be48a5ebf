"""Agents: each module holds one algorithm, its hyper-parameter dataclass (`<Agent>.Config`) and its loss."""

from __future__ import annotations

from cpcrl.agents.base import Agent
from cpcrl.config import agent_class, typed_agent_configs


def make_agent(agent_cfg, world_model_cfg, obs_space, action_space, device, compile_mode: str = "none") -> Agent:
    """The agent `agent_cfg._target_` names, built from its checked hyper-parameters and world model, its
    sequential steps compiled with `compile_mode` (`device.compile`; none: eager)."""
    cls, params, world_model = typed_agent_configs(agent_cfg, world_model_cfg)
    agent = cls(obs_space, action_space, device, params, world_model)
    agent.compile_steps(compile_mode)
    return agent


def compose_config(*overrides: str):
    """The config the CLI composes from these overrides (presets applied, schemas typed)."""
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="cpcrl.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def compose_agent(obs_space, action_space, *overrides: str, device="cpu", **params) -> Agent:
    """An agent built as the CLI builds it, for tests and benchmarks: the config composed from `overrides`
    (agent=..., world_model.x=..., device.compile=...), then `params` written over agent.* (nested dicts merge)."""
    import torch
    from omegaconf import OmegaConf

    cfg = compose_config(*overrides)
    for key, value in params.items():
        OmegaConf.update(cfg, f"agent.{key}", value, merge=True)
    return make_agent(cfg.agent, cfg.world_model, obs_space, action_space, torch.device(device), cfg.device.compile)


__all__ = ["Agent", "agent_class", "compose_agent", "compose_config", "make_agent"]
