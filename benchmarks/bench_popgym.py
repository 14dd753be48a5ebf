"""POPGym memory suite: cpcrl's ppo_lstm and cpc_rl vs sb3-contrib RecurrentPPO (a script, not a test).

    python benchmarks/bench_popgym.py learn --lib cpcrl --agent ppo_lstm   # the learning runs, one process per run
    python benchmarks/bench_popgym.py learn --lib sb3 --seeds 0 1           # needs --sb3-python (its own venv)
    python benchmarks/bench_popgym.py throughput                            # paired env steps/s, same work
    python benchmarks/bench_popgym.py table --json                          # the tables from the finished runs
    python benchmarks/bench_popgym.py probe --json                          # belief probes on the runs' checkpoints
    python benchmarks/bench_popgym.py learn --agent dreamer --label dreamer_r32 --set agent.train_ratio=32 \
        --tasks RepeatPreviousEasy CountRecallEasy --seeds 0                # other settings: --set, named by --label

Every run trains for the same env-step budget (`--steps`, all envs together) on one torch thread and evaluates
the greedy (deterministic) policy on `EVAL_EPISODES` episodes every `steps / EVALS` env steps. A run's score is
the *held* score: the mean of its last three evaluations (the last one at the end of training), never the best.
Beside it the table gives MMER, POPGym's own metric (Morad et al. 2023): the max over training of the mean
return of the episodes that ended in one collection batch (cpcrl: one train iteration, 8 envs x 64 steps;
sb3: one rollout, 8 envs x 32 steps; a smaller batch has a noisier mean, so its max is biased up).

Peer settings are rl-zoo's recurrent PPO settings (hyperparams/ppo_lstm.yml, CartPoleNoVel-v1, the zoo's one
recurrent preset for classic control): 8 envs, n_steps 32, batch 256, 20 epochs, gamma 0.98, gae 0.8,
lr linear from 1e-3, clip linear from 0.2, no entropy bonus, VecNormalize(obs), LSTM 64, separate critic LSTM,
pi/vf [64] ReLU. Its observations are gymnasium's FlattenObservation (one-hots, as cpcrl encodes them).
cpcrl runs its defaults (`agent=ppo_lstm env=popgym` / `agent=cpc_rl env=popgym`), nothing tuned per task.

`throughput` is a separate, paired measurement of the *same work* on both sides: sb3's policy configured as
cpcrl's ppo_lstm (Linear(obs, 128) + ReLU encoder, one shared LSTM of 128, pi/vf heads [64] ReLU, 8 envs,
64 steps, 10 epochs, 2 minibatches, obs normalisation on both sides), alternating the libraries in each round;
the median of the per-round ratios over `--rounds` rounds is reported.

sb3-contrib is a benchmark-only install in its own venv: `python -m venv /tmp/sb3 && /tmp/sb3/bin/pip install
torch==2.13.0 sb3-contrib popgym==1.0.7`, then pass `--sb3-python /tmp/sb3/bin/python` (or set CPCRL_SB3_PYTHON).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
RUNS = RESULTS / "popgym_runs"
TASKS = ["RepeatPreviousEasy", "RepeatFirstEasy", "CountRecallEasy", "AutoencodeEasy",
         "PositionOnlyCartPoleEasy", "PositionOnlyPendulumEasy", "MineSweeperEasy", "HigherLowerEasy"]
EVALS = 8            # evaluations per run (the last three make the held score)
EVAL_EPISODES = 64
HELD = 3


def run_name(lib: str, agent: str, task: str, seed: int, steps: int) -> str:
    return f"{lib}_{agent}_{task}_s{seed}_{steps // 1000}k"


# --- cpcrl: the real CLI, one process per run ----------------------------------------------------------------

def learn_cpcrl(agent: str, task: str, seed: int, steps: int, out: Path, evaluate: bool = True,
                overrides: tuple[str, ...] = (), label: str | None = None) -> dict:
    """`overrides`: extra Hydra overrides (after the suite's own); `label` names the runs (default: the agent)."""
    label = label or agent
    run_dir = out / run_name("cpcrl", label, task, seed, steps)
    evals = [f"eval.every={steps // EVALS}", f"eval.episodes={EVAL_EPISODES}", f"eval.num_envs={EVAL_EPISODES}"]
    cmd = [sys.executable, "-m", "cpcrl", f"agent={agent}", "env=popgym", f"env.task={task}", f"seed={seed}",
           f"train.total_steps={steps}", *(evals if evaluate else ["eval.every=0", "eval.episodes=8",
                                                                  "eval.num_envs=8"]),
           "train.log_every=512", f"checkpoint.every={steps}",
           "logger=none", "device=cpu", "device.threads=1", f"hydra.run.dir={run_dir}", *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["env_step"], r["eval/return_mean"]) for r in rows if "eval/return_mean" in r]
    batches = [r["train/episode_return"] for r in rows if "train/episode_return" in r]
    return {"lib": "cpcrl", "agent": label, "task": task, "seed": seed, "steps": steps, "evals": evals,
            "mmer": max(batches) if batches else None, "wall_s": round(time.perf_counter() - t0, 1),
            "command": " ".join(["cpcrl", *cmd[3:]])}


# --- sb3-contrib: runs in its own venv (this file, `_sb3` subcommand) ------------------------------------------

def sb3_worker(args) -> None:
    """Runs under the sb3 venv's python: no cpcrl imports here."""
    import gymnasium as gym
    import numpy as np
    import popgym  # noqa: F401  (registers the envs)
    import popgym.envs
    import torch
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
    from torch import nn

    torch.set_num_threads(1)
    cls = getattr(popgym.envs, args.task)

    def make(i):
        return lambda: Monitor(gym.wrappers.FlattenObservation(cls()))

    venv = VecNormalize(DummyVecEnv([make(i) for i in range(8)]), norm_obs=True, norm_reward=False)
    venv.seed(args.seed)
    eval_env = VecNormalize(DummyVecEnv([make(i) for i in range(EVAL_EPISODES)]), norm_obs=True,
                            norm_reward=False, training=False)
    eval_env.seed(args.seed + 1_000_003)

    def linear(start):
        return lambda progress: progress * start

    if args.matched:  # the same work as cpcrl's ppo_lstm defaults (throughput only)
        from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

        class Encoder(BaseFeaturesExtractor):  # Linear(obs, 128) + ReLU, as cpcrl's LSTM belief
            def __init__(self, space, features_dim=128):
                super().__init__(space, features_dim)
                self.net = nn.Sequential(nn.Linear(space.shape[0], features_dim), nn.ReLU())

            def forward(self, obs):
                return self.net(obs)
        kw = dict(n_steps=64, batch_size=256, n_epochs=10, learning_rate=linear(1e-3), gamma=0.99, gae_lambda=0.95,
                  clip_range=0.2, ent_coef=0.0, max_grad_norm=0.5,
                  policy_kwargs=dict(features_extractor_class=Encoder, lstm_hidden_size=128, shared_lstm=True,
                                     enable_critic_lstm=False, net_arch=dict(pi=[64], vf=[64]),
                                     activation_fn=nn.ReLU))
    else:  # rl-zoo hyperparams/ppo_lstm.yml, CartPoleNoVel-v1
        kw = dict(n_steps=32, batch_size=256, n_epochs=20, learning_rate=linear(1e-3), gamma=0.98, gae_lambda=0.8,
                  clip_range=linear(0.2), ent_coef=0.0,
                  policy_kwargs=dict(ortho_init=False, activation_fn=nn.ReLU, lstm_hidden_size=64,
                                     enable_critic_lstm=True, net_arch=dict(pi=[64], vf=[64])))
    model = RecurrentPPO("MlpLstmPolicy", venv, seed=args.seed, device="cpu", verbose=0, **kw)

    def evaluate():
        eval_env.obs_rms = venv.obs_rms  # the training statistics, frozen
        obs, state = eval_env.reset(), None
        starts = np.ones(EVAL_EPISODES, dtype=bool)
        returns, done = np.zeros(EVAL_EPISODES), np.zeros(EVAL_EPISODES, dtype=bool)
        while not done.all():
            action, state = model.predict(obs, state=state, episode_start=starts, deterministic=True)
            obs, reward, dones, _ = eval_env.step(action)
            returns += reward * ~done
            done |= dones
            starts = dones
        return float(returns.mean())

    class Record(BaseCallback):
        def __init__(self):
            super().__init__()
            self.evals, self.batches, self.ended, self.next_eval = [], [], [], args.steps // EVALS

        def _on_step(self):
            for info in self.locals["infos"]:
                if "episode" in info:
                    self.ended.append(info["episode"]["r"])
            if self.num_timesteps >= self.next_eval:
                self.evals.append((self.num_timesteps, evaluate()))
                self.next_eval += args.steps // EVALS
            return True

        def _on_rollout_end(self):
            if self.ended:
                self.batches.append(float(np.mean(self.ended)))
            self.ended = []

    record = Record()
    t0 = time.perf_counter()
    model.learn(total_timesteps=args.steps, callback=None if args.matched else record)
    wall = time.perf_counter() - t0
    if not args.matched and (not record.evals or record.evals[-1][0] < args.steps):
        record.evals.append((model.num_timesteps, evaluate()))
    print(json.dumps({"lib": "sb3", "agent": "RecurrentPPO", "task": args.task, "seed": args.seed,
                      "steps": args.steps, "evals": record.evals, "mmer": max(record.batches, default=None),
                      "wall_s": round(wall, 1), "sps": model.num_timesteps / wall,
                      "versions": {"sb3_contrib": __import__("sb3_contrib").__version__, "torch": torch.__version__,
                                   "gymnasium": gym.__version__}}))


def sb3_python(args) -> str | None:
    return args.sb3_python or os.environ.get("CPCRL_SB3_PYTHON")


def learn_sb3(args, task: str, seed: int, steps: int, out: Path, matched: bool = False) -> dict:
    cmd = [sb3_python(args), __file__, "_sb3", "--task", task, "--seed", str(seed), "--steps", str(steps)]
    proc = subprocess.run(cmd + (["--matched"] if matched else []), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if not matched:
        (out / f"{run_name('sb3', 'RecurrentPPO', task, seed, steps)}.json").write_text(json.dumps(result))
    return result


# --- learn: many runs, `--jobs` at a time -------------------------------------------------------------------

def done_path(out: Path, lib: str, agent: str, task: str, seed: int, steps: int) -> Path:
    return out / f"{run_name(lib, agent, task, seed, steps)}.json"


def learn(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.set and not args.label:  # else they would share run names (and "done" files) with the plain runs
        sys.exit("--set needs --label NAME: runs with other settings must not share the plain runs' names")
    agent = "RecurrentPPO" if args.lib == "sb3" else (args.label or args.agent)
    if args.lib == "sb3" and not sb3_python(args):
        sys.exit("sb3 runs need --sb3-python PATH (or CPCRL_SB3_PYTHON): a venv with sb3-contrib and popgym")
    todo = [(t, s) for t in args.tasks for s in args.seeds
            if not done_path(out, args.lib, agent, t, s, args.steps).exists()]

    def one(job):
        task, seed = job
        if args.lib == "sb3":
            result = learn_sb3(args, task, seed, args.steps, out)
        else:
            result = learn_cpcrl(args.agent, task, seed, args.steps, out, overrides=tuple(args.set),
                                 label=args.label)
            done_path(out, "cpcrl", agent, task, seed, args.steps).write_text(json.dumps(result))
        print(f"{args.lib} {agent} {task} seed {seed}: held {held(result):.3f} mmer {result['mmer']} "
              f"({result['wall_s']} s)", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, todo))


def held(result: dict) -> float:
    return statistics.fmean(r for _, r in result["evals"][-HELD:])


# --- throughput: paired rounds, same work -------------------------------------------------------------------

def throughput(args) -> dict:
    task, steps = args.throughput_task, args.throughput_steps
    rounds = []
    for i in range(args.rounds):
        # process wall clock per run: start-up and env construction included, the same on both sides
        ours = learn_cpcrl("ppo_lstm", task, 100 + i, steps, Path("/tmp/cpcrl_popgym_throughput"), evaluate=False)
        sps_ours = steps / ours["wall_s"]
        t0 = time.perf_counter()
        peer = learn_sb3(args, task, 100 + i, steps, Path("/tmp"), matched=True)
        sps_peer = steps / (time.perf_counter() - t0)
        rounds.append({"ours_sps": sps_ours, "sb3_sps": sps_peer, "sb3_learn_sps": peer["sps"],
                       "ratio": sps_ours / sps_peer})
        print(f"round {i}: cpcrl {sps_ours:.0f} sps, sb3-contrib {sps_peer:.0f} sps, ratio {sps_ours / sps_peer:.2f}",
              flush=True)
    return {"task": task, "steps": steps, "rounds": rounds,
            "median_ratio": statistics.median(r["ratio"] for r in rounds),
            "note": "process wall clock per run (start-up, env construction, evaluation at the end included on "
                    "both sides); sb3 matched to cpcrl's ppo_lstm defaults (encoder 128, shared LSTM 128, heads 64, "
                    "8 envs x 64 steps, 10 epochs, 2 minibatches, obs normalisation)"}


# --- table --------------------------------------------------------------------------------------------------

def suite_scores() -> dict[str, tuple[float, float]]:
    """task -> (random, reference) from conf/suite/popgym_easy.yaml (the suite cpcrl-report normalises by)."""
    import yaml
    tasks = yaml.safe_load((HERE.parent / "conf" / "suite" / "popgym_easy.yaml").read_text())["suite"]["tasks"]
    return {t: (v["random"], v["reference"]) for t, v in tasks.items()}


def load_runs(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]


def table(args) -> dict:
    from cpcrl.stats import bootstrap_interval, mean_interval, mean_score, normalise  # not in the sb3 venv
    runs = [r for r in load_runs(Path(args.out)) if r["steps"] == args.steps]
    configs = sorted({(r["lib"], r["agent"]) for r in runs})
    per_task = {}
    for task in args.tasks:
        per_task[task] = {}
        for lib, agent in configs:
            rs = [r for r in runs if (r["lib"], r["agent"], r["task"]) == (lib, agent, task)]
            if rs:
                per_task[task][f"{lib}/{agent}"] = {
                    "held": mean_interval([held(r) for r in rs]), "mmer": statistics.fmean(r["mmer"] for r in rs),
                    "seeds": sorted(r["seed"] for r in rs), "wall_s": statistics.fmean(r["wall_s"] for r in rs)}
    aggregate, suite = {}, suite_scores()
    for lib, agent in configs:
        key = f"{lib}/{agent}"
        tasks = [t for t in args.tasks if key in per_task[t]]
        if tasks:
            # normalised per task by conf/suite/popgym_easy.yaml ((held - random) / (1 - random)), then the mean
            # over tasks; 95% CI by cpcrl.stats' stratified bootstrap (seeds resampled within each task), as
            # cpcrl-report computes it
            scores = [normalise([held(r) for r in runs if (r["lib"], r["agent"], r["task"]) == (lib, agent, t)],
                                *suite[t]) for t in tasks]
            point, low, high = bootstrap_interval(mean_score, [scores])
            aggregate[key] = {"tasks": len(tasks), "mean_normalised": float(point), "ci": [float(low), float(high)]}
    lines = ["| task | " + " | ".join(f"{lib}/{agent} held (95% CI) · MMER" for lib, agent in configs) + " |",
             "|---|" + "---|" * len(configs)]
    for task, cells in per_task.items():
        row = []
        for lib, agent in configs:
            c = cells.get(f"{lib}/{agent}")
            row.append(f"{c['held'][0]:.3f} ({c['held'][1]:.3f}, {c['held'][2]:.3f}) · {c['mmer']:.3f} "
                       f"[{len(c['seeds'])}]" if c else "-")
        lines.append(f"| {task} | " + " | ".join(row) + " |")
    lines.append("| **normalised mean over tasks** | " + " | ".join(
        f"**{aggregate[k]['mean_normalised']:.3f}** ({aggregate[k]['ci'][0]:.3f}, {aggregate[k]['ci'][1]:.3f})"
        if (k := f"{lib}/{agent}") in aggregate else "-" for lib, agent in configs) + " |")
    print("\n".join(lines))
    return {"per_task": per_task, "aggregate": aggregate, "markdown": "\n".join(lines)}


# --- probe: `cpcrl mode=probe` on each finished cpcrl run's checkpoint --------------------------------------------

PROBE_TASKS = ["RepeatFirstEasy", "RepeatPreviousEasy", "CountRecallEasy", "PositionOnlyCartPoleEasy"]


def probe(args) -> dict:
    """Belief probes (cpcrl.probes: the env's hidden state decoded from the belief on held-out episodes, with the
    random-init-agent and raw-observation controls) of every cpcrl run of PROBE_TASKS; mean and 95% CI over seeds."""
    from cpcrl.stats import mean_interval  # not in the sb3 venv
    out, rows = Path(args.out), []
    runs = [r for r in load_runs(out) if r["lib"] == "cpcrl" and r["task"] in PROBE_TASKS and r["steps"] == args.steps]

    def one(r):
        run_dir = out / run_name("cpcrl", r["agent"], r["task"], r["seed"], r["steps"])
        if not list(run_dir.glob("probe/*/probe.json")):  # mode=probe writes <run>/probe/<time>/probe.json
            subprocess.run([sys.executable, "-m", "cpcrl", "mode=probe", f"checkpoint={run_dir}", "device=cpu",
                            "device.threads=1", "logger=none"], check=True, capture_output=True)
        newest = sorted(run_dir.glob("probe/*/probe.json"))[-1]
        return {**{k: r[k] for k in ("agent", "task", "seed")}, "held": held(r),
                "probe": json.loads(newest.read_text())}

    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(one, runs))
    table = {}
    for task in PROBE_TASKS:
        for agent in sorted({r["agent"] for r in rows}):
            rs = [r for r in rows if (r["task"], r["agent"]) == (task, agent)]
            if not rs:
                continue
            scores = {k: v for k, v in rs[0]["probe"].items() if isinstance(v, (int, float))
                      and k.split("/")[-1] in ("class_acc", "state_r2", "class_acc_mlp", "state_r2_mlp")}
            table[f"{task}/{agent}"] = {"held": mean_interval([r["held"] for r in rs]),
                                        "seeds": [r["seed"] for r in rs],
                                        **{k: mean_interval([r["probe"][k] for r in rs]) for k in scores}}
    for key, cells in table.items():
        print(key, {k: (round(v[0], 3), round(v[1], 3), round(v[2], 3)) if isinstance(v, tuple) else v
                    for k, v in cells.items()})
    return {"rows": rows, "table": table}


def machine() -> dict:
    sys.path.insert(0, str(HERE))
    from machine_info import cpu_model
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "date": dt.datetime.now().isoformat(timespec="seconds")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", nargs="?", default="all", choices=["learn", "throughput", "table", "probe", "all", "_sb3"])
    p.add_argument("--lib", default="cpcrl", choices=["cpcrl", "sb3"])
    p.add_argument("--agent", default="ppo_lstm", help="cpcrl agent (ppo_lstm | cpc_rl | ...)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="learn: extra cpcrl overrides, e.g. agent.train_ratio=32 (give --label too)")
    p.add_argument("--label", default=None, help="learn: the runs' name in files and tables (default: --agent)")
    p.add_argument("--tasks", nargs="+", default=TASKS)
    p.add_argument("--task", help=argparse.SUPPRESS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=100_000, help="env steps per run (all envs together)")
    p.add_argument("--matched", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (one torch thread each)")
    p.add_argument("--out", default=str(RUNS), help="where each run's result json goes")
    p.add_argument("--sb3-python", default=None, help="python of a venv with sb3-contrib and popgym")
    p.add_argument("--rounds", type=int, default=5, help="throughput: paired rounds")
    p.add_argument("--throughput-task", default="RepeatPreviousEasy")
    p.add_argument("--throughput-steps", type=int, default=20_480)
    p.add_argument("--json", nargs="?", const="", default=None, metavar="PATH",
                   help="write the result (to PATH, default benchmarks/results/popgym_<kind>.json)")
    args = p.parse_args()
    if args.kind == "_sb3":
        return sb3_worker(args)
    if args.kind in ("learn", "all"):
        if args.kind == "all":
            for lib, agent, seeds in (("cpcrl", "ppo_lstm", args.seeds), ("cpcrl", "cpc_rl", args.seeds),
                                      ("sb3", "RecurrentPPO", args.seeds[:2])):
                if lib == "sb3" and not sb3_python(args):
                    print("sb3-contrib runs skipped: pass --sb3-python (see the docstring)")
                    continue
                learn(argparse.Namespace(**{**vars(args), "lib": lib, "agent": agent, "seeds": seeds}))
        else:
            learn(args)
    result = {"kind": args.kind, "machine": machine(), "steps": args.steps, "evals": EVALS,
              "eval_episodes": EVAL_EPISODES, "held": HELD}
    if args.kind in ("table", "all"):
        result["table"] = table(args)
    if args.kind in ("probe", "all"):
        result["probe"] = probe(args)
    if args.kind == "throughput" or (args.kind == "all" and sb3_python(args)):
        result["throughput"] = throughput(args)
    if args.json is not None:
        path = Path(args.json) if args.json else RESULTS / f"popgym_{args.kind}.json"
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
