"""Belief probes next to returns: ppo_lstm, cpc_rl at CPC weights 0 / 0.1 / 1.0 and dreamer on cartpole_pomdp and the
T-maze, 3 seeds each, trained through the CLI with `eval.probe=true` and read back by cpcrl-report's probe table.

Does the contrastive loss make the belief carry more of the hidden state (Guo et al. 2018)? Per env and agent config:
the final return and the held-out probe scores of the belief, of a randomly initialised agent of the same
architecture and of the raw observation (all on the same steps), each a mean over seeds with a 95% bootstrap CI;
the paired difference belief - random per seed; and each CPC weight's belief score minus weight 0's (CI: each
group's seeds resampled on their own). A run's final value is the mean over its last `LAST_K` evaluations.

    python benchmarks/bench_probes.py --json benchmarks/results/probes.json   # ~35 min of one core

One job at a time, `device=cpu device.threads=1 logger=none`; dreamer runs last. `--only` picks agents, `--seeds`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cpcrl import report, stats

from machine_info import cpu_model  # sibling module: benchmarks/ is on sys.path when a script runs

LAST_K = 2  # evaluations in a run's final value: the budget's last two (see EVAL below)
COMMON = ("device=cpu", "device.threads=1", "logger=none", "checkpoint.every=0", "eval.probe=true")
# Per env: its budget for the PPO family (3 evaluations: the last 2 make the final value), the probe and eval episode
# counts (eval.num_envs envs play them side by side; the probes get as many envs of their own) and recurrent-PPO keys.
ENVS = {
    "cartpole_pomdp": {"steps": 30000, "eval": ("eval.every=10000", "eval.episodes=16", "eval.num_envs=16",
                                               "eval.probe_episodes=32"),
                       "ppo": ("env.num_envs=8", "train.log_every=4096")},  # = experiment=ppo_cartpole_pomdp's keys
    "tmaze": {"steps": 30000, "eval": ("eval.every=10000", "eval.episodes=32", "eval.num_envs=16",
                                      "eval.probe_episodes=64"),
              "ppo": ("env.num_envs=8", "train.log_every=4096", "agent.num_steps=32", "agent.truncation_length=16")},
}
# dreamer: the dreamer_v3_cartpole preset (size xs, train ratio 32) on the env; its budget is what a CPU core affords
DREAMER = {"steps": 10000, "eval_every": 5000}
AGENTS = {
    "ppo_lstm": ("agent=ppo_lstm",),
    "cpc_rl": ("agent=cpc_rl", "agent.cpc.weight=0,0.1,1.0"),
    "dreamer": ("experiment=dreamer_v3_cartpole",),
}
# what each env's table shows: cartpole_pomdp's hidden dims are the velocities (1: cart, 3: pole; 0 and 2 are in
# the obs), the T-maze's the cue (R^2 of +-1 and the linear / MLP accuracy)
SCORES = {"cartpole_pomdp": ("state1_r2", "state3_r2", "state_r2_mlp"),
          "tmaze": ("state_r2", "class_acc", "class_acc_mlp")}
SOURCES = ("belief", "random", "obs")


def command(agent: str, env: str, seeds: list[int], sweep_dir: Path) -> list[str]:
    if agent == "dreamer":
        budget = (f"train.total_steps={DREAMER['steps']}", f"eval.every={DREAMER['eval_every']}",
                  *(k for k in ENVS[env]["eval"] if not k.startswith("eval.every=")))
    else:
        budget = (f"train.total_steps={ENVS[env]['steps']}", *ENVS[env]["eval"], *ENVS[env]["ppo"])
    return [sys.executable, "-m", "cpcrl", "-m", *AGENTS[agent], f"env={env}", *budget, *COMMON,
            "seed=" + ",".join(map(str, seeds)), f"hydra.sweep.dir={sweep_dir}"]


def config_name(run: dict) -> str:
    """ppo_lstm | cpc_rl w=<weight> | dreamer, from the run's overrides."""
    o = run["overrides"]
    if o.get("experiment") == "dreamer_v3_cartpole":
        return "dreamer"
    return f"cpc_rl w={o['agent.cpc.weight']}" if o.get("agent") == "cpc_rl" else o["agent"]


def summarise(env: str, env_dir: Path) -> dict:
    """cpcrl-report on the env's runs (its report.md lands in env_dir) and, per config, the shown scores."""
    args = report.build_parser().parse_args([str(env_dir), "--last-k", str(LAST_K)])
    _, result = report.report(args)
    runs = [report.load_run(r) for r in report.find_runs([env_dir])]
    by_config: dict[str, list[dict]] = {}
    for r in runs:
        by_config.setdefault(config_name(r), []).append(r)
    label_of = {}  # report label -> our name (a report config holds the runs of one of ours)
    for label, group in report.group_runs(runs).items():
        label_of[label] = config_name(group[0])
    out = {}
    for row in result["tables"]["table"]:
        out.setdefault(label_of[row["config"]], {})["return"] = [row["mean"], row["ci_low"], row["ci_high"]]
    for row in result["tables"]["probes"]:
        if row["from"] == "metrics.jsonl" and row["score"] in SCORES[env]:
            name = label_of[row["config"]]
            out[name][row["score"]] = {s: [row[s], row[f"{s}_low"], row[f"{s}_high"]] for s in SOURCES if s in row}
    for name, group in by_config.items():
        finals = lambda key: np.array([report.final_score(r, key, LAST_K) for r in group], dtype=float)  # noqa: E731
        out[name]["seeds"] = len(group)
        out[name]["time_s"] = [r["summary"]["time_s"] for r in group]
        for score in SCORES[env]:
            paired = finals(f"probe/{score}") - finals(f"probe_random/{score}")
            out[name][score]["belief_minus_random"] = list(report.bootstrap_ci(paired))
            out[name][score]["per_seed"] = finals(f"probe/{score}").tolist()
    base = by_config.get("cpc_rl w=0")
    for name in ("cpc_rl w=0.1", "cpc_rl w=1.0"):
        if base and name in by_config:
            for score in SCORES[env]:
                x = [np.array([report.final_score(r, f"probe/{score}", LAST_K) for r in by_config[name]])]
                y = [np.array([report.final_score(r, f"probe/{score}", LAST_K) for r in base])]
                point, low, high = stats.bootstrap_interval(
                    lambda a, b: stats.mean_score(a) - stats.mean_score(b), [x, y], 10_000)
                out[name][score]["minus_weight_0"] = [float(point), float(low), float(high)]
    return out


def fmt(ci) -> str:
    return f"{ci[0]:.3f} [{ci[1]:.3f}, {ci[2]:.3f}]"


def children_cpu_s() -> float:
    """User + system CPU seconds of the finished child processes (the training sweeps) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def git_commit() -> str:
    def git(*a):
        return subprocess.run(["git", *a], capture_output=True, text=True).stdout.strip()
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    parser.add_argument("--only", nargs="+", default=list(AGENTS), choices=list(AGENTS))
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_probes") / time.strftime("%Y%m%d-%H%M%S"))
    parser.add_argument("--summarise", action="store_true", help="only read back the runs already under --out")
    parser.add_argument("--json", nargs="?", const="benchmarks/results/probes.json")
    args = parser.parse_args()
    commands, walls, cpus = [], {}, {}
    for agent in [a for a in AGENTS if a in args.only]:  # dreamer last: AGENTS' order
        for env in args.envs:
            cmd = command(agent, env, args.seeds, args.out / env / agent)
            commands.append(" ".join(cmd[2:]))
            if args.summarise:
                continue
            print(" ".join(cmd[2:]), flush=True)
            t0, cpu0 = time.time(), children_cpu_s()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            walls[f"{env}/{agent}"], cpus[f"{env}/{agent}"] = time.time() - t0, children_cpu_s() - cpu0
            print(f"  {walls[f'{env}/{agent}']:.0f} s wall, {cpus[f'{env}/{agent}']:.0f} s CPU", flush=True)
    result = {"machine": f"{cpu_model()}, {platform.python_version()}, torch {torch.__version__}",
              "date": dt.date.today().isoformat(), "commit": git_commit(), "last_k": LAST_K,
              "budgets": {"ENVS": ENVS, "DREAMER": DREAMER}, "commands": commands, "wall_s": walls,
              "wall_s_total": sum(walls.values()), "cpu_s": cpus, "cpu_s_total": sum(cpus.values()), "envs": {}}
    for env in args.envs:
        result["envs"][env] = table = summarise(env, args.out / env)
        print(f"\n{env} (final = mean of the last {LAST_K} evaluations; 95% CIs over {len(args.seeds)} seeds)")
        for name, row in table.items():
            print(f"  {name:<14} return {fmt(row['return'])}")
            for score in SCORES[env]:
                s = row[score]
                extra = f"  vs w=0 {fmt(s['minus_weight_0'])}" if "minus_weight_0" in s else ""
                print(f"    {score:<14} " + "  ".join(f"{k} {fmt(s[k])}" for k in SOURCES if k in s)
                      + f"  belief-random {fmt(s['belief_minus_random'])}{extra}")
    print(f"\nwall {result['wall_s_total']:.0f} s, CPU {result['cpu_s_total']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
