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

from cpcrl import device as devices, probes
from cpcrl.agents import make_agent
from cpcrl.checkpoint import Checkpointer, load_checkpoint, numpy_to_torch, torch_to_numpy
from cpcrl.collector import Collector, evaluate
from cpcrl.errors import ConfigError
from cpcrl.logging import Logger
from cpcrl.run_dir import remove_stale_temp_files


class TrainingDiverged(RuntimeError):
    """A loss became NaN/inf; the run stops (keeping its last checkpoint, if it has written one)."""


def _missing_dependency(exc: BaseException | None) -> str | None:
    """gymnasium's DependencyNotInstalled (or an ImportError) somewhere in an exception's causes: its first line."""
    from gymnasium.error import DependencyNotInstalled

    while exc is not None:
        if isinstance(exc, (DependencyNotInstalled, ImportError)):
            return " ".join(str(exc).split()) or type(exc).__name__
        exc = exc.__cause__ or exc.__context__
    return None


def make_env(env_cfg: DictConfig, num_envs: int | None = None):
    overrides = {} if num_envs is None else {"num_envs": num_envs}
    try:
        return hydra.utils.instantiate(env_cfg, **overrides)
    except hydra.errors.InstantiationException as e:
        if isinstance(e.__cause__, (ValueError, ConfigError)):
            raise ConfigError(f"env={env_cfg.name}: {e.__cause__}") from None
        missing = _missing_dependency(e.__cause__)
        if missing:
            which = f"env.id={env_cfg.id}" if env_cfg.get("id") else f"env={env_cfg.name}"
            raise ConfigError(f"{which} needs a package that is not installed: {missing}") from None
        raise


def build_agent(cfg: DictConfig, envs, device: torch.device):
    return make_agent(cfg.agent, cfg.world_model, envs.single_observation_space, envs.single_action_space, device,
                      cfg.device.compile)


def load_agent_state(agent, payload: dict, source) -> None:
    if payload.get("agent_name") != agent.name:
        raise ConfigError(f"checkpoint {source} holds agent={payload.get('agent_name')}, not agent={agent.name}")
    try:
        agent.load_checkpoint_state(payload["agent"])
    except (RuntimeError, KeyError, ValueError) as e:
        first = " ".join(str(e).split())[:300]
        raise ConfigError(f"checkpoint {source} does not fit agent={agent.name} as configured: {first}") from None


def evaluate_all(cfg: DictConfig, agent, eval_envs, episodes: int, depths=(), final: bool = False) -> dict[str, float]:
    """The eval metrics; for the cube also the solve rate per scramble length (`depths`) and, at a final eval,
    the evaluation by true distance and on uniformly random states (eval.cube_*, `cpcrl.cube_eval`); the
    uniform figure also at every periodic eval with eval.cube_curve_states (the training curve)."""
    metrics = evaluate(agent, eval_envs, episodes, greedy=cfg.eval.greedy)
    if cfg.eval.get("reset_hidden_every"):
        k = int(cfg.eval.reset_hidden_every)
        metrics.update(evaluate(agent, eval_envs, episodes, cfg.eval.greedy, prefix=f"eval_reset{k}/",
                                reset_hidden_every=k))
    if depths and hasattr(eval_envs, "set_start"):  # eval.depths are scramble lengths whatever env.scramble is
        mode, base_depth = eval_envs.scramble_mode, eval_envs.curriculum_depth
        for d in depths:
            eval_envs.set_start("moves", int(d))
            metrics[f"eval/solve_rate_d{int(d)}"] = evaluate(agent, eval_envs, episodes,
                                                             cfg.eval.greedy)["eval/solve_rate"]
        eval_envs.set_start(mode, base_depth)
    if not hasattr(eval_envs, "set_start"):
        return metrics
    from cpcrl.cube_eval import evaluate_by_distance, evaluate_uniform

    steps, frame = int(cfg.eval.cube_max_steps), eval_envs.frame  # played as the agent's env holds the cube
    if final and cfg.eval.cube_per_distance:
        metrics.update(evaluate_by_distance(agent, int(cfg.eval.cube_per_distance), max_steps=steps, frame=frame))
    uniform = int(cfg.eval.cube_uniform_states if final else cfg.eval.cube_curve_states)
    if uniform:  # the curve's evals use the first cube_curve_states of the final eval's cubes (fixed seed)
        metrics.update(evaluate_uniform(agent, uniform, max_steps=steps, frame=frame))
    return metrics


def sync_eval_depth(train_envs, eval_envs) -> None:
    """Evaluate the cube at the depth the curriculum has reached, not at its start."""
    if hasattr(eval_envs, "set_scramble_depth"):
        eval_envs.set_scramble_depth(int(train_envs.curriculum_depth))


def check_finite(metrics: dict, env_step: int, kept: str) -> None:
    """Stop on the first non-finite loss (a loss before the grad norm it causes); `kept` says what is kept."""
    bad = [k for k, v in metrics.items() if k.startswith("loss/") and not math.isfinite(v)]
    if bad:
        first = next((k for k in bad if "grad_norm" not in k), bad[0])
        also = f" (also non-finite: {', '.join(k for k in bad if k != first)})" if len(bad) > 1 else ""
        raise TrainingDiverged(f"{first} became {metrics[first]} at env step {env_step}{also}; the run stops, {kept} "
                               "(try a lower learning rate or grad clipping)")


def max_mean_return(mmer: float | None, return_sum: float, episodes: int) -> float | None:
    """`train/mmer`, POPGym's MMER (Morad et al. 2023): the max over training so far of the mean episodic return
    per collection batch. Here a batch is one train iteration (`Agent.train_iteration`: a PPO rollout, a REINFORCE
    episode batch, a world model's collection, prefill included) and its mean is over the episodes that ended in it
    (`return_sum` / `episodes`, `Collector.take_ended`). An iteration in which no episode ended has no mean and does
    not count; before the first one that does there is no value (None: not logged). -> the running max."""
    if episodes == 0:
        return mmer
    mean = return_sum / episodes
    return mean if mmer is None else max(mmer, mean)


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


class Every:
    """Env steps at which something recurs: every `n` steps from `start` (n = 0: never before the end)."""

    def __init__(self, n: int, start: int, total: int):
        self.n = int(n) if int(n) > 0 else total + 1
        self.next = start + self.n

    def due(self, step: int) -> bool:
        return step >= self.next

    def advance(self, step: int) -> None:
        """Past `step` (an iteration may jump over several due points)."""
        while self.next <= step:
            self.next += self.n


class TrainingRun:
    """One run's parts (envs, agent, collector, logger, checkpoints, schedules), resumed from `cfg.resume` when
    given, and the named steps of the loop in `train`."""

    def __init__(self, cfg: DictConfig, run_dir: Path, device: torch.device, console: Console):
        self.cfg, self.console, self.total = cfg, console, int(cfg.train.total_steps)
        self.envs = make_env(cfg.env)
        self.eval_envs = make_env(cfg.env, num_envs=min(int(cfg.eval.num_envs), int(cfg.eval.episodes)))
        self.agent = build_agent(cfg, self.envs, device)
        self.ckpt = Checkpointer(run_dir, int(cfg.checkpoint.every), int(cfg.checkpoint.keep))
        stale = remove_stale_temp_files(run_dir)  # the caller holds the run dir's lock: no writer is mid-write
        if stale:
            console.print(f"removed {len(stale)} stale temp file(s) of an interrupted write: "
                          + ", ".join(str(p.relative_to(run_dir)) for p in stale))
        resume_step, wandb_id, counters = self._resume()
        self.saved_step = resume_step  # env step of checkpoints/last.pt (None: none written yet)
        # Envs restart episodes on resume; their seed follows the step so a resumed run is repeatable.
        self.collector = Collector(self.envs, device, seed=int(cfg.seed) + (resume_step or 0))
        self.collector.env_step, self.collector.episodes = counters.get("env_step", 0), counters["episodes"]
        self.eval_envs.reset(seed=int(cfg.seed) + 1_000_003)
        self.logger = Logger(cfg, run_dir, self.agent.name, resume_step=resume_step, wandb_id=wandb_id)
        self.probe_envs = make_env(cfg.env, num_envs=int(cfg.eval.num_envs)) if cfg.eval.probe else None
        self.probe_control = (probes.random_control(cfg, self.probe_envs, device, int(cfg.seed) + 7)
                              if cfg.eval.probe else None)

        self.iteration, self.step0 = counters["iteration"], self.collector.env_step
        self.mmer = counters.get("mmer")  # a running max over the whole run (absent from older checkpoints)
        # train.max_minutes: a wall-clock budget across resumes (the time before a resume is in the counters)
        self.budget_s = None if cfg.train.get("max_minutes") is None else 60.0 * float(cfg.train.max_minutes)
        self.wall0 = time.monotonic() - float(counters.get("wall_s", 0.0))
        self.log_at = Every(cfg.train.log_every, self.step0, self.total)
        self.eval_at = Every(cfg.eval.every, self.step0, self.total)
        self.ckpt_at = Every(cfg.checkpoint.every, self.step0, self.total)
        self.pending: dict[str, list] = defaultdict(list)   # metrics of the iterations since the last log row
        self.train_time, self.mark_step, self.mark_time = 0.0, self.step0, 0.0
        self.progress = _progress(console)
        self.task = self.progress.add_task(self.agent.name, total=self.total, completed=self.step0, sps=0,
                                           episodes=0, ret="-", solve="-")

    def _resume(self) -> tuple[int | None, str | None, dict]:
        if not self.cfg.resume:
            return None, None, {"iteration": 0, "episodes": 0}
        payload = load_checkpoint(self.cfg.resume)
        load_agent_state(self.agent, payload, self.cfg.resume)
        counters = payload["counters"]
        devices.set_rng_state(payload["rng"])
        if "env" in payload and hasattr(self.envs, "set_state"):
            self.envs.set_state(torch_to_numpy(payload["env"]))
        self.console.print(f"resumed from env step {counters['env_step']:,} ({self.cfg.resume})")
        return counters["env_step"], payload.get("wandb_id"), counters

    def kept(self) -> str:
        """What a run stopped now leaves to resume from, said truthfully."""
        if self.saved_step is None:
            return (f"before its first checkpoint (due at env step {self.ckpt_at.next:,}): no checkpoint is kept, "
                    "nothing to resume")
        return (f"keeping {self.ckpt.dir / 'last.pt'} of env step {self.saved_step:,} "
                f"(resume={self.ckpt.dir.parent} continues from it)")

    def out_of_time(self) -> bool:
        return self.budget_s is not None and time.monotonic() - self.wall0 >= self.budget_s

    # --- the steps of the loop ----------------------------------------------------------------------------

    def iterate(self) -> None:
        """Collect and update (the agent's own schedule), then keep the metrics for the next log row."""
        t0 = time.perf_counter()
        metrics = self.agent.train_iteration(self.collector)
        self.train_time += time.perf_counter() - t0
        self.iteration += 1
        self.mmer = max_mean_return(self.mmer, *self.collector.take_ended())
        check_finite(metrics, self.collector.env_step, self.kept())
        for k, v in metrics.items():
            self.pending[k].append(v)

    def log(self, step: int) -> None:
        """One metrics.jsonl / W&B row: the mean of the iterations since the last row, episode stats, speed."""
        sps = (step - self.mark_step) / max(self.train_time - self.mark_time, 1e-9)
        row = {k: float(np.mean(v)) for k, v in self.pending.items()}
        row.update(self.collector.episode_metrics())
        row.update({"perf/sps": sps, "train/iteration": self.iteration})
        if self.mmer is not None:
            row["train/mmer"] = self.mmer
        if getattr(self.envs, "curriculum", None) is not None:
            row["train/curriculum_depth"] = float(self.envs.curriculum_depth)
        self.logger.log(row, step)
        self.pending.clear()
        self.mark_step, self.mark_time = step, self.train_time
        self.log_at.advance(step)
        fmt = lambda k: f"{row[k]:.3g}" if k in row else "-"  # noqa: E731
        self.progress.update(self.task, sps=sps, episodes=self.collector.episodes, ret=fmt("train/episode_return"),
                             solve=fmt("train/solve_rate"))

    def evaluate(self, step: int, depths=(), final: bool = False) -> dict[str, float]:
        sync_eval_depth(self.envs, self.eval_envs)
        metrics = evaluate_all(self.cfg, self.agent, self.eval_envs, int(self.cfg.eval.episodes), depths, final)
        if self.probe_envs is not None:  # eval.probe: envs of their own, so the evaluations stay as they were
            metrics.update(probes.probe_metrics(self.agent, self.probe_envs, int(self.cfg.eval.probe_episodes),
                                                self.probe_control, seed=int(self.cfg.seed) + 2_000_003))
        self.logger.log(metrics, step)
        self.eval_at.advance(step)
        return metrics

    def checkpoint(self, step: int, periodic: bool = True) -> None:
        payload = {"agent": self.agent.checkpoint_state(), "rng": devices.rng_state(),
                   "wandb_id": self.logger.wandb_id, "agent_name": self.agent.name,
                   "config": OmegaConf.to_yaml(self.cfg, resolve=True),
                   "counters": {"env_step": self.collector.env_step, "episodes": self.collector.episodes,
                                "iteration": self.iteration, "wall_s": time.monotonic() - self.wall0}}
        if self.mmer is not None:
            payload["counters"]["mmer"] = self.mmer
        if hasattr(self.envs, "get_state"):
            payload["env"] = numpy_to_torch(self.envs.get_state())
        self.ckpt.save(payload, step, periodic=periodic)
        self.saved_step = step
        self.ckpt_at.advance(step)

    def finish(self, run_dir: Path) -> dict:
        """The final evaluation (with eval.depths), last checkpoint, summary.json and the summary table."""
        cfg, step = self.cfg, self.collector.env_step
        if step < self.total:
            self.console.print(f"train.max_minutes={cfg.train.max_minutes} reached at env step {step:,}")
        final = self.evaluate(step, depths=list(cfg.eval.depths), final=True)
        self.checkpoint(step, periodic=False)
        summary = {"env_step": step, "episodes": self.collector.episodes,
                   "perf/sps": (step - self.step0) / max(self.train_time, 1e-9),
                   "time_s": round(time.time() - self.logger.start, 2),
                   "stopped_by": "total_steps" if step >= self.total else "max_minutes", **final}
        summary.update({k: v for k, v in self.collector.episode_metrics().items() if k != "train/episodes"})
        if self.mmer is not None:
            summary["train/mmer"] = self.mmer
        self.logger.summary(summary)
        write_json(run_dir / "summary.json", summary)
        self.console.print(summary_table(f"{self.agent.name} on {cfg.env.name} (seed {cfg.seed})", summary))
        self.console.print(f"run dir: {run_dir}")
        return summary

    def close(self, exit_code: int) -> None:
        self.logger.close(exit_code)
        self.envs.close()
        self.eval_envs.close()
        if self.probe_envs is not None:
            self.probe_envs.close()


def train(cfg: DictConfig, run_dir: Path, device: torch.device, console: Console) -> dict:
    """docs/ARCHITECTURE.md's data flow: collect + update -> log -> evaluate -> checkpoint, until train.total_steps
    (or train.max_minutes); then the final evaluation, checkpoint and summary."""
    run = TrainingRun(cfg, run_dir, device, console)
    exit_code = 1
    try:
        with run.progress:
            while run.collector.env_step < run.total and not run.out_of_time():
                run.iterate()
                step = run.collector.env_step
                if run.log_at.due(step) or step >= run.total:
                    run.log(step)
                if run.eval_at.due(step) and step < run.total:
                    run.evaluate(step)
                if run.ckpt_at.due(step) and step < run.total:
                    run.checkpoint(step)
                run.progress.update(run.task, completed=step)
        summary = run.finish(run_dir)
        exit_code = 0
        return summary
    finally:
        run.close(exit_code)


def _typed_env_overrides() -> list[str]:
    """The `env=...` / `env.<key>=...` overrides typed on this command line (none outside a Hydra run)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task if o.lstrip("+~").split("=", 1)[0].split(".")[0] == "env"]


def _space_text(space) -> str:
    return " ".join(str(space).split())[:120]


def _env_diff(have: DictConfig, want: DictConfig) -> list[str]:
    a, b = OmegaConf.to_container(have, resolve=True), OmegaConf.to_container(want, resolve=True)
    flat = lambda d, pre="env.": {k2: v2 for k, v in d.items() for k2, v2 in  # noqa: E731
                                  (flat(v, f"{pre}{k}.").items() if isinstance(v, dict) and v else [(pre + k, v)])}
    a, b = flat(a), flat(b)
    return [f"{k}={b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def checkpoint_env(cfg: DictConfig, saved: DictConfig, console: Console | None = None) -> DictConfig:
    """The env a checkpoint is evaluated on: its run's, or, when env overrides were typed on this command line
    (composed on the run's own env overrides, `app._rewrite_args`), this command's env where the agent's
    observation and action spaces fit it (the keys that differ are printed); else one line saying what differs."""
    if not _typed_env_overrides():
        return saved.env
    changed = _env_diff(saved.env, cfg.env)
    if not changed:
        return saved.env
    shown = " ".join(changed)
    shown = shown if len(shown) <= 200 else shown[:197] + "..."
    trained, asked = make_env(saved.env, num_envs=1), make_env(cfg.env, num_envs=1)
    try:
        for what in ("observation", "action"):
            have, want = getattr(trained, f"single_{what}_space"), getattr(asked, f"single_{what}_space")
            if have != want:
                raise ConfigError(f"env overrides {shown} do not fit checkpoint {cfg.checkpoint.path}: its agent acts "
                                  f"on {what} space {_space_text(have)}, this env has {_space_text(want)} (valid: env "
                                  f"overrides that keep the observation and action spaces)")
    finally:
        trained.close()
        asked.close()
    (console or Console()).print(f"env overrides applied (the agent's observation and action spaces fit): {shown}")
    return cfg.env


def load_trained_agent(cfg: DictConfig, device: torch.device, num_envs: int, console: Console | None = None):
    """The checkpoint `cfg.checkpoint.path` in the agent and env its saved config describes, with this command
    line's eval, solve and device keys and its env overrides (`checkpoint_env`).
    -> (payload, run config, envs, agent)."""
    payload = load_checkpoint(cfg.checkpoint.path)
    saved = OmegaConf.create(payload["config"])
    run_cfg = OmegaConf.merge(saved, {"eval": cfg.eval, "solve": cfg.solve, "probe": cfg.probe, "device": cfg.device})
    run_cfg.env = checkpoint_env(cfg, saved, console)
    envs = make_env(run_cfg.env, num_envs=num_envs)
    agent = build_agent(run_cfg, envs, device)
    load_agent_state(agent, payload, cfg.checkpoint.path)
    return payload, run_cfg, envs, agent


def evaluate_checkpoint(cfg: DictConfig, run_dir: Path, device: torch.device, console: Console) -> dict:
    """mode=eval: load a checkpoint into the agent its config describes and report eval.json."""
    payload, run_cfg, envs, agent = load_trained_agent(cfg, device, min(int(cfg.eval.num_envs),
                                                                        int(cfg.eval.episodes)), console)
    envs.reset(seed=int(cfg.seed) + 1_000_003)
    if "env" in payload and hasattr(envs, "set_state"):
        # the depth the run had reached; the scrambles stay this eval's own (seed + 1_000_003), as in train,
        # not the training env's RNG stream
        envs.set_state({**torch_to_numpy(payload["env"]), "rng": envs.get_state()["rng"]})
        sync_eval_depth(envs, envs)
    depths = list(cfg.eval.depths) or (list(range(1, 15)) if hasattr(envs, "set_scramble_depth") else [])
    result = evaluate_all(run_cfg, agent, envs, int(cfg.eval.episodes), depths=depths, final=True)
    result = {"checkpoint": str(cfg.checkpoint.path), "env_step": payload["counters"]["env_step"], **result}
    write_json(run_dir / "eval.json", result)
    console.print(summary_table(f"eval: {payload['agent_name']} on {run_cfg.env.name}", result))
    console.print(f"wrote {run_dir / 'eval.json'}")
    envs.close()
    return result


def solve_checkpoint(cfg: DictConfig, run_dir: Path, device: torch.device, console: Console) -> dict:
    """mode=solve: batched beam search (`cpcrl.solve`) over a cube checkpoint's policy on solve.cubes uniformly
    random states; writes solve.json."""
    from cpcrl.solve import solve_uniform

    payload, run_cfg, envs, agent = load_trained_agent(cfg, device, 1, console)
    envs.close()
    if not hasattr(envs, "set_start"):
        raise ConfigError(f"mode=solve solves the cube: checkpoint {cfg.checkpoint.path} was trained on "
                          f"env={run_cfg.env.name}; valid are checkpoints of env=cube2x2")
    s = cfg.solve
    result = {"checkpoint": str(cfg.checkpoint.path), "env_step": payload["counters"]["env_step"],
              **solve_uniform(agent, int(s.cubes), int(s.beam_width), int(s.max_depth), float(s.value_weight),
                              int(s.max_beams), frame=envs.frame)}
    write_json(run_dir / "solve.json", result)
    console.print(summary_table(f"solve: {payload['agent_name']}, beam width {s.beam_width}", result))
    console.print(f"wrote {run_dir / 'solve.json'}")
    return result
