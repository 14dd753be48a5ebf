"""The training loop shared by every agent: collect+update (the agent's), log, evaluate, checkpoint."""

from __future__ import annotations

import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from cpcrl import device as devices
from cpcrl.checkpoint import Checkpointer, load_checkpoint, numpy_to_torch, torch_to_numpy
from cpcrl.collector import Collector, evaluate
from cpcrl.errors import ConfigError
from cpcrl.logging import Logger


class TrainingDiverged(RuntimeError):
    """A loss became NaN/inf; the run stops and keeps its last good checkpoint."""


def make_env(env_cfg: DictConfig, num_envs: int | None = None):
    overrides = {} if num_envs is None else {"num_envs": num_envs}
    try:
        return hydra.utils.instantiate(env_cfg, **overrides)
    except hydra.errors.InstantiationException as e:
        if isinstance(e.__cause__, (ValueError, ConfigError)):
            raise ConfigError(f"env={env_cfg.name}: {e.__cause__}") from None
        raise


def build_agent(cfg: DictConfig, envs, device: torch.device):
    cls = hydra.utils.get_class(cfg.agent._target_)
    hparams = OmegaConf.to_container(cfg.agent, resolve=True)
    hparams.pop("_target_"), hparams.pop("name")
    try:
        return cls(envs.single_observation_space, envs.single_action_space, device,
                   world_model=cfg.world_model, **hparams)
    except TypeError as e:
        raise ConfigError(f"agent={cfg.agent.name}: {e}") from None


def load_agent_state(agent, payload: dict, source) -> None:
    if payload.get("agent_name") != agent.name:
        raise ConfigError(f"checkpoint {source} holds agent={payload.get('agent_name')}, not agent={agent.name}")
    try:
        agent.load_checkpoint_state(payload["agent"])
    except (RuntimeError, KeyError, ValueError) as e:
        first = " ".join(str(e).split())[:300]
        raise ConfigError(f"checkpoint {source} does not fit agent={agent.name} as configured: {first}") from None


def evaluate_all(cfg: DictConfig, agent, eval_envs, episodes: int, depths=()) -> dict[str, float]:
    """The eval metrics; for the cube also the solve rate per scramble depth."""
    metrics = evaluate(agent, eval_envs, episodes, greedy=cfg.eval.greedy)
    if cfg.eval.get("reset_hidden_every"):
        k = int(cfg.eval.reset_hidden_every)
        metrics.update(evaluate(agent, eval_envs, episodes, cfg.eval.greedy, prefix=f"eval_reset{k}/",
                                reset_hidden_every=k))
    if depths and hasattr(eval_envs, "set_scramble_depth"):
        base_depth = eval_envs.curriculum_depth
        for d in depths:
            eval_envs.set_scramble_depth(int(d))
            metrics[f"eval/solve_rate_d{int(d)}"] = evaluate(agent, eval_envs, episodes,
                                                             cfg.eval.greedy)["eval/solve_rate"]
        eval_envs.set_scramble_depth(base_depth)
    return metrics


def sync_eval_depth(train_envs, eval_envs) -> None:
    """Evaluate the cube at the depth the curriculum has reached, not at its start."""
    if hasattr(eval_envs, "set_scramble_depth"):
        eval_envs.set_scramble_depth(int(train_envs.curriculum_depth))


def check_finite(metrics: dict, env_step: int) -> None:
    for k, v in metrics.items():
        if k.startswith("loss/") and not math.isfinite(v):
            raise TrainingDiverged(f"{k} became {v} at env step {env_step}; the run stops and keeps its last "
                                   "good checkpoint (try a lower learning rate or grad clipping)")


def summary_table(title: str, metrics: dict) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    return table


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} steps"),
        TextColumn("{task.fields[sps]:,.0f} sps"), TextColumn("ep {task.fields[episodes]}"),
        TextColumn("return {task.fields[ret]}"), TextColumn("solve {task.fields[solve]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
        disable=not console.is_terminal,
    )


def train(cfg: DictConfig, run_dir: Path, device: torch.device, console: Console) -> dict:
    total = int(cfg.train.total_steps)
    envs = make_env(cfg.env)
    eval_envs = make_env(cfg.env, num_envs=min(int(cfg.eval.num_envs), int(cfg.eval.episodes)))
    agent = build_agent(cfg, envs, device)
    ckpt = Checkpointer(run_dir, int(cfg.checkpoint.every), int(cfg.checkpoint.keep))

    resume_step, wandb_id, counters = None, None, {"iteration": 0, "episodes": 0}
    if cfg.resume:
        payload = load_checkpoint(cfg.resume)
        load_agent_state(agent, payload, cfg.resume)
        counters, wandb_id = payload["counters"], payload.get("wandb_id")
        resume_step = counters["env_step"]
        devices.set_rng_state(payload["rng"])
        if "env" in payload and hasattr(envs, "set_state"):
            envs.set_state(torch_to_numpy(payload["env"]))
        console.print(f"resumed from env step {resume_step:,} ({cfg.resume})")
    # Envs restart episodes on resume; their seed follows the step so a resumed run is repeatable.
    collector = Collector(envs, device, seed=int(cfg.seed) + (resume_step or 0))
    collector.env_step, collector.episodes = counters.get("env_step", 0), counters["episodes"]
    eval_envs.reset(seed=int(cfg.seed) + 1_000_003)

    logger = Logger(cfg, run_dir, agent.name, resume_step=resume_step, wandb_id=wandb_id)

    def payload_now() -> dict:
        out = {"agent": agent.checkpoint_state(), "rng": devices.rng_state(), "wandb_id": logger.wandb_id,
               "agent_name": agent.name, "config": OmegaConf.to_yaml(cfg, resolve=True),
               "counters": {"env_step": collector.env_step, "episodes": collector.episodes, "iteration": iteration,
                            "wall_s": time.monotonic() - wall0}}
        if hasattr(envs, "get_state"):
            out["env"] = numpy_to_torch(envs.get_state())
        return out

    every = lambda n: int(n) if int(n) > 0 else total + 1  # noqa: E731
    # train.max_minutes: a wall-clock budget across resumes (the time before a resume is in the counters)
    budget_s = None if cfg.train.get("max_minutes") is None else 60.0 * float(cfg.train.max_minutes)
    wall0 = time.monotonic() - float(counters.get("wall_s", 0.0))
    out_of_time = lambda: budget_s is not None and time.monotonic() - wall0 >= budget_s  # noqa: E731
    step0 = collector.env_step
    next_log = step0 + every(cfg.train.log_every)
    next_eval = step0 + every(cfg.eval.every)
    next_ckpt = step0 + every(cfg.checkpoint.every)
    iteration = counters["iteration"]
    pending = defaultdict(list)
    train_time, mark_step, mark_time = 0.0, step0, 0.0
    exit_code = 1
    try:
        with _progress(console) as progress:
            task = progress.add_task(agent.name, total=total, completed=step0, sps=0, episodes=0, ret="-", solve="-")
            while collector.env_step < total and not out_of_time():
                t0 = time.perf_counter()
                metrics = agent.train_iteration(collector)
                train_time += time.perf_counter() - t0
                iteration += 1
                check_finite(metrics, collector.env_step)
                for k, v in metrics.items():
                    pending[k].append(v)
                step = collector.env_step
                if step >= next_log or step >= total:
                    sps = (step - mark_step) / max(train_time - mark_time, 1e-9)
                    row = {k: float(np.mean(v)) for k, v in pending.items()}
                    row.update(collector.episode_metrics())
                    row.update({"perf/sps": sps, "train/iteration": iteration})
                    if getattr(envs, "curriculum", None) is not None:
                        row["train/curriculum_depth"] = float(envs.curriculum_depth)
                    logger.log(row, step)
                    pending.clear()
                    mark_step, mark_time = step, train_time
                    next_log += every(cfg.train.log_every) * max(1, (step - next_log) // every(cfg.train.log_every) + 1)
                    fmt = lambda k: f"{row[k]:.3g}" if k in row else "-"  # noqa: E731
                    progress.update(task, sps=sps, episodes=collector.episodes, ret=fmt("train/episode_return"),
                                    solve=fmt("train/solve_rate"))
                if step >= next_eval and step < total:
                    sync_eval_depth(envs, eval_envs)
                    logger.log(evaluate_all(cfg, agent, eval_envs, int(cfg.eval.episodes)), step)
                    while next_eval <= step:
                        next_eval += every(cfg.eval.every)
                if step >= next_ckpt and step < total:
                    ckpt.save(payload_now(), step)
                    while next_ckpt <= step:
                        next_ckpt += every(cfg.checkpoint.every)
                progress.update(task, completed=step)

        if collector.env_step < total:
            console.print(f"train.max_minutes={cfg.train.max_minutes} reached at env step {collector.env_step:,}")
        sync_eval_depth(envs, eval_envs)
        final = evaluate_all(cfg, agent, eval_envs, int(cfg.eval.episodes), depths=list(cfg.eval.depths))
        logger.log(final, collector.env_step)
        ckpt.save(payload_now(), collector.env_step, periodic=False)
        summary = {"env_step": collector.env_step, "episodes": collector.episodes,
                   "perf/sps": (collector.env_step - step0) / max(train_time, 1e-9),
                   "time_s": round(time.time() - logger.start, 2),
                   "stopped_by": "total_steps" if collector.env_step >= total else "max_minutes", **final}
        summary.update({k: v for k, v in collector.episode_metrics().items() if k != "train/episodes"})
        logger.summary(summary)
        write_json(run_dir / "summary.json", summary)
        console.print(summary_table(f"{agent.name} on {cfg.env.name} (seed {cfg.seed})", summary))
        console.print(f"run dir: {run_dir}")
        exit_code = 0
        return summary
    finally:
        logger.close(exit_code)
        envs.close()
        eval_envs.close()


def evaluate_checkpoint(cfg: DictConfig, run_dir: Path, device: torch.device, console: Console) -> dict:
    """mode=eval: load a checkpoint into the agent its config describes and report eval.json."""
    if not cfg.checkpoint.path:
        raise ConfigError("mode=eval needs a checkpoint: add checkpoint=<path to .pt or run dir>")
    payload = load_checkpoint(cfg.checkpoint.path)
    saved = OmegaConf.create(payload["config"])
    # The saved run defines the agent and env; the eval keys and device come from this command line.
    run_cfg = OmegaConf.merge(saved, {"eval": cfg.eval, "device": cfg.device})
    envs = make_env(run_cfg.env, num_envs=min(int(cfg.eval.num_envs), int(cfg.eval.episodes)))
    agent = build_agent(run_cfg, envs, device)
    load_agent_state(agent, payload, cfg.checkpoint.path)
    envs.reset(seed=int(cfg.seed) + 1_000_003)
    if "env" in payload and hasattr(envs, "set_state"):
        # the depth the run had reached; the scrambles stay this eval's own (seed + 1_000_003), as in train,
        # not the training env's RNG stream
        envs.set_state({**torch_to_numpy(payload["env"]), "rng": envs.get_state()["rng"]})
        sync_eval_depth(envs, envs)
    depths = list(cfg.eval.depths) or (list(range(1, 15)) if hasattr(envs, "set_scramble_depth") else [])
    result = evaluate_all(run_cfg, agent, envs, int(cfg.eval.episodes), depths=depths)
    result = {"checkpoint": str(cfg.checkpoint.path), "env_step": payload["counters"]["env_step"], **result}
    write_json(run_dir / "eval.json", result)
    console.print(summary_table(f"eval: {payload['agent_name']} on {run_cfg.env.name}", result))
    console.print(f"wrote {run_dir / 'eval.json'}")
    envs.close()
    return result
