"""Checks on a composed config that Hydra cannot make: values, and which parts fit together."""

from __future__ import annotations

import hashlib

import hydra
from omegaconf import DictConfig, OmegaConf

from cpcrl.device import check_device
from cpcrl.errors import ConfigError

MODES = ("train", "eval")
DIRNAME_LIMIT = 120


def short_dirname(name: str) -> str:
    """A sweep job's dir name from its overrides, cut past DIRNAME_LIMIT chars and made unique by a hash of the
    whole: an Optuna trial's eight float overrides alone exceed the 255-byte limit on a file name."""
    if len(name) <= DIRNAME_LIMIT:
        return name
    return f"{name[: DIRNAME_LIMIT - 9]}~{hashlib.sha1(name.encode()).hexdigest()[:8]}"


# Used by hydra.sweep.subdir in conf/config.yaml; registered on import, before anything composes the config.
OmegaConf.register_new_resolver("cpcrl.short_dirname", short_dirname, replace=True)


def _positive(cfg: DictConfig, key: str, allow_zero: bool = False) -> None:
    value = cfg
    for part in key.split("."):
        value = value[part]
    ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        want = "a non-negative integer" if allow_zero else "a positive integer"
        raise ConfigError(f"{key}={value!r}: must be {want}")


def validate(cfg: DictConfig) -> None:
    if cfg.mode not in MODES:
        raise ConfigError(f"mode={cfg.mode!r}: valid are {', '.join(MODES)}")
    if not isinstance(cfg.seed, int) or isinstance(cfg.seed, bool) or cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed!r}: must be a non-negative integer")
    for key in ("train.total_steps", "train.log_every", "eval.episodes", "eval.num_envs", "env.num_envs"):
        _positive(cfg, key)
    for key in ("eval.every", "checkpoint.every", "checkpoint.keep"):
        _positive(cfg, key, allow_zero=True)
    if "scramble_depth" in cfg.env:
        _positive(cfg, "env.scramble_depth", allow_zero=True)
        _positive(cfg, "env.max_steps")
    for d in cfg.eval.depths:
        if not isinstance(d, int) or d < 0:
            raise ConfigError(f"eval.depths={list(cfg.eval.depths)}: must be non-negative integers")
    check_device(cfg.device)
    m = cfg.train.get("max_minutes")
    if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or m <= 0):
        raise ConfigError(f"train.max_minutes={m!r}: must be a positive number of minutes or null (no limit)")
    k = cfg.eval.get("reset_hidden_every")
    if k is not None and (not isinstance(k, int) or k <= 0):
        raise ConfigError(f"eval.reset_hidden_every={k!r}: must be a positive integer or null")
    if cfg.mode == "eval" and not cfg.checkpoint.path:
        raise ConfigError("mode=eval needs a checkpoint: add checkpoint=<path to .pt or run dir>")
    if cfg.mode == "train":
        try:
            cls = hydra.utils.get_class(cfg.agent._target_)
        except Exception as e:
            raise ConfigError(f"agent._target_={cfg.agent._target_!r} cannot be imported: {e}") from None
        if cfg.world_model.name not in cls.world_models:
            raise ConfigError(f"agent={cfg.agent.name} does not fit world_model={cfg.world_model.name}: "
                              f"valid are {', '.join(cls.world_models)}")
