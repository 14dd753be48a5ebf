"""Checks of config values, written once: each names the one bad key, its value and what is valid (ConfigError).

Hyper-parameters are dataclasses (`Params` below; Hydra stores them as the schema of each yaml, so types are
enforced on the command line too). A field declares its check next to its default:

    lr: float = param(1e-3, positive)           # learning rate
    num_steps: int = param(64, positive_int)    # rollout steps per env

and `Params.__post_init__` runs every field's check under the field's full key (`agent.lr`), then `check()`
for rules between fields. Constructing the dataclass is validating it: the CLI does it before any run dir is
made (`cpcrl.config.validate`), the agent receives the checked object.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import field, fields
from functools import partial
from typing import Any, ClassVar

from omegaconf import MISSING

from cpcrl.errors import ConfigError

Check = Callable[[str, Any], Any]


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy integers too


def integer(key: str, value, low: int | None = 1, high: int | None = None, optional: bool = False):
    """An int in low..high (None: unbounded); None passes when `optional`."""
    if value is None and optional:
        return None
    if not _is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        if high is not None:
            want = f"in {low}..{high}"
        else:
            want = {1: "a positive integer", 0: "a non-negative integer", None: "an integer"}.get(low,
                                                                                                f"an integer >= {low}")
        raise ConfigError(f"{key}={value!r}: must be {want}{' or null' if optional else ''}")
    return int(value)


def number(key: str, value, low: float | None = None, high: float | None = None, low_open: bool = False,
           optional: bool = False, unit: str = ""):
    """A finite number in [low, high] (`low_open`: (low, high]); None passes when `optional`."""
    if value is None and optional:
        return None
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (low is None or (value > low if low_open else value >= low)) and (high is None or value <= high))
    if not ok:
        if low == 0 and high is None:
            want = "a positive number" if low_open else "a non-negative number"
        elif high is None:
            want = f"a number {'>' if low_open else '>='} {low}" if low is not None else "a number"
        else:
            want = f"in {'(' if low_open else '['}{low}, {high}]"
        unit = f" of {unit}" if unit and high is None else ""
        raise ConfigError(f"{key}={value!r}: must be {want}{unit}{' or null' if optional else ''}")
    return value


def choice(key: str, value, valid: Sequence):
    """One of `valid`."""
    if value not in valid:
        raise ConfigError(f"{key}={value!r}: valid are {', '.join(map(str, valid))}")
    return value


def boolean(key: str, value):
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: must be true or false")
    return value


def positive_ints(key: str, value):
    """A non-empty list of positive integers (layer widths)."""
    if not isinstance(value, (list, tuple)) or not value or not all(_is_int(v) and v > 0 for v in value):
        raise ConfigError(f"{key}={value!r}: must be a non-empty list of positive integers")
    return list(value)


positive_int = partial(integer, low=1)
optional_positive_int = partial(integer, low=1, optional=True)
non_negative_int = partial(integer, low=0)
positive = partial(number, low=0, low_open=True)
optional_positive = partial(number, low=0, low_open=True, optional=True)
non_negative = partial(number, low=0)
unit_interval = partial(number, low=0, high=1)
optional_unit_interval = partial(number, low=0, high=1, optional=True)


def one_of(*valid) -> Check:
    return partial(choice, valid=valid)


def param(default=MISSING, check: Check | None = None, *, factory=None):
    """A dataclass field with its check; `factory` for mutable defaults (lists). The default MISSING ('???') is a
    value a preset must give (Hydra refuses to run without it)."""
    meta = {"check": check} if check else {}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _unresolved(value) -> bool:
    return isinstance(value, str) and (value == MISSING or value.startswith("${"))


class Params:
    """Mixin for hyper-parameter dataclasses: runs each field's check, then `check()` (rules between fields).
    `key` is where the dataclass lives in the composed config (`agent`, `world_model.kl`, ...)."""

    key: ClassVar[str] = "agent"

    def __post_init__(self):
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if any(_unresolved(v) for v in values.values()):
            return  # a schema default (MISSING, ${...}); `cpcrl.config.typed` builds it from resolved values
        for f in fields(self):
            check = f.metadata.get("check")
            if check is not None:
                object.__setattr__(self, f.name, check(f"{self.key}.{f.name}", values[f.name]))
        self.check()

    def check(self) -> None:
        """Rules that involve several fields; raise ConfigError naming the keys."""
