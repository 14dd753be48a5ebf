"""Recurrent PPO benchmarks (a script, not a test).

    python benchmarks/bench_ppo_lstm.py sequence            # truncated-BPTT minibatch: 4 ways to run the LSTM
    python benchmarks/bench_ppo_lstm.py throughput --json   # env steps/s of full training vs sb3-contrib RecurrentPPO
    python benchmarks/bench_ppo_lstm.py sample --json       # eval returns at 50k/100k, A/B and hidden-reset ablation

`throughput` needs the benchmark-only peers: `pip install sb3-contrib` (never a runtime dependency).
Everything runs with one torch thread (the nets are small; more threads only contend on a shared machine).
`--json [PATH]` writes the result to PATH (default benchmarks/results/ppo_<kind>.json); the kind defaults to throughput.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from machine_info import cpu_model  # sibling module: benchmarks/ is on sys.path when a script runs

warnings.filterwarnings("ignore", message=".*torch.jit.script.*is deprecated")
RESULTS = Path(__file__).resolve().parent / "results"
PRESET = ["experiment=ppo_cartpole_pomdp", "logger=none", "device=cpu", "device.threads=1"]


def machine() -> dict:
    import os
    cpu = cpu_model()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "gpu": gpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "date": dt.datetime.now().isoformat(timespec="seconds")}


def compose(overrides: list[str]):
    from hydra import compose as hcompose, initialize_config_module
    with initialize_config_module(config_module="cpcrl.conf", version_base="1.3"):
        return hcompose(config_name="config", overrides=overrides)


# --- sequence: how to run a minibatch of chunks with resets through the LSTM --------------------------------

def _split_at_resets(belief, x, state, is_first):
    """Split the [T, B] block at every time step where any env resets; one nn.LSTM call per segment."""
    times = [0] + [t for t in range(1, x.shape[0]) if bool(is_first[t].any())] + [x.shape[0]]
    outs = []
    for a, b in zip(times[:-1], times[1:]):
        out, state = belief.lstm(x[a:b], belief._reset(state, is_first[a]))
        outs.append(out)
    return torch.cat(outs), state


def _packed(belief, x, state, is_first):
    """Cut each env's column at its resets, pack the pieces (own initial states), one nn.LSTM call."""
    T, B = is_first.shape
    starts = is_first.clone()
    starts[0] = True
    starts_bt = starts.t().reshape(-1)  # env-major: pieces of env 0 first, in time order
    piece = (starts_bt.long().cumsum(0) - 1).view(B, T)  # [B, T] piece id of each step
    flat_start = starts_bt.nonzero().squeeze(1)  # [P] flat (b * T + t0) of each piece start
    t0, b_of = flat_start % T, flat_start // T
    P = flat_start.shape[0]
    t_grid = torch.arange(T, device=x.device).expand(B, T)
    pos = t_grid - t0[piece]  # [B, T] position inside its piece
    lengths = torch.bincount(piece.reshape(-1), minlength=P)
    padded = x.new_zeros(T, P, x.shape[-1])
    padded[pos.reshape(-1), piece.reshape(-1)] = x.transpose(0, 1).reshape(B * T, -1)
    # initial state per piece: the given state (reset where is_first[0]) for pieces at t=0, zeros otherwise
    h0, c0 = belief._reset(state, is_first[0])
    at_zero = t0 == 0
    hp = x.new_zeros(belief.num_layers, P, belief.lstm_hidden)
    cp = torch.zeros_like(hp)
    hp[:, at_zero] = h0[:, b_of[at_zero]]
    cp[:, at_zero] = c0[:, b_of[at_zero]]
    packed = pack_padded_sequence(padded, lengths.cpu(), enforce_sorted=False)
    out, (hn, cn) = belief.lstm(packed, (hp, cp))
    out, _ = pad_packed_sequence(out, total_length=T)
    feats = out[pos.reshape(-1), piece.reshape(-1)].view(B, T, -1).transpose(0, 1)
    last = piece[:, -1]
    return feats, (hn[:, last], cn[:, last])


@torch.jit.script
def _masked_lstm_loop(xw: torch.Tensor, keep: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_hh: torch.Tensor):
    # xw: [T, B, 4H] input projections incl. both biases; keep: [T, B, 1]
    outs = []
    for t in range(xw.shape[0]):
        h = h * keep[t]
        c = c * keep[t]
        gates = xw[t] + h @ w_hh.t()
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        outs.append(h)
    return torch.stack(outs), h, c


def _jit_cell(belief, x, state, is_first):
    lstm = belief.lstm  # one layer
    xw = x @ lstm.weight_ih_l0.t() + lstm.bias_ih_l0 + lstm.bias_hh_l0
    keep = (~is_first).float().unsqueeze(-1)
    out, h, c = _masked_lstm_loop(xw, keep, state[0][0], state[1][0], lstm.weight_hh_l0)
    return out, (h[None], c[None])


def bench_sequence(args) -> dict:
    from cpcrl.nets.recurrent import LSTMBelief
    torch.manual_seed(0)
    belief = LSTMBelief(2, 256, 128, 1)
    K = 8
    rows = []
    # 32 chunks of 8 = a preset minibatch (8 envs x 64 steps / 8 / 2); resets early (1/20) and late (1/500) in training
    for n_chunks, p_reset in ((32, 0.05), (32, 0.002), (128, 0.05), (128, 0.002)):
        obs = torch.randn(K, n_chunks, 2)
        is_first = torch.rand(K, n_chunks) < p_reset
        state = tuple(torch.randn(1, n_chunks, 128) for _ in range(2))
        methods = {
            "loop (nn.LSTM per step)": lambda: belief.sequence(obs, state, is_first, method="loop"),
            "split at reset times": lambda: _split_at_resets(belief, belief.encoder(obs), state, is_first),
            "torch.jit masked cell loop": lambda: _jit_cell(belief, belief.encoder(obs), state, is_first),
            "packed pieces (one nn.LSTM call)": lambda: _packed(belief, belief.encoder(obs), state, is_first),
            "auto (cpcrl: plain call, else masked loop)": lambda: belief.sequence(obs, state, is_first),
        }
        ref = methods["loop (nn.LSTM per step)"]()[0]
        row = {"chunks": n_chunks, "truncation": K, "p_reset": p_reset,
               "resets_inside": int(is_first[1:].sum()), "ms_fwd_bwd": {}}
        for name, fn in methods.items():
            out = fn()[0]
            assert (out - ref).abs().max() < 1e-5, name
            for _ in range(3):
                fn()[0].sum().backward()
        times = {name: [] for name in methods}
        for _ in range(args.repeats):  # interleaved rounds, min over rounds: robust on a shared machine
            for name, fn in methods.items():
                t0 = time.perf_counter()
                fn()[0].sum().backward()
                times[name].append(time.perf_counter() - t0)
        row["ms_fwd_bwd"] = {name: round(1e3 * min(t), 3) for name, t in times.items()}
        rows.append(row)
        print(f"chunks={n_chunks:4d} p_reset={p_reset}: " +
              ", ".join(f"{k}: {v:.2f} ms" for k, v in row["ms_fwd_bwd"].items()))
    return {"kind": "sequence", "machine": machine(), "rows": rows}


# --- throughput: ours vs sb3-contrib RecurrentPPO --------------------------------------------------------

def run_ours(total: int, seed: int, device: str = "cpu", extra=()) -> float:
    from cpcrl.collector import Collector
    from cpcrl.train import build_agent, make_env
    cfg = compose(PRESET + [f"train.total_steps={total}", f"seed={seed}", *extra])
    torch.manual_seed(seed)
    envs = make_env(cfg.env)
    agent = build_agent(cfg, envs, torch.device(device))
    col = Collector(envs, torch.device(device), seed=seed)
    t0 = time.perf_counter()
    while col.env_step < total:
        agent.train_iteration(col)
    sps = col.env_step / (time.perf_counter() - t0)
    envs.close()
    return sps


def run_sb3(total: int, seed: int, cfg, device: str = "cpu") -> float:
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from stable_baselines3.common.vec_env import VecNormalize

    from cpcrl.envs.wrappers import ObserveIndices

    class Encoder(BaseFeaturesExtractor):  # the same Linear(obs, 256) + ReLU encoder in front of the LSTM
        def __init__(self, space, features_dim=256):
            super().__init__(space, features_dim)
            self.net = nn.Sequential(nn.Linear(space.shape[0], features_dim), nn.ReLU())

        def forward(self, obs):
            return self.net(obs)

    a = cfg.agent
    n_envs = int(cfg.env.num_envs)
    venv = make_vec_env("CartPole-v1", n_envs=n_envs, seed=seed, wrapper_class=lambda e: ObserveIndices(e, [0, 2]))
    venv = VecNormalize(venv, norm_obs=True, norm_reward=bool(a.normalize_reward), gamma=float(a.gamma))
    model = RecurrentPPO(
        "MlpLstmPolicy", venv, n_steps=int(a.num_steps), batch_size=int(a.num_steps) * n_envs // int(a.num_minibatches),
        n_epochs=int(a.update_epochs), learning_rate=float(a.lr), gamma=float(a.gamma), gae_lambda=float(a.gae_lambda),
        clip_range=float(a.clip_coef), ent_coef=float(a.entropy_coef), vf_coef=float(a.value_coef),
        max_grad_norm=float(a.max_grad_norm), seed=seed, device=device, verbose=0,
        policy_kwargs=dict(features_extractor_class=Encoder, features_extractor_kwargs=dict(features_dim=256),
                           lstm_hidden_size=128, n_lstm_layers=1, shared_lstm=True, enable_critic_lstm=False,
                           net_arch=dict(pi=[64], vf=[64]), activation_fn=nn.ReLU))
    t0 = time.perf_counter()
    model.learn(total_timesteps=total)
    sps = model.num_timesteps / (time.perf_counter() - t0)
    venv.close()
    return sps


def bench_throughput(args) -> dict:
    cfg = compose(PRESET)
    ours = [run_ours(args.steps, s, args.device) for s in range(args.runs)]
    print(f"ours  : {[round(x) for x in ours]} sps")
    try:
        sb3 = [run_sb3(args.sb3_steps, s, cfg, args.device) for s in range(args.runs)]
        print(f"sb3   : {[round(x) for x in sb3]} sps")
    except ImportError as e:
        print(f"sb3-contrib not installed ({e}); `pip install sb3-contrib` to compare")
        sb3 = []
    a = cfg.agent
    out = {"kind": "throughput", "machine": machine(), "device": args.device,
           "env": "cartpole_pomdp (CartPole-v1, obs [0, 2])",
           "settings": {"num_envs": int(cfg.env.num_envs), "num_steps": int(a.num_steps),
                        "update_epochs": int(a.update_epochs), "num_minibatches": int(a.num_minibatches),
                        "truncation_length": int(a.truncation_length), "encoder": 256, "lstm_hidden": 128,
                        "heads": 64, "ours_steps": args.steps, "sb3_steps": args.sb3_steps,
                        "sb3_policy": "MlpLstmPolicy, Linear(2,256)+ReLU extractor, shared_lstm=True, "
                                      "enable_critic_lstm=False, net_arch pi=[64] vf=[64], VecNormalize"},
           "ours_sps_runs": ours, "ours_sps_median": statistics.median(ours)}
    if sb3:
        out.update({"sb3_sps_runs": sb3, "sb3_sps_median": statistics.median(sb3),
                    "ratio": statistics.median(ours) / statistics.median(sb3)})
        print(f"median: ours {out['ours_sps_median']:.0f} sps, sb3-contrib {out['sb3_sps_median']:.0f} sps, "
              f"ratio {out['ratio']:.2f}x  ({out['machine']['cpu']}, {out['machine']['date']})")
    return out


# --- sample efficiency ---------------------------------------------------------------------------------

def train_and_eval(overrides: list[str], checkpoints: list[int], seed: int, episodes: int, reset_every=()) -> dict:
    from cpcrl.collector import Collector, evaluate
    from cpcrl.train import build_agent, make_env
    cfg = compose(overrides + [f"train.total_steps={max(checkpoints)}", f"seed={seed}"])
    torch.manual_seed(seed), np.random.seed(seed)
    envs = make_env(cfg.env)
    eval_envs = make_env(cfg.env, num_envs=min(100, episodes))
    eval_envs.reset(seed=seed + 1_000_003)
    agent = build_agent(cfg, envs, torch.device("cpu"))
    col = Collector(envs, torch.device("cpu"), seed=seed)
    out, t0 = {}, time.perf_counter()
    for c in sorted(checkpoints):
        while col.env_step < c:
            agent.train_iteration(col)
        out[c] = {"return": evaluate(agent, eval_envs, episodes)["eval/return_mean"], "env_step": col.env_step}
        for k in reset_every:
            out[c][f"return_reset{k}"] = evaluate(agent, eval_envs, episodes, reset_hidden_every=k)["eval/return_mean"]
    out["time_s"] = round(time.perf_counter() - t0, 1)
    envs.close(), eval_envs.close()
    return out


def bench_sample(args) -> dict:
    res = {"kind": "sample_efficiency", "machine": machine(), "episodes": args.episodes, "runs": {}}
    seeds = list(range(args.seeds))
    cases = {"cartpole_pomdp/lstm": (PRESET, [50_000, 100_000], (1, 4)),
             "cartpole_pomdp/feedforward": (PRESET + ["world_model=none"], [50_000, 100_000], ())}
    if args.pendulum:
        cases["pendulum_pomdp/lstm"] = (["experiment=ppo_pendulum_pomdp", "logger=none", "device=cpu",
                                         "device.threads=1"], [args.pendulum_steps], ())
    for name, (ov, cps, resets) in cases.items():
        runs = []
        for s in seeds:
            r = train_and_eval(ov, cps, s, args.episodes, resets)
            print(name, "seed", s, r, flush=True)
            runs.append(r)
        summary = {str(c): statistics.median(r[c]["return"] for r in runs) for c in cps}
        for k in resets:
            summary[f"{max(cps)}_reset{k}"] = statistics.median(r[max(cps)][f"return_reset{k}"] for r in runs)
        res["runs"][name] = {"per_seed": [{str(k): v for k, v in r.items()} for r in runs], "median": summary}
        print(name, "median over seeds:", summary, flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", nargs="?", default="throughput", choices=["sequence", "throughput", "sample"])
    p.add_argument("--json", nargs="?", const="", default=None, metavar="PATH",
                   help="write the result (to PATH, default benchmarks/results/ppo_<kind>.json)")
    p.add_argument("--repeats", type=int, default=30, help="sequence: timed repeats")
    p.add_argument("--runs", type=int, default=3, help="throughput: runs per library (median reported)")
    p.add_argument("--steps", type=int, default=32_768, help="throughput: env steps per run (ours)")
    p.add_argument("--sb3-steps", type=int, default=8_192, help="throughput: env steps per run (sb3-contrib)")
    p.add_argument("--device", default="cpu", help="throughput: cpu | cuda (both libraries on it)")
    p.add_argument("--seeds", type=int, default=3, help="sample: seeds per case")
    p.add_argument("--episodes", type=int, default=100, help="sample: eval episodes")
    p.add_argument("--pendulum", action="store_true", help="sample: also pendulum_pomdp")
    p.add_argument("--pendulum-steps", type=int, default=100_000)
    args = p.parse_args()
    torch.set_num_threads(1)
    result = {"sequence": bench_sequence, "throughput": bench_throughput, "sample": bench_sample}[args.kind](args)
    if args.json is not None:
        path = Path(args.json) if args.json else RESULTS / f"ppo_{args.kind}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
