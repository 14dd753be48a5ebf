"""Configs composed with Hydra's compose API, and the checks that reject bad input before any run starts."""

import pytest
from hydra import compose, initialize_config_module

from cpcrl.config import validate
from cpcrl.errors import ConfigError
from tests.conftest import cpcrl

GROUPS = {"agent": ["reinforce"], "env": ["cube2x2", "cartpole", "cartpole_pomdp", "pendulum", "pendulum_pomdp", "gym"],
          "device": ["auto", "cpu", "cuda"], "logger": ["wandb", "none"]}


def compose_cfg(*overrides):
    with initialize_config_module(config_module="cpcrl.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in GROUPS.items() for o in opts])
def test_every_option_composes_and_validates(group, option):
    import torch

    cfg = compose_cfg(f"{group}={option}")
    if option == "cuda" and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device=cuda but no CUDA GPU"):
            validate(cfg)
    else:
        validate(cfg)
    if group == "env":
        assert cfg.env.name == (option if option != "gym" else "CartPole-v1")


def test_common_keys_exist():
    cfg = compose_cfg()
    for key in ("seed", "mode", "resume", "train.total_steps", "eval.every", "eval.episodes", "checkpoint.every",
                "checkpoint.path", "env.num_envs"):
        node = cfg
        for part in key.split("."):
            assert part in node, key
            node = node[part]


def test_pomdp_presets_drop_velocities():
    assert list(compose_cfg("env=cartpole_pomdp").env.observe) == [0, 2]
    assert list(compose_cfg("env=pendulum_pomdp").env.observe) == [0, 1]


@pytest.mark.parametrize("override,message", [
    ("train.total_steps=-5", "train.total_steps=-5: must be a positive integer"),
    ("env.num_envs=0", "env.num_envs=0: must be a positive integer"),
    ("env.scramble_depth=-1", "env.scramble_depth=-1: must be a non-negative integer"),
    ("mode=fit", "mode='fit': valid are train, eval"),
    ("eval.episodes=0", "eval.episodes=0: must be a positive integer"),
    ("mode=eval", "mode=eval needs a checkpoint"),
    ("train.max_minutes=0", "train.max_minutes=0: must be a positive number of minutes or null"),
    ("train.max_minutes=soon", "train.max_minutes='soon': must be a positive number"),
])
def test_validate_rejects_bad_values(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        validate(compose_cfg(override))


@pytest.mark.parametrize("args,needle", [
    (["agent=nope"], "Could not find 'agent/nope' Available options in 'agent':"),
    (["train.nope=1"], "Key 'nope' is not in struct"),
    (["train.total_steps=abc"], "train.total_steps='abc': must be a positive integer"),
    (["env.scramble_depth=-2"], "env.scramble_depth=-2"),
    (["env.num_envs=0"], "env.num_envs=0"),
    (["device=cuda"], None),  # only an error where there is no GPU; checked below
    (["mode=eval", "checkpoint=missing.pt"], "checkpoint missing.pt does not exist"),
    (["-m", "seed=0,1", "agent=reinforce,nope"], "Could not find 'agent/nope'"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, args, needle):
    import torch

    if needle is None:
        if torch.cuda.is_available():
            pytest.skip("a GPU is visible")
        needle = "device=cuda but no CUDA GPU is visible"
        args = args + ["train.total_steps=64", "logger=none"]
    proc = cpcrl(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cpcrl: error: "), proc.stderr
    assert needle in lines[0]
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.json"))
    assert not any(p.is_dir() for p in (tmp_path / "outputs").rglob("*")) if (tmp_path / "outputs").exists() else True


def test_env_name_of_a_module_colon_id_is_one_path_component():
    # env.name names the run dir (hydra.run.dir): a `module:EnvId` id must not put a ':' or '/' into it
    assert compose_cfg("env=gym", "env.id=popgym:popgym-RepeatPreviousEasy-v0").env.name == \
        "popgym-popgym-RepeatPreviousEasy-v0"
    assert compose_cfg("env=gym", "env.id=pkg.sub/Task-v1").env.name == "pkg.sub-Task-v1"
