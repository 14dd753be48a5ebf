"""Any gymnasium observation space for every agent: the encoding (hand values), the env contract for encoded
spaces (dense final_obs, prev_action, Box envs untouched), `module:EnvId` ids, one training iteration of each
agent on a Discrete- and a Tuple-observation env, checkpoints, and POPGym where it is installed."""

import io
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from cpcrl.collector import Collector, evaluate
from cpcrl.envs.factory import make_gym_env
from cpcrl.envs.spaces import EncodedBox, encode, encode_space
from cpcrl.errors import ConfigError
from cpcrl.objectives.world_model import onehot_nll
from tests.conftest import composed_agent

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

EPISODE = 3  # steps per episode of the test envs


class CueEnv(gym.Env):
    """A memory task in the observation space `kind`: a cue (0/1) is shown at the start, the step count after it;
    the last step (EPISODE) pays 1 for the action equal to the cue. Observations are a function of (cue, t)."""

    SPACES = {
        "discrete": gym.spaces.Discrete(3, start=-1),  # -1, 0: the cue at t = 0; 1: blank after it
        "multidiscrete": gym.spaces.MultiDiscrete([2, EPISODE + 1]),  # (cue, t)
        "tuple": gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Box(-1.0, 1.0, (2,), np.float32),
                                   gym.spaces.MultiBinary(2))),  # (cue, [t/3, -t/3], [t odd, 1])
        "dict": gym.spaces.Dict({"time": gym.spaces.Discrete(EPISODE + 1), "cue": gym.spaces.Discrete(2)}),
    }

    def __init__(self, kind="tuple"):
        self.kind = kind
        self.observation_space = self.SPACES[kind]
        self.action_space = gym.spaces.Discrete(2)

    def obs(self, cue: int, t: int):
        if self.kind == "discrete":
            return cue - 1 if t == 0 else 1
        if self.kind == "multidiscrete":
            return np.array([cue, t], dtype=np.int64)
        if self.kind == "tuple":
            return cue, np.array([t / 3, -t / 3], np.float32), np.array([t % 2, 1], np.int8)
        return {"time": t, "cue": cue}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.cue, self.t = int(self.np_random.integers(2)), 0
        return self.obs(self.cue, 0), {}

    def step(self, action):
        self.t += 1
        done = self.t >= EPISODE
        return self.obs(self.cue, self.t), float(done and int(action) == self.cue), done, False, {}


class MultiActionCue(CueEnv):
    """The cue task acting in MultiDiscrete([2, 3]): the first factor answers the cue, the second is ignored."""

    def __init__(self):
        super().__init__("discrete")
        self.action_space = gym.spaces.MultiDiscrete([2, 3])

    def step(self, action):
        assert np.shape(action) == (2,) and 0 <= action[1] < 3
        return super().step(action[0])


if "cpcrl_test/MultiActionCue-v0" not in gym.registry:
    gym.register("cpcrl_test/MultiActionCue-v0", entry_point=MultiActionCue)
for _kind in CueEnv.SPACES:
    if f"cpcrl_test/Cue-{_kind}-v0" not in gym.registry:
        gym.register(f"cpcrl_test/Cue-{_kind}-v0", entry_point=CueEnv, kwargs={"kind": _kind})


def cue_envs(kind, n=2, **kw):
    return make_gym_env(f"cpcrl_test/Cue-{kind}-v0", n, **kw)


# --- the encoding, by hand ----------------------------------------------------------------------------------

def test_each_space_kind_encodes_to_hand_computed_one_hots():
    S = gym.spaces
    assert encode(S.Discrete(3, start=-1), -1).tolist() == [1, 0, 0]
    assert encode(S.MultiDiscrete([2, 3]), np.array([1, 2])).tolist() == [0, 1, 0, 0, 1]
    assert encode(S.MultiDiscrete([2, 3], start=[1, -1]), np.array([2, -1])).tolist() == [0, 1, 1, 0, 0]
    assert encode(S.MultiBinary(3), np.array([1, 0, 1])).tolist() == [0, 1, 1, 0, 0, 1]
    box = S.Box(-2.0, 2.0, (2, 2), np.float64)  # any shape, flattened in C order
    tup = S.Tuple((S.Discrete(2), box))
    assert encode(tup, (1, np.array([[0.5, -1], [2, 0]]))).tolist() == [0, 1, 0.5, -1, 2, 0]
    nested = S.Dict({"b": S.Discrete(2), "a": S.Tuple((S.MultiBinary(1), S.Discrete(3)))})  # keys sorted: a, b
    assert encode(nested, {"b": 0, "a": (np.array([1]), 2)}).tolist() == [0, 1, 0, 0, 1, 1, 0]


def test_encoded_space_layout_and_bounds():
    S = gym.spaces
    space = encode_space(CueEnv.SPACES["tuple"])
    assert isinstance(space, EncodedBox) and space.shape == (8,) and space.dtype == np.float32
    assert space.parts == [(1, 2), (2, 0), (2, 2)]  # cue one-hot, 2 real values, 2 bits as one-hots of 2
    assert space.low.tolist() == [0, 0, -1, -1, 0, 0, 0, 0] and space.high.tolist() == [1] * 8
    assert encode_space(S.MultiDiscrete([3, 3, 2])).parts == [(2, 3), (1, 2)]  # same class counts merged
    assert encode_space(CueEnv.SPACES["dict"]).parts == [(1, 2), (1, 4)]
    for value in (CueEnv("tuple").obs(1, 2), (0, np.zeros(2, np.float32), np.zeros(2, np.int8))):
        assert space.contains(encode(CueEnv.SPACES["tuple"], value))


def test_unsupported_space_is_one_config_error():
    with pytest.raises(ConfigError, match=r"observation space Text.* is not supported: cpcrl encodes Box, Discrete"):
        encode_space(gym.spaces.Tuple((gym.spaces.Discrete(2), gym.spaces.Text(5))))


# --- the env contract for encoded spaces -------------------------------------------------------------------

def test_box_envs_keep_their_own_observations():
    envs = make_gym_env("CartPole-v1", 2)
    assert type(envs.single_observation_space) is gym.spaces.Box
    obs, _ = envs.reset(seed=4)
    raw = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
    np.testing.assert_array_equal(obs, raw.reset(seed=4)[0])


@pytest.mark.parametrize("kind", ["tuple", "dict", "multidiscrete", "discrete"])
def test_final_obs_is_dense_and_the_next_episode_starts_same_step(kind):
    envs = cue_envs(kind, n=3)
    space, source = envs.single_observation_space, CueEnv.SPACES[kind]
    obs, _ = envs.reset(seed=0)
    cues = [CueEnv(kind) for _ in range(3)]
    for t in range(1, EPISODE + 1):
        obs, _, terminated, truncated, info = envs.step(np.zeros(3, dtype=np.int64))
        assert obs.shape == info["final_obs"].shape == (3, space.shape[0]) and info["final_obs"].dtype == np.float32
        if t < EPISODE:
            np.testing.assert_array_equal(info["final_obs"], obs)
    assert terminated.all() and not truncated.any()
    for i in range(3):  # the last obs of the old episode in final_obs, the new episode's first in obs
        last = [encode(source, cues[i].obs(c, EPISODE)) for c in (0, 1)]
        first = [encode(source, cues[i].obs(c, 0)) for c in (0, 1)]
        assert any(np.array_equal(info["final_obs"][i], x) for x in last)
        assert any(np.array_equal(obs[i], x) for x in first)


def test_prev_action_extends_the_layout():
    envs = cue_envs("tuple", n=2, prev_action=True)
    space = envs.single_observation_space
    assert space.shape == (10,) and space.parts == [(1, 2), (2, 0), (3, 2)]  # the action one-hot joins the bits
    obs, _ = envs.reset(seed=0)
    assert obs[:, 8:].sum() == 0
    obs, *_ = envs.step(np.array([1, 0]))
    assert obs[:, 8:].tolist() == [[0, 1], [1, 0]]


def test_bad_space_settings_are_one_line():
    with pytest.raises(ConfigError, match=r"env.observe picks entries of a flat Box observation.*env.observe=null"):
        cue_envs("tuple", observe=[0])


def test_module_colon_id_imports_the_module_first():
    envs = make_gym_env("tests.test_spaces:cpcrl_test/Cue-discrete-v0", 1)
    assert envs.single_observation_space.parts == [(1, 3)]
    with pytest.raises(ConfigError, match=r"module 'no_such_pkg_xyz' \(from env.id=no_such_pkg_xyz.envs:Foo-v0\) "
                                          r"is not installed: pip install no_such_pkg_xyz"):
        make_gym_env("no_such_pkg_xyz.envs:Foo-v0", 1)


# --- the world models' decoder reconstructs the layout -------------------------------------------------------

def test_layout_nll_is_cross_entropy_plus_unit_gaussian_by_hand():
    logits = torch.tensor([[0.0, np.log(3.0), 0.5, -1.0]])
    target = torch.tensor([[0.0, 1.0, 1.5, 0.0]])  # one-hot of 2 (class 1, p = 3/4), then 2 real values
    expected = -np.log(0.75) + 0.5 * (1.0 ** 2 + 1.0 ** 2)
    assert onehot_nll(logits, target, [(1, 2), (2, 0)]).item() == pytest.approx(expected, rel=1e-6)


# --- every agent on a Discrete- and a Tuple-observation env --------------------------------------------------

TINY_WM = ["world_model.deter=16", "world_model.hidden=16", "world_model.stoch=4", "world_model.latents=2",
           "world_model.classes=2", "world_model.encoder.hidden=16", "world_model.decoder.hidden=16",
           "world_model.heads.hidden=16"]
AGENTS = {
    "reinforce": (["agent=reinforce"], {"hidden": [16]}),
    "ppo_lstm": (["agent=ppo_lstm", "world_model.hidden=16", "world_model.lstm_hidden=8"],
                 {"num_steps": 8, "truncation_length": 4, "update_epochs": 1}),
    "cpc_rl": (["agent=cpc_rl", "world_model.hidden=16", "world_model.lstm_hidden=8"],
               {"num_steps": 8, "truncation_length": 4, "update_epochs": 1, "cpc": {"horizon": 2}}),
    "planet": (["agent=planet", "world_model=rssm_gaussian", *TINY_WM],
               {"seed_episodes": 2, "collect_interval": 1, "batch_size": 2, "seq_len": 4, "seed": 0,
                "planner": {"horizon": 2, "candidates": 8, "top_k": 2, "iterations": 1}}),
    "dreamer": (["agent=dreamer", "agent/dreamer_version=v3", "world_model=rssm_discrete", *TINY_WM],
                {"batch_size": 2, "seq_len": 4, "horizon": 2, "prefill": 8, "train_ratio": 8, "seed": 0}),
    "random": (["agent=random"], {"rollout_steps": 4}),
}


def tiny(name, envs):
    torch.manual_seed(0)
    overrides, params = AGENTS[name]
    return composed_agent(envs.single_observation_space, envs.single_action_space, *overrides, **params)


@pytest.mark.parametrize("kind", ["discrete", "tuple"])
@pytest.mark.parametrize("name", list(AGENTS))
def test_every_agent_trains_and_checkpoints_on_encoded_observations(name, kind):
    envs = cue_envs(kind, n=2)
    agent = tiny(name, envs)
    if name in ("planet", "dreamer"):  # the decoder scores the space's own layout
        assert agent.onehot_groups == envs.single_observation_space.parts
    collector = Collector(envs, torch.device("cpu"), seed=0)
    metrics = {}
    for _ in range(4):
        metrics = {**metrics, **agent.train_iteration(collector)}
    assert all(np.isfinite(v) for v in metrics.values())
    if name in ("planet", "dreamer"):
        assert np.isfinite(metrics["loss/reconstruction"])
    buf = io.BytesIO()
    torch.save(agent.checkpoint_state(), buf)
    buf.seek(0)
    fresh = tiny(name, envs)
    fresh.load_checkpoint_state(torch.load(buf, weights_only=True))
    for a, b in zip(agent.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert np.isfinite(evaluate(fresh, envs, 2)["eval/return_mean"])
    envs.close()


# --- MultiDiscrete actions: a factorised categorical ---------------------------------------------------------

def test_factorised_log_prob_entropy_and_masks_by_hand():
    from cpcrl.nets.distributions import FactorisedCategorical

    logits = torch.log(torch.tensor([[0.25, 0.75, 0.2, 0.3, 0.5]]))  # factor 0: [1/4, 3/4]; factor 1: [.2, .3, .5]
    dist = FactorisedCategorical(logits, [2, 3])
    assert dist.log_prob(torch.tensor([[1, 2]])).item() == pytest.approx(np.log(0.75 * 0.5), rel=1e-6)
    entropy = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75)) - sum(p * np.log(p) for p in (0.2, 0.3, 0.5))
    assert dist.entropy().item() == pytest.approx(entropy, rel=1e-6)
    assert dist.mode.tolist() == [[1, 2]] and dist.sample().shape == (1, 2)
    masked = FactorisedCategorical(logits, [2, 3], torch.tensor([[True, True, True, True, False]]))
    assert masked.log_prob(torch.tensor([[0, 1]])).item() == pytest.approx(np.log(0.25 * 0.3 / 0.5), rel=1e-6)
    assert (masked.sample((100,))[..., 1] != 2).all()


@pytest.mark.parametrize("name", ["reinforce", "ppo_lstm", "cpc_rl"])
def test_multidiscrete_actions_train(name):
    envs = make_gym_env("cpcrl_test/MultiActionCue-v0", 2, prev_action=True)
    assert envs.single_observation_space.parts == [(1, 3), (1, 2), (1, 3)]  # obs one-hot, one per action factor
    agent = tiny(name, envs)
    collector = Collector(envs, torch.device("cpu"), seed=0)
    metrics = agent.train_iteration(collector)
    assert np.isfinite(metrics["loss/policy"])
    action, _ = agent.act(collector.obs_tensor(), agent.initial_state(2), torch.ones(2, dtype=torch.bool))
    assert action.shape == (2, 2) and action.dtype == torch.long
    assert np.isfinite(evaluate(agent, envs, 2)["eval/return_mean"])


# --- POPGym (optional extra) -------------------------------------------------------------------------------

def test_popgym_missing_is_one_line_naming_the_extra(monkeypatch):
    from tests.test_envs import env_from

    monkeypatch.setitem(sys.modules, "popgym", None)  # import popgym -> ModuleNotFoundError
    with pytest.raises(ConfigError, match=r"env=popgym needs the popgym package.*pip install 'cpcrl\[popgym\]'"):
        env_from("env=popgym")
    with pytest.raises(ConfigError, match=r"module 'popgym' .* is not installed: pip install 'cpcrl\[popgym\]'"):
        make_gym_env("popgym:popgym-RepeatPreviousEasy-v0", 1)


def test_popgym_tasks_by_class_name():
    pytest.importorskip("popgym")
    from tests.test_envs import env_from

    envs = env_from("env=popgym", "env.task=AutoencodeEasy", "env.num_envs=2")
    assert envs.single_observation_space.parts == [(1, 2), (1, 4)]  # Tuple(Discrete(2), Discrete(4))
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, 6) and set(obs.sum(1).tolist()) == {2.0}
    agent = tiny("ppo_lstm", envs)
    metrics = agent.train_iteration(Collector(envs, torch.device("cpu"), seed=0))
    assert np.isfinite(metrics["loss/policy"])
    with pytest.raises(ConfigError, match=r"env.task='RepeatPrevious': valid are AutoencodeEasy, .*RepeatPreviousEasy"):
        env_from("env=popgym", "env.task=RepeatPrevious")
