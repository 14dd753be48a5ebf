"""Planners that search action sequences in a learned latent model."""

from cpcrl.planning.cem import CEMConfig, cem_categorical, cem_continuous

__all__ = ["CEMConfig", "cem_categorical", "cem_continuous"]
