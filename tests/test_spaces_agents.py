"""The spaces of issue 16 that reach into the agents: MultiDiscrete actions for dreamer (v1, v3), planet (categorical
CEM per factor) and random, per-factor action masks, `env.prev_action` on every action space for every agent,
`train/mmer` (by hand, and across a resume), and Tuple observations with an image component (the conv encoder and
decoder inside the layout for planet and dreamer, a one-line refusal for the model-free agents)."""

import io

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from gymnasium.vector import AutoresetMode

from cpcrl.collector import Collector, evaluate
from cpcrl.envs.factory import make_gym_env
from cpcrl.envs.spaces import IMAGE, IMAGE_SIZE, encode, encode_space, image_slices
from cpcrl.envs.wrappers import DenseFinalObs
from cpcrl.errors import ConfigError
from cpcrl.nets.codecs import ConvDecoder, ConvEncoder, PartsDecoder, PartsEncoder
from cpcrl.objectives.world_model import onehot_nll
from cpcrl.planning import CEMConfig, cem_categorical
from cpcrl.train import max_mean_return
from tests.conftest import composed_agent
from tests.test_spaces import AGENTS, EPISODE, TINY_WM, CueEnv

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CPU = torch.device("cpu")
NVEC = [2, 3]

# the agents of tests/test_spaces.py, and Dreamer in both versions
MODEL_BASED = {
    "dreamer_v1": (["agent=dreamer", "agent/dreamer_version=v1", "world_model=rssm_gaussian", *TINY_WM],
                   AGENTS["dreamer"][1]),
    "dreamer_v3": AGENTS["dreamer"],
    "planet": AGENTS["planet"],
}
ALL = {**MODEL_BASED, **{k: v for k, v in AGENTS.items() if k != "dreamer"}}


def tiny(name, obs_space, action_space, **params):
    torch.manual_seed(0)
    overrides, base = ALL[name]
    return composed_agent(obs_space, action_space, *overrides, **{**base, **params})


def tiny_for(name, envs, **params):
    return tiny(name, envs.single_observation_space, envs.single_action_space, **params)


class ActionCue(CueEnv):
    """The cue task (Discrete observation) acting in `action`: MultiDiscrete([2, 3]) (the first factor answers the
    cue) or Box(-1, 1, (2,)) (the sign of the first value answers it)."""

    def __init__(self, action="multidiscrete"):
        super().__init__("discrete")
        self.action_space = (gym.spaces.MultiDiscrete(NVEC) if action == "multidiscrete"
                             else gym.spaces.Box(-1.0, 1.0, (2,), np.float32))

    def step(self, action):
        assert self.action_space.contains(np.asarray(action, dtype=self.action_space.dtype)), action
        if isinstance(self.action_space, gym.spaces.MultiDiscrete):
            return super().step(action[0])
        return super().step(int(action[0] > 0))


class MaskedMultiEnv(gym.Env):
    """MultiDiscrete([3, 4]) actions with a random legal subset per factor at every step (`info["action_mask"]`,
    the factors' masks concatenated, never empty per factor); a masked action is an error. 4-step episodes."""

    nvec = [3, 4]

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
        self.action_space = gym.spaces.MultiDiscrete(self.nvec)

    def _mask(self):
        parts = []
        for k in self.nvec:
            m = self.np_random.random(k) < 0.5
            m[self.np_random.integers(k)] = True
            parts.append(m)
        self.masks = parts
        return np.concatenate(parts)

    def _obs(self):
        return np.array([self.t / 4, float(self.masks[0][0]), float(self.masks[1][0])], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        mask = self._mask()
        return self._obs(), {"action_mask": mask}

    def step(self, action):
        for i, m in enumerate(self.masks):
            if not m[int(action[i])]:
                raise AssertionError(f"masked action {action} taken (factor {i}: mask {m})")
        self.t += 1
        mask = self._mask()
        return self._obs(), float(action[0] == 0), self.t >= 4, False, {"action_mask": mask}


class ImageCue(CueEnv):
    """The cue task observing Tuple(3x64x64 uint8 frame, Discrete(4)): the frame is bright at the cue's half at
    t = 0 (dark after), the Discrete part is the step count."""

    def __init__(self):
        super().__init__("discrete")
        self.observation_space = gym.spaces.Tuple((gym.spaces.Box(0, 255, (3, 64, 64), np.uint8),
                                                   gym.spaces.Discrete(EPISODE + 1)))

    def obs(self, cue, t):
        frame = np.zeros((3, 64, 64), np.uint8)
        if t == 0:
            frame[:, :, 32 * cue:32 * cue + 32] = 200
        return frame, t


for _id, _entry in (("MultiCue", lambda: ActionCue("multidiscrete")), ("BoxCue", lambda: ActionCue("box")),
                    ("ImageCue", ImageCue)):
    if f"cpcrl_test/{_id}-v0" not in gym.registry:
        gym.register(f"cpcrl_test/{_id}-v0", entry_point=_entry)


def action_envs(kind, n=2, **kw):
    return make_gym_env({"discrete": "cpcrl_test/Cue-discrete-v0", "multidiscrete": "cpcrl_test/MultiCue-v0",
                         "box": "cpcrl_test/BoxCue-v0"}[kind], n, **kw)


def masked_envs(n=2):
    return DenseFinalObs(gym.vector.SyncVectorEnv([MaskedMultiEnv for _ in range(n)],
                                                  autoreset_mode=AutoresetMode.SAME_STEP))


def round_trip(agent, make):
    """A fresh agent (`make()`) loaded from `agent`'s checkpoint state through torch.save / weights_only load."""
    buf = io.BytesIO()
    torch.save(agent.checkpoint_state(), buf)
    buf.seek(0)
    fresh = make()
    fresh.load_checkpoint_state(torch.load(buf, weights_only=True))
    return fresh


# --- Dreamer's factorised actor, by hand --------------------------------------------------------------------

@pytest.mark.parametrize("version", ["v1", "v3"])
def test_dreamer_factorised_policy_by_hand(version):
    envs = action_envs("multidiscrete")
    agent = tiny(f"dreamer_{version}", envs.single_observation_space, envs.single_action_space)
    assert agent.action_dim == 5 and agent.actor.factors == NVEC and agent.backprop == (version == "v1")
    unimix = agent.cfg.unimix
    assert unimix == (0.01 if version == "v3" else 0.0)
    out = torch.tensor([[0.3, -0.2, 1.0, 0.0, -1.0]])
    policy = agent.actor.policy(out)
    # each factor: (1 - unimix) softmax + unimix / classes, its own (v3's unimix per factor)
    p0 = (1 - unimix) * torch.softmax(out[0, :2], -1) + unimix / 2
    p1 = (1 - unimix) * torch.softmax(out[0, 2:], -1) + unimix / 3
    action = torch.tensor([[0.0, 1.0, 0.0, 0.0, 1.0]])  # factor 0 -> 1, factor 1 -> 2
    assert policy.log_prob(action).item() == pytest.approx((p0[1].log() + p1[2].log()).item(), rel=1e-5)
    entropy = -(p0 * p0.log()).sum() - (p1 * p1.log()).sum()
    assert policy.entropy().item() == pytest.approx(entropy.item(), rel=1e-5)
    assert policy.mode.tolist() == [[1.0, 0.0, 1.0, 0.0, 0.0]]
    # straight-through per factor: an exact one-hot in each factor, the gradient of both factors' probs
    logits = out.repeat(64, 1).requires_grad_()
    sample = agent.actor.policy(logits).rsample()
    assert sample.split(NVEC, -1)[0].sum(-1).eq(1).all() and sample.split(NVEC, -1)[1].sum(-1).eq(1).all()
    (sample * torch.arange(5.0)).sum().backward()
    assert logits.grad[:, :2].abs().sum() > 0 and logits.grad[:, 2:].abs().sum() > 0
    # a per-factor mask: factor 1's class 2 impossible, the others renormalised in that factor only
    mask = torch.tensor([[True, True, True, True, False]])
    masked = agent.actor.policy(out, mask)
    q1 = p1[:2] / p1[:2].sum()
    assert masked.log_prob(torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0]])).item() == pytest.approx(
        (p0[0].log() + q1[1].log()).item(), rel=1e-5)
    assert (masked.rsample() * ~mask).sum() == 0


# --- MultiDiscrete actions: every model-based agent and random trains, checkpoints, honours masks --------------

@pytest.mark.parametrize("name", ["dreamer_v1", "dreamer_v3", "planet", "random"])
def test_multidiscrete_actions_train_and_round_trip(name):
    envs = action_envs("multidiscrete")
    agent = tiny_for(name, envs)
    collector = Collector(envs, CPU, seed=0)
    metrics = agent.train_iteration(collector)
    assert all(np.isfinite(v) for v in metrics.values())
    if name != "random":
        assert np.isfinite(metrics["loss/model"]) and agent.rssm.action_dim == 5
        assert agent.replay.data["action"][: len(agent.replay)].sum(-1).max() == 2  # one one-hot per factor
    else:
        assert metrics["train/valid_actions"] == 6  # 2 x 3 joint actions
    obs, first = collector.obs_tensor(), torch.ones(2, dtype=torch.bool)
    action, _ = agent.act(obs, agent.initial_state(2), first)
    assert action.shape == (2, 2) and action.dtype == torch.long and (action < torch.tensor(NVEC)).all()
    fresh = round_trip(agent, lambda: tiny_for(name, envs))
    for explore in (True, False):
        torch.manual_seed(1)
        mine, _ = agent.act(obs, agent.initial_state(2), first, explore=explore)
        torch.manual_seed(1)
        theirs, _ = fresh.act(obs, fresh.initial_state(2), first, explore=explore)
        assert torch.equal(mine, theirs)
    assert np.isfinite(evaluate(fresh, envs, 2)["eval/return_mean"])
    refusal = (r"agent=planet has no policy to search over" if name == "planet" else  # no policy at all
               rf"agent={agent.name}: policy scores \(mode=solve's beam search\) need a Discrete action space, the "
               r"env has MultiDiscrete\(\[2 3\]\)")
    with pytest.raises(ConfigError, match=refusal):
        agent.policy_scores(obs, None, first)
    envs.close()


@pytest.mark.parametrize("name", ["dreamer_v1", "dreamer_v3", "planet", "random"])
def test_multidiscrete_action_masks_are_honoured_per_factor(name):
    envs = masked_envs()  # the env raises on any masked action
    agent = tiny_for(name, envs)
    if name == "planet":  # random seed episodes, then planning (+ epsilon-random per factor)
        agent.train_iteration(Collector(envs, CPU, seed=0))
    else:  # dreamer: uniform prefill, then the (v1: epsilon-greedy per factor) policy
        collector = Collector(envs, CPU, seed=0)
        for _ in range(6):
            agent.train_iteration(collector)
    evaluate(agent, envs, 4, greedy=False)
    mask = torch.tensor([[True, False, False, False, True, True, False]] * 200)
    if name != "random":  # uniform and epsilon-random actions stay inside each factor's mask
        noisy = agent.explore(agent.uniform_action(200, mask), mask, 0.5)
        index = agent.env_action(noisy)
        assert (index[:, 0] == 0).all() and set(index[:, 1].tolist()) == {1, 2}
    else:
        index, _ = agent.act(torch.zeros(200, 3), None, None, mask)
        assert (index[:, 0] == 0).all() and set(index[:, 1].tolist()) == {1, 2}
        assert agent.valid_actions(mask[:2]) == 2.0  # 1 x 2 joint actions
    with pytest.raises(ConfigError, match=r"the env's action mask has width 4 but the action space "
                                          r"MultiDiscrete\(\[3 4\]\) has 7 actions"):
        agent.act(torch.zeros(2, 3), None, torch.ones(2, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool))
    envs.close()


def test_random_agent_is_uniform_per_factor():
    envs = action_envs("multidiscrete")
    agent = tiny_for("random", envs)
    torch.manual_seed(0)
    actions, _ = agent.act(torch.zeros(6000, 3), None, None)
    for factor, k in enumerate(NVEC):
        counts = torch.bincount(actions[:, factor], minlength=k).float() / 6000
        assert torch.allclose(counts, torch.full((k,), 1 / k), atol=0.03)


def test_categorical_cem_plans_each_factor():
    torch.manual_seed(0)
    nvec = [3, 2]
    best = torch.tensor([[[2, 1], [0, 0], [1, 1]], [[1, 0], [2, 1], [0, 1]]])  # [B, H, F]
    target = torch.cat([F.one_hot(best[..., 0], 3), F.one_hot(best[..., 1], 2)], -1).float()  # [B, H, 5]
    calls = []

    def score(candidates):  # [B, N, H, 5] -> the number of (step, factor) choices equal to best
        calls.append(candidates.shape)
        return (candidates * target[:, None]).sum((-2, -1))

    probs = cem_categorical(score, 2, nvec, CEMConfig(3, 300, 30, 5))
    assert probs.shape == (2, 3, 5) and calls == [(2, 300, 3, 5)] * 5
    for i, f in enumerate(probs.split(nvec, -1)):  # each factor's slice is a distribution of its own
        torch.testing.assert_close(f.sum(-1), torch.ones(2, 3))
        assert torch.equal(f.argmax(-1), best[..., i])
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, 2] = mask[:, 4] = False  # the best first choice of env 0 is illegal in both factors
    probs = cem_categorical(score, 2, nvec, CEMConfig(3, 300, 30, 5), first_mask=mask)
    assert (probs[:, 0][~mask] == 0).all()
    torch.testing.assert_close(probs[:, 0, :3].sum(-1), torch.ones(2))
    assert torch.equal(probs[:, 1:, :3].argmax(-1), best[:, 1:, 0])


# --- env.prev_action: every action space, every agent ---------------------------------------------------------

def test_prev_action_values_for_each_action_space():
    for kind, width, taken, expected in (("discrete", 2, np.array([1, 0]), [[0, 1], [1, 0]]),
                                         ("multidiscrete", 5, np.array([[1, 2], [0, 0]]),
                                          [[0, 1, 0, 0, 1], [1, 0, 1, 0, 0]]),
                                         ("box", 2, np.array([[0.5, -3.0], [-0.25, 0.0]], np.float32),
                                          [[0.5, -1.0], [-0.25, 0.0]])):  # as given, clipped to the box
        envs = action_envs(kind, prev_action=True)
        assert envs.single_observation_space.shape == (3 + width,)
        obs, _ = envs.reset(seed=0)
        assert (obs[:, 3:] == 0).all()  # nothing taken yet
        for t in range(EPISODE):
            obs, *_, info = envs.step(taken)
            if t < EPISODE - 1:
                assert obs[:, 3:].tolist() == expected, kind
        assert info["final_obs"][:, 3:].tolist() == expected and (obs[:, 3:] == 0).all()  # a new episode: zeros
        envs.close()


@pytest.mark.parametrize("kind", ["discrete", "multidiscrete", "box"])
@pytest.mark.parametrize("name", ["reinforce", "ppo_lstm", "cpc_rl", "planet", "dreamer_v3", "random"])
def test_prev_action_for_every_agent_and_action_space(name, kind):
    envs = action_envs(kind, prev_action=True)
    agent = tiny_for(name, envs)
    metrics = agent.train_iteration(Collector(envs, CPU, seed=0))
    assert all(np.isfinite(v) for v in metrics.values())
    assert np.isfinite(evaluate(agent, envs, 2)["eval/return_mean"])
    envs.close()


# --- train/mmer ----------------------------------------------------------------------------------------------

def test_mmer_by_hand():
    batches = [[], [1.0, 3.0], [], [0.0], [5.0, -1.0, 5.0], [-4.0]]  # the returns ended in each iteration
    mmer, seen = None, []
    for returns in batches:
        mmer = max_mean_return(mmer, sum(returns), len(returns))
        seen.append(mmer)
    assert seen == [None, 2.0, 2.0, 2.0, 3.0, 3.0]  # means 2, -, 0, 3, -4; iterations without an end skipped


def test_collector_hands_out_the_returns_ended_since_the_last_call():
    envs = make_gym_env("cpcrl_test/Cue-discrete-v0", 3)
    collector = Collector(envs, CPU, seed=0)
    cue_zero = collector.obs[:, 0] == 1  # Discrete(3, start=-1): -1 (index 0) is cue 0 at t = 0
    for _ in range(EPISODE):
        assert collector.take_ended() == (0.0, 0)
        collector.step(np.zeros(3, dtype=np.int64))  # action 0 pays 1 where the cue is 0
    assert collector.take_ended() == (float(cue_zero.sum()), 3) and collector.take_ended() == (0.0, 0)


def test_mmer_is_logged_and_survives_resume(tmp_path):
    import json

    from omegaconf import OmegaConf
    from rich.console import Console

    from cpcrl.agents import compose_config
    from cpcrl.checkpoint import load_checkpoint, save_checkpoint
    from cpcrl.train import TrainingRun, train

    def config(total, resume=None):
        cfg = compose_config("agent=random", "agent.rollout_steps=4", "env=gym", "env.id=cpcrl_test/Cue-discrete-v0",
                             "env.num_envs=2", f"train.total_steps={total}", "train.log_every=8",
                             "eval.every=0", "eval.episodes=2", "eval.num_envs=2", "checkpoint.every=16",
                             "logger=none", "device=cpu", "seed=0")
        OmegaConf.update(cfg, "resume", resume and str(resume), force_add=True)
        return cfg

    def resumed(run_dir, total):  # the training run a resume builds, before its first iteration
        return TrainingRun(config(total, run_dir), run_dir, CPU, Console(quiet=True))

    first = tmp_path / "first"
    first.mkdir()
    summary = train(config(32), first, CPU, Console(quiet=True))
    rows = [json.loads(line) for line in (first / "metrics.jsonl").read_text().splitlines()]
    logged = [r["train/mmer"] for r in rows if "train/mmer" in r]
    # every log row (one iteration of 8 env steps each; 3-step episodes end in each); a running max of means of
    # returns that are 0 or 1
    assert len(logged) == 4 and logged == sorted(logged) and 0 <= logged[0] <= logged[-1] <= 1
    saved = load_checkpoint(first)
    assert saved["counters"]["mmer"] == summary["train/mmer"] == logged[-1]

    run = resumed(first, 64)
    try:
        assert run.mmer == saved["counters"]["mmer"]  # from the checkpoint's counters, not from scratch
        run.iterate()
        assert run.mmer >= saved["counters"]["mmer"]
    finally:
        run.close(0)

    # a checkpoint from before train/mmer existed still resumes; the max starts afresh
    old = tmp_path / "old"
    (old / "checkpoints").mkdir(parents=True)
    del saved["counters"]["mmer"]
    save_checkpoint(old / "checkpoints" / "last.pt", {k: v for k, v in saved.items() if k != "format"})
    run = resumed(old, 64)
    try:
        assert run.mmer is None
        while run.mmer is None:
            run.iterate()
        assert np.isfinite(run.mmer)
    finally:
        run.close(0)


# --- Tuple observations with an image component ----------------------------------------------------------------

def test_image_components_in_the_layout():
    S = gym.spaces
    frame = S.Box(0, 255, (3, 64, 64), np.uint8)
    space = encode_space(S.Tuple((S.Discrete(2), frame, frame, S.Box(-1, 1, (2,)))))
    assert space.parts == [(1, 2), (IMAGE_SIZE, IMAGE), (IMAGE_SIZE, IMAGE), (2, 0)]  # frames never merge
    assert space.shape == (2 + 2 * IMAGE_SIZE + 2,)
    assert image_slices(space) == [slice(2, 2 + IMAGE_SIZE), slice(2 + IMAGE_SIZE, 2 + 2 * IMAGE_SIZE)]
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8)
    flat = encode(space.source, (1, pixels, pixels, np.zeros(2, np.float32)))
    np.testing.assert_array_equal(flat[image_slices(space)[0]].reshape(3, 64, 64), pixels)
    # a 3x64x64 Box that is not uint8 pixels stays real values, as before images were parts
    assert encode_space(S.Tuple((S.Box(0.0, 1.0, (3, 64, 64)), S.Discrete(2)))).parts == [(IMAGE_SIZE, 0), (1, 2)]
    assert image_slices(S.Box(0, 255, (3, 64, 64), np.uint8)) == []  # a plain image is not an encoded one
    envs = make_gym_env("cpcrl_test/ImageCue-v0", 2, prev_action=True)  # the action's one-hot joins the layout
    assert envs.single_observation_space.parts == [(IMAGE_SIZE, IMAGE), (1, 4), (1, 2)]
    envs.close()


def test_parts_encoder_decoder_split_the_flat_vector_and_the_loss_sums_the_parts():
    envs = make_gym_env("cpcrl_test/ImageCue-v0", 2)
    space = envs.single_observation_space
    agent = tiny_for("dreamer_v3", envs)
    assert isinstance(agent.encoder, PartsEncoder) and isinstance(agent.decoder, PartsDecoder)
    assert agent.onehot_groups == [(IMAGE_SIZE, IMAGE), (1, 4)]
    obs = torch.from_numpy(np.stack([encode(space.source, ImageCue().obs(c, t)) for c, t in ((0, 0), (1, 2))]))
    conv, mlp = agent.encoder.convs[0], agent.encoder.mlp
    assert isinstance(conv, ConvEncoder) and agent.encoder.out_dim == conv.out_dim + mlp.out_dim
    embed = agent.encoder(obs[None])  # any leading dims
    assert embed.shape == (1, 2, conv.out_dim + mlp.out_dim)
    torch.testing.assert_close(embed[0], torch.cat([conv(obs[:, :IMAGE_SIZE].view(2, 3, 64, 64)),
                                                    mlp(obs[:, IMAGE_SIZE:])], -1))
    features = torch.randn(2, agent.rssm.feature_dim)
    prediction = agent.decoder(features)
    image_decoder = agent.decoder.convs[0]
    assert isinstance(image_decoder, ConvDecoder) and prediction.shape == obs.shape
    image = image_decoder(features)
    logits = agent.decoder.mlp(features)
    torch.testing.assert_close(prediction[:, :IMAGE_SIZE], image.flatten(1))
    by_hand = (0.5 * (image - (obs[:, :IMAGE_SIZE].view(2, 3, 64, 64) / 255 - 0.5)).pow(2).sum((1, 2, 3))
               - (obs[:, IMAGE_SIZE:] * logits.log_softmax(-1)).sum(-1))
    torch.testing.assert_close(onehot_nll(prediction, obs, agent.onehot_groups), by_hand)
    with pytest.raises(ConfigError, match=r"world_model.decoder.kind=gaussian: the observation has an image "
                                          r"component .*valid is decoder.kind=auto"):
        composed_agent(space, envs.single_action_space, *ALL["dreamer_v3"][0], "world_model.decoder.kind=gaussian",
                       **ALL["dreamer_v3"][1])
    envs.close()


@pytest.mark.parametrize("name", ["dreamer_v3", "planet"])
def test_model_based_agents_train_on_an_image_in_a_tuple(name):
    envs = make_gym_env("cpcrl_test/ImageCue-v0", 2)
    small = ["world_model.encoder.depth=4", "world_model.decoder.depth=4"]
    overrides, params = ALL[name]
    torch.manual_seed(0)
    agent = composed_agent(envs.single_observation_space, envs.single_action_space, *overrides, *small, **params)
    metrics = agent.train_iteration(Collector(envs, CPU, seed=0))
    assert np.isfinite(metrics["loss/reconstruction"]) and np.isfinite(metrics["loss/model"])
    assert np.isfinite(evaluate(agent, envs, 2)["eval/return_mean"])
    envs.close()


@pytest.mark.parametrize("name", ["reinforce", "ppo_lstm", "cpc_rl", "random"])
def test_model_free_agents_refuse_an_image_component(name):
    envs = make_gym_env("cpcrl_test/ImageCue-v0", 1)
    with pytest.raises(ConfigError, match=rf"agent={name} takes flat vector observations, the env has an image "
                                          r"component \(Tuple\(Box\(0, 255, \(3, 64, 64\), uint8\), Discrete\(4\)\)\); "
                                          r"agents for image observations: planet, dreamer"):
        tiny_for(name, envs)
    envs.close()
    frames = gym.spaces.Box(0, 255, (3, 64, 64), np.uint8)  # env.pixels: a plain image, refused the same way
    with pytest.raises(ConfigError, match=rf"agent={name} takes flat vector observations, the env gives images "
                                          r"\(Box\(0, 255, \(3, 64, 64\), uint8\)\); agents for image observations"):
        tiny(name, frames, gym.spaces.Discrete(2))
