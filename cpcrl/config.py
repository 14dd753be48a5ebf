"""The typed configs (agents' and world models' hyper-parameter dataclasses as Hydra schemas), and the checks of a
composed config: run keys here, every hyper-parameter by its dataclass (`cpcrl.checks`), all before a run dir."""

from __future__ import annotations

import dataclasses
import hashlib

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, errors as oc_errors

from cpcrl.checks import boolean, choice, integer, non_negative_int, number, positive_int
from cpcrl.device import check_device
from cpcrl.errors import ConfigError

# The schema each yaml file builds on (`defaults: [/agent_ppo_lstm@_here_, ...]`): name -> dataclass.
SCHEMAS = {
    "agent_reinforce": "cpcrl.agents.reinforce.ReinforceConfig",
    "agent_ppo_lstm": "cpcrl.agents.ppo_lstm.PPOConfig",
    "agent_cpc_rl": "cpcrl.agents.cpc_rl.CPCRLConfig",
    "agent_planet": "cpcrl.agents.planet.PlaNetConfig",
    "agent_dreamer": "cpcrl.agents.dreamer.DreamerConfig",
    "agent_random": "cpcrl.agents.random.RandomConfig",
    "world_model_none": "cpcrl.agents.base.NoWorldModel",
    "world_model_lstm": "cpcrl.nets.recurrent.LSTMConfig",
    "world_model_rssm": "cpcrl.objectives.world_model.WorldModelConfig",
}


def register_schemas() -> None:
    """Store every schema in Hydra's ConfigStore (cpcrl.conf does it on import, before any yaml is read)."""
    store = ConfigStore.instance()
    for name, path in SCHEMAS.items():
        store.store(name=name, node=hydra.utils.get_class(path))

MODES = ("train", "eval", "solve", "probe")
CHECKPOINT_MODES = ("eval", "solve", "probe")  # modes that read a trained run (checkpoint=<run>)
DIRNAME_LIMIT = 120


def short_dirname(name: str) -> str:
    """A sweep job's dir name from its overrides, cut past DIRNAME_LIMIT chars and made unique by a hash of the
    whole: an Optuna trial's eight float overrides alone exceed the 255-byte limit on a file name."""
    if len(name) <= DIRNAME_LIMIT:
        return name
    return f"{name[: DIRNAME_LIMIT - 9]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"


# Used by hydra.sweep.subdir in conf/config.yaml; registered on import, before anything composes the config.
OmegaConf.register_new_resolver("cpcrl.short_dirname", short_dirname, replace=True)


def path_safe(name: str) -> str:
    """A name that is one path component on every OS: `module:Env-v0` -> `module-Env-v0` (env.name of env=gym)."""
    return str(name).replace(":", "-").replace("/", "-").replace("\\", "-")


OmegaConf.register_new_resolver("cpcrl.path_safe", path_safe, replace=True)


def _get(cfg: DictConfig, key: str):
    value = cfg
    for part in key.split("."):
        value = value[part]
    return value


def typed(schema: type, node, key: str):
    """`node` (a config node or dict, e.g. a saved run's) as the dataclass `schema`, every field checked.
    Unknown keys and wrong types become one ConfigError line naming the key."""
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), data))
    except oc_errors.ConfigKeyError as e:
        where = f"{key}.{e.full_key}" if e.full_key else key
        parent = where.rsplit(".", 1)[0]
        valid = [f.name for f in dataclasses.fields(e.object_type)] if dataclasses.is_dataclass(e.object_type) else []
        raise ConfigError(f"{where}: no such key in {parent}; valid are {', '.join(valid)}") from None
    except oc_errors.OmegaConfBaseException as e:
        where = f"{key}.{e.full_key}" if getattr(e, "full_key", None) else key
        raise ConfigError(f"{where}: {str(e).splitlines()[0]}") from None


def agent_class(agent_cfg) -> type:
    target = agent_cfg["_target_"]
    try:
        return hydra.utils.get_class(target)
    except Exception as e:
        raise ConfigError(f"agent._target_={target!r} cannot be imported: {e}") from None


def typed_agent_configs(agent_cfg, world_model_cfg) -> tuple[type, object, object]:
    """-> (agent class, its checked hyper-parameters, the checked world model); the one place where an agent
    and a world model are matched."""
    cls = agent_class(agent_cfg)
    name = world_model_cfg["name"]
    if name not in cls.world_models:
        raise ConfigError(f"agent={agent_cfg['name']} does not fit world_model={name}: "
                          f"valid are {', '.join(cls.world_models)}")
    world_model = typed(cls.world_models[name], world_model_cfg, "world_model")
    params = typed(cls.Config, agent_cfg, "agent")
    params.check_world_model(world_model)
    return cls, params, world_model


def validate(cfg: DictConfig) -> None:
    choice("mode", cfg.mode, MODES)
    non_negative_int("seed", cfg.seed)
    for key in ("train.total_steps", "train.log_every", "eval.episodes", "eval.num_envs", "env.num_envs"):
        positive_int(key, _get(cfg, key))
    for key in ("eval.every", "checkpoint.every", "checkpoint.keep"):
        non_negative_int(key, _get(cfg, key))
    if cfg.env.get("_target_") == "cpcrl.envs.cube2x2.make_vector_env":  # the cube checks its keys itself
        from cpcrl.envs import cube2x2

        cube2x2.check_config(**OmegaConf.to_container(cfg.env, resolve=True))
    for d in cfg.eval.depths:
        if not isinstance(d, int) or d < 0:
            raise ConfigError(f"eval.depths={list(cfg.eval.depths)}: must be non-negative integers")
    check_device(cfg.device)
    number("train.max_minutes", cfg.train.get("max_minutes"), low=0, low_open=True, optional=True, unit="minutes")
    integer("eval.reset_hidden_every", cfg.eval.get("reset_hidden_every"), optional=True)
    for key in ("eval.cube_uniform_states", "eval.cube_per_distance", "eval.cube_curve_states"):
        non_negative_int(key, _get(cfg, key))
    positive_int("eval.cube_max_steps", cfg.eval.cube_max_steps)
    for key in ("solve.cubes", "solve.beam_width", "solve.max_depth", "solve.max_beams"):
        positive_int(key, _get(cfg, key))
    number("solve.value_weight", cfg.solve.value_weight)
    boolean("eval.probe", cfg.eval.probe)
    for key in ("eval.probe_episodes", "probe.episodes", "probe.mlp_steps", "probe.mlp_hidden"):
        positive_int(key, _get(cfg, key))
    number("probe.train_fraction", cfg.probe.train_fraction, 0, 1, low_open=True)
    number("probe.ridge", cfg.probe.ridge, 0)
    if cfg.mode in CHECKPOINT_MODES and not cfg.checkpoint.path:
        raise ConfigError(f"mode={cfg.mode} needs a checkpoint: add checkpoint=<path to .pt or run dir>")
    if cfg.mode == "train":
        cls, _, _ = typed_agent_configs(cfg.agent, cfg.world_model)
        cls.check_compile(cfg.device.compile)
