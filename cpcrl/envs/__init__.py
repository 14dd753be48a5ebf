"""Environments: the 2x2 cube (native batched), gymnasium tasks and POMDP wrappers."""

import gymnasium

if "cpcrl/Cube2x2-v0" not in gymnasium.registry:
    gymnasium.register(id="cpcrl/Cube2x2-v0", entry_point="cpcrl.envs.cube2x2:Cube2x2Env")
if "cpcrl/TMaze-v0" not in gymnasium.registry:
    gymnasium.register(id="cpcrl/TMaze-v0", entry_point="cpcrl.envs.tmaze:TMazeEnv")
