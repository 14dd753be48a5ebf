"""Belief probes: how much of the env's hidden state an agent's belief encodes (Guo et al. 2018, the CPC|A paper).

The agent plays whole episodes greedily; at every step we record its belief features (`Agent.belief_features`), the
env's hidden state and the steps since the episode start. Decoders fitted on some episodes are scored on the
held-out ones (episodes are split, never steps: steps of one episode are alike).

Targets (the env contract, `cpcrl.envs`): `info["true_state"]` float [N, D] (continuous: cartpole_pomdp's and
pendulum_pomdp's unmasked state, the T-maze's cue as +-1, the cube's sticker one-hots, POPGym's CountRecall counts
and its cartpole / pendulum states) and `info["true_class"]` int [N, C] (categorical: the T-maze's cue 0 up / 1 down,
the cube's 24 sticker colours, POPGym's RepeatPrevious / RepeatFirst card due and CountRecall answer due;
`cpcrl.envs.popgym_state`).

Decoders, each fitted on standardised features X (train mean and std; [S, F]) of the train episodes:

* ridge (closed form), continuous targets Y [S, D]:
      W = (Xc^T Xc + lam S I)^-1 Xc^T Yc,   Xc, Yc centred on their train means, Y_hat = Xc W + mean(Y)
  scored per dim on the held-out episodes by  R^2_d = 1 - sum (y_d - y_hat_d)^2 / sum (y_d - mean_test(y_d))^2
  (dims constant on the test episodes have no R^2 and are left out of the mean);
* linear classifier, categorical targets: the same ridge regression onto the one-hot classes of each column,
  class = argmax of the predicted one-hot (closed form, no iterations); scored by accuracy, per column and
  averaged;
* MLP (nonlinear): F -> hidden -> hidden -> D + sum K (tanh), `mlp_steps` full-batch Adam steps on
  MSE(standardised Y) + cross-entropy per class column; the same scores.

Controls, fitted and scored on the very same steps: the probe on a randomly initialised agent of the same
architecture (`probe_random/`; its belief filters the same observations and, for RSSM beliefs, the same actions:
the probed agent's) and on the raw current observation (`probe_obs/`): what memory
adds over the observation.

Metric names (flat dict): `probe/state_r2` (ridge, mean over dims), `probe/state<d>_r2` (per dim, D <= 8),
`probe/state_r2_mlp`; `probe/class_acc` (linear, mean over columns), `probe/class<c>_acc` (per column, C <= 8),
`probe/class_acc_mlp`; with `per_time`, `probe/class_acc_t<t>` (linear, held-out steps t steps after the episode
start: how long the belief remembers, e.g. the T-maze's cue at t = 0 is in the obs, later only in memory).
The same names under `probe_random/` and `probe_obs/`, and `probe/samples` (train + test steps).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cpcrl.agents import make_agent

PER_DIM_MAX = 8  # per-dim / per-column scores are reported for targets this wide or narrower


@dataclass
class ProbeData:
    """Steps of whole episodes: features of each belief (name -> [S, F]), targets, time since start, episode id."""

    features: dict[str, np.ndarray]
    true_state: np.ndarray | None  # float [S, D]
    true_class: np.ndarray | None  # int [S, C]
    time: np.ndarray  # int [S]: steps since the episode start (0 at the first obs)
    episode: np.ndarray  # int [S]


# --- collecting ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def collect(agent, envs, episodes: int, controls: dict | None = None, seed: int | None = None) -> ProbeData:
    """`agent` plays `episodes` whole episodes greedily (each env one per round, as `collector.evaluate`); the
    features of `agent` ("belief"), of each control agent (name -> agent, fed the same observations) and the
    observation itself ("obs") are recorded with the env's targets at every step of every episode."""
    n, device = envs.num_envs, agent.device
    controls = controls or {}
    agents = {"belief": agent, **controls}
    was_training = {k: a.training for k, a in agents.items()}
    for a in agents.values():
        a.eval()
    rows: dict[str, list] = {k: [] for k in (*agents, "obs", "true_state", "true_class", "time", "episode")}
    done_episodes, first_round = 0, True
    while done_episodes < episodes:
        obs, info = envs.reset(seed=seed if first_round else None)
        first_round = False
        if "true_state" not in info and "true_class" not in info:
            raise ValueError("the env gives no info['true_state'] / info['true_class']: nothing to probe")
        states = {k: a.initial_state(n) for k, a in agents.items()}
        is_first = np.ones(n, dtype=bool)
        active = np.ones(n, dtype=bool)
        take = min(n, episodes - done_episodes)
        keep = active.copy()
        keep[take:] = False  # envs past the episode budget play on but are not recorded
        t = 0
        while active.any():
            obs_t = torch.from_numpy(obs.astype(np.float32, copy=False)).to(device)
            first_t = torch.from_numpy(is_first).to(device)
            mask = info.get("action_mask")
            mask_t = None if mask is None else torch.from_numpy(mask).to(device)
            record = active & keep
            features, _ = agent.belief_features(obs_t, states["belief"], first_t)
            rows["belief"].append(features.float().cpu().numpy()[record])
            taken, states["belief"] = agent.act(obs_t, states["belief"], first_t, mask_t, explore=False)
            for name, control in controls.items():
                features, state = control.belief_features(obs_t, states[name], first_t)
                rows[name].append(features.float().cpu().numpy()[record])
                states[name] = with_action(control, state, taken)
            rows["obs"].append(obs.astype(np.float32)[record])
            for key in ("true_state", "true_class"):
                if key in info:
                    rows[key].append(np.asarray(info[key])[record])
            rows["time"].append(np.full(int(record.sum()), t))
            rows["episode"].append(done_episodes + np.flatnonzero(record))
            obs, _, terminated, truncated, info = envs.step(taken.cpu().numpy())
            done = terminated | truncated
            is_first = done
            active &= ~done
            t += 1
        done_episodes += take
    for name, a in agents.items():
        a.train(was_training[name])
    cat = {k: np.concatenate(v) if v else None for k, v in rows.items()}
    return ProbeData({k: cat[k] for k in (*agents, "obs")}, cat["true_state"], cat["true_class"], cat["time"],
                     cat["episode"])


def with_action(agent, state, action: torch.Tensor):
    """A control's state once the probed agent's `action` is taken: RSSM states (dicts with the previous action,
    one-hot if discrete) hold it; LSTM states do not read actions."""
    if isinstance(state, dict) and "action" in state:
        held = nn.functional.one_hot(action.long(), agent.action_dim) if agent.discrete else action
        return {**state, "action": held.to(state["action"])}
    return state


# --- the decoders --------------------------------------------------------------------------------------------------

def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets scaled by the train set's mean and std (constant features: std 1), the test set clipped to the
    train set's range widened by that range on each side: a feature nearly constant on the fit episodes (a
    saturated unit) would otherwise reach the held-out rows scaled by ~1e8 and a linear probe's R^2 there by ~-1e9,
    which measures the scaling, not the belief; the margin leaves ordinary extrapolation alone."""
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    train, test = (train - mean) / std, (test - mean) / std
    low, high = train.min(0), train.max(0)
    return train, np.clip(test, 2 * low - high, 2 * high - low)


def ridge_fit(x: np.ndarray, y: np.ndarray, lam: float):
    """W = (Xc^T Xc + lam S I)^-1 Xc^T Yc on centred X [S, F] and Y [S, D] -> predict(x) = (x - mean_x) W + mean_y."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mean_x, mean_y = x.mean(0), y.mean(0)
    xc, yc = x - mean_x, y - mean_y
    w = np.linalg.solve(xc.T @ xc + lam * len(x) * np.eye(x.shape[1]), xc.T @ yc)
    return lambda q: (np.asarray(q, np.float64) - mean_x) @ w + mean_y


def r2_per_dim(y: np.ndarray, y_hat: np.ndarray) -> np.ndarray:
    """R^2_d = 1 - SSE_d / SST_d on these rows; nan where y_d is constant (SST_d = 0)."""
    sse = ((y - y_hat) ** 2).sum(0)
    sst = ((y - y.mean(0)) ** 2).sum(0)
    return np.where(sst > 1e-12, 1.0 - sse / np.where(sst > 1e-12, sst, 1.0), np.nan)


def one_hot_columns(classes: np.ndarray, counts: list[int]) -> np.ndarray:
    """int [S, C] with column c in 0..counts[c]-1 -> float [S, sum(counts)], the columns' one-hots side by side."""
    return np.concatenate([np.eye(k)[classes[:, c]] for c, k in enumerate(counts)], axis=1)


def argmax_columns(scores: np.ndarray, counts: list[int]) -> np.ndarray:
    """float [S, sum(counts)] -> int [S, C]: the argmax within each column's block."""
    edges = np.cumsum([0, *counts])
    return np.stack([scores[:, a:b].argmax(1) for a, b in zip(edges[:-1], edges[1:])], axis=1)


def mlp_fit(x: np.ndarray, y: np.ndarray | None, classes: np.ndarray | None, counts: list[int], hidden: int,
            steps: int, lr: float, seed: int):
    """A tanh MLP x -> [standardised y | class logits], `steps` full-batch Adam steps on MSE + cross-entropy.
    -> predict(x) = (y_hat, classes_hat). The global torch RNG is left as it was."""
    dims = 0 if y is None else y.shape[1]
    y_mean, y_std = (0.0, 1.0) if y is None else (y.mean(0), np.where(y.std(0) > 1e-8, y.std(0), 1.0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                            nn.Linear(hidden, dims + sum(counts)))
        xt = torch.as_tensor(x, dtype=torch.float32)
        yt = None if y is None else torch.as_tensor((y - y_mean) / y_std, dtype=torch.float32)
        ct = None if classes is None else torch.as_tensor(classes, dtype=torch.long)
        edges = np.cumsum([dims, *counts])
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for _ in range(steps):
            out = net(xt)
            loss = out.new_zeros(())
            if yt is not None:
                loss = loss + (out[:, :dims] - yt).pow(2).mean()
            for c, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
                loss = loss + nn.functional.cross_entropy(out[:, a:b], ct[:, c])
            opt.zero_grad()
            loss.backward()
            opt.step()

    def predict(q):
        with torch.no_grad():
            out = net(torch.as_tensor(q, dtype=torch.float32)).numpy().astype(np.float64)
        y_hat = None if y is None else out[:, :dims] * y_std + y_mean
        c_hat = None if classes is None else argmax_columns(out[:, dims:], counts)
        return y_hat, c_hat
    return predict


# --- scoring -------------------------------------------------------------------------------------------------------

def split_episodes(episode: np.ndarray, train_fraction: float, seed: int) -> np.ndarray:
    """-> bool [S]: the rows of a random `train_fraction` of the episodes (at least one episode each side)."""
    ids = np.unique(episode)
    if len(ids) < 2:
        raise ValueError("probes need at least 2 episodes (one to fit on, one to score on)")
    rng = np.random.default_rng(seed)
    n_train = min(max(1, round(train_fraction * len(ids))), len(ids) - 1)
    return np.isin(episode, rng.permutation(ids)[:n_train])


def _scores(prefix: str, suffix: str, r2: np.ndarray | None, acc: np.ndarray | None) -> dict[str, float]:
    out = {}
    if r2 is not None and np.isfinite(r2).any():
        out[f"{prefix}state_r2{suffix}"] = float(np.nanmean(r2))
        if len(r2) <= PER_DIM_MAX and not suffix:
            out.update({f"{prefix}state{d}_r2": float(v) for d, v in enumerate(r2) if np.isfinite(v)})
    if acc is not None:
        out[f"{prefix}class_acc{suffix}"] = float(acc.mean())
        if len(acc) <= PER_DIM_MAX and len(acc) > 1 and not suffix:
            out.update({f"{prefix}class{c}_acc": float(v) for c, v in enumerate(acc)})
    return out


def probe_features(features: np.ndarray, data: ProbeData, train: np.ndarray, prefix: str = "probe/",
                   ridge: float = 1e-3, mlp_hidden: int = 64, mlp_steps: int = 300, mlp_lr: float = 3e-3,
                   per_time: bool = False, seed: int = 0) -> dict[str, float]:
    """Fit the ridge, the linear classifier and the MLP on the `train` rows of `features`, score on the others."""
    test = ~train
    x_train, x_test = standardise(features[train], features[test])
    y, classes = data.true_state, data.true_class
    counts = [] if classes is None else [int(k) + 1 for k in classes.max(0)]
    r2 = acc = None
    out = {}
    if y is not None:
        r2 = r2_per_dim(y[test], ridge_fit(x_train, y[train], ridge)(x_test))
    if classes is not None:
        predicted = argmax_columns(ridge_fit(x_train, one_hot_columns(classes[train], counts), ridge)(x_test), counts)
        correct = predicted == classes[test]
        acc = correct.mean(0)
        if per_time:
            times = data.time[test]
            for t in np.unique(times):
                out[f"{prefix}class_acc_t{int(t)}"] = float(correct[times == t].mean())
    out.update(_scores(prefix, "", r2, acc))
    if mlp_steps > 0:
        predict = mlp_fit(x_train, None if y is None else y[train], None if classes is None else classes[train],
                          counts, mlp_hidden, mlp_steps, mlp_lr, seed)
        y_hat, c_hat = predict(x_test)
        out.update(_scores(prefix, "_mlp", None if y is None else r2_per_dim(y[test], y_hat),
                           None if classes is None else (c_hat == classes[test]).mean(0)))
    return out


def probe_data(data: ProbeData, train_fraction: float = 0.7, seed: int = 0, **kw) -> dict[str, float]:
    """Every belief in `data` probed on the same split: "belief" -> probe/, "random" -> probe_random/,
    "obs" -> probe_obs/ (keyword arguments: `probe_features`')."""
    train = split_episodes(data.episode, train_fraction, seed)
    out = {"probe/samples": int(len(data.time))}
    for name, features in data.features.items():
        prefix = "probe/" if name == "belief" else f"probe_{name}/"
        out.update(probe_features(features, data, train, prefix, seed=seed, **kw))
    return out


# --- entry points --------------------------------------------------------------------------------------------------

def random_control(cfg, envs, device: torch.device, seed: int):
    """A randomly initialised agent of `cfg`'s architecture (the global torch RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make_agent(cfg.agent, cfg.world_model, envs.single_observation_space, envs.single_action_space,
                          device)


def probe_metrics(agent, envs, episodes: int = 64, random_agent=None, seed: int | None = None,
                  train_fraction: float = 0.7, per_time: bool = False, **kw) -> dict[str, float]:
    """`eval.probe=true`: the probe scores of `agent` (and of `random_agent`, a `random_control`, and of the obs)
    on `episodes` greedy episodes of `envs` (which it steps: give it envs of its own to leave evaluations as they
    were). -> the flat dict of the module docstring."""
    data = collect(agent, envs, episodes, {} if random_agent is None else {"random": random_agent}, seed)
    return probe_data(data, train_fraction, seed=0 if seed is None else seed, per_time=per_time, **kw)


def probe_checkpoint(cfg, run_dir: Path, device: torch.device, console) -> dict:
    """mode=probe: the checkpoint's agent probed with both controls; writes probe.json and probe.png."""
    from omegaconf import OmegaConf

    from cpcrl.train import load_trained_agent, summary_table, write_json

    settings = OmegaConf.to_container(cfg.probe)  # conf/config.yaml's probe: keys
    episodes = int(settings.pop("episodes"))
    payload, run_cfg, envs, agent = load_trained_agent(cfg, device, min(int(cfg.eval.num_envs), episodes))
    seed = int(cfg.seed)
    control = random_control(run_cfg, envs, device, seed + 7)
    result = probe_metrics(agent, envs, episodes, control, seed=seed + 2_000_003,
                           train_fraction=float(settings.pop("train_fraction")), per_time=True,
                           **{k: (float(v) if k == "ridge" else int(v)) for k, v in settings.items()})
    envs.close()
    result = {"checkpoint": str(cfg.checkpoint.path), "env_step": payload["counters"]["env_step"], **result}
    write_json(Path(run_dir) / "probe.json", result)
    plot(result, Path(run_dir) / "probe.png", f"{payload['agent_name']} on {run_cfg.env.name}")
    console.print(summary_table(f"probe: {payload['agent_name']} on {run_cfg.env.name}",
                                {k: v for k, v in result.items() if "_acc_t" not in k}))
    console.print(f"wrote {Path(run_dir) / 'probe.json'}, {Path(run_dir) / 'probe.png'}")
    return result


def plot(result: dict, path: Path, title: str) -> None:
    """Bars: each summary score for belief / random / obs; a line: the linear class accuracy per time step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {"belief": "probe/", "random": "probe_random/", "obs": "probe_obs/"}
    scores = [k[len("probe/"):] for k in result if k.startswith("probe/") and k != "probe/samples"
              and "_acc_t" not in k]
    timed = sorted(int(k.rsplit("_t", 1)[1]) for k in result if k.startswith("probe/class_acc_t"))
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(12 if timed else 7, 4), squeeze=False)
    ax = axes[0, 0]
    width = 0.8 / len(groups)
    for i, (name, prefix) in enumerate(groups.items()):
        ax.bar(np.arange(len(scores)) + i * width, [result.get(prefix + s, np.nan) for s in scores], width,
               label=name)
    ax.set_xticks(np.arange(len(scores)) + 0.4 - width / 2, scores, rotation=45, ha="right")
    ax.set_ylim(min(0.0, *[result.get(p + s, 0.0) for p in groups.values() for s in scores]), 1.05)
    ax.set_title(title)
    ax.legend()
    if timed:
        ax = axes[0, 1]
        for name, prefix in groups.items():
            ax.plot(timed, [result.get(f"{prefix}class_acc_t{t}", np.nan) for t in timed], marker="o", label=name)
        ax.set_xlabel("steps since the episode start")
        ax.set_ylabel("class accuracy (linear, held-out)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
