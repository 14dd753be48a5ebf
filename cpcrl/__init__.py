"""cpcrl: reinforcement learning with recurrent belief states (CPC+RL, recurrent PPO, PlaNet, Dreamer)."""

__version__ = "0.1.0"
