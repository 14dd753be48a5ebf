"""Replay storage for agents that learn from sequences (world models)."""

from cpcrl.data.replay import SequenceReplay

__all__ = ["SequenceReplay"]
