"""Metrics go to three places: metrics.jsonl (always), W&B (logger=wandb), and the rich console."""

from __future__ import annotations

import json
import math
import netrc
import os
import time
from pathlib import Path

from omegaconf import OmegaConf

from cpcrl.checks import choice

WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_mode(requested: str) -> str:
    """`auto` never stops to ask for a login: online only when a key is already configured."""
    choice("logger.mode", requested, WANDB_MODES)
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def truncate_jsonl(path: Path, max_env_step: int) -> list[dict]:
    """Drop rows logged after a checkpoint, so a resumed run repeats no step (and drop a torn last line).
    -> the rows kept."""
    if not path.exists():
        return []
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("env_step", 0) <= max_env_step:
            kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    return [json.loads(line) for line in kept]


def wandb_row(row: dict) -> dict:
    """A metrics.jsonl row as W&B gets it: no wall-clock `time`, no null (non-finite) values."""
    return {k: v for k, v in row.items() if v is not None and k != "time"}


def _clean(value):
    value = float(value) if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; the key stays so the row shape is stable
    return value


class Logger:
    """Row i of metrics.jsonl is W&B history step i (x-axis `env_step`). W&B's core buffers its run file, so a
    SIGKILL loses that file's recent rows (often all of them): a resume replays into the resumed W&B run the kept
    rows that the run's earlier files lack, and `wandb_file.run_history` then equals metrics.jsonl."""

    def __init__(self, cfg, run_dir: Path, agent_name: str, resume_step: int | None = None,
                 wandb_id: str | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        kept = truncate_jsonl(self.path, resume_step) if resume_step is not None else []
        self.step = len(kept)  # W&B step of the next row
        self.file = open(self.path, "a", buffering=1)
        self.start = time.time()
        self.wandb = None
        if cfg.logger.name == "wandb":
            from cpcrl.wandb_file import run_history  # wandb's protobufs: only for logger=wandb

            have = 0
            if wandb_id:  # the rows of this run the earlier W&B files hold: a contiguous prefix of kept
                steps = [h.get("_step") for h in run_history(self.run_dir, wandb_id)]
                while have < len(kept) and have < len(steps) and steps[have] == have:
                    have += 1
            self.wandb = self._init_wandb(cfg, agent_name, wandb_id)
            for i in range(have, len(kept)):
                self.wandb.log(wandb_row(kept[i]), step=i)

    def _init_wandb(self, cfg, agent_name, wandb_id):
        import wandb

        lcfg = cfg.logger
        mode = wandb_mode(lcfg.mode)
        run = wandb.init(
            project=lcfg.project, entity=lcfg.entity, group=lcfg.group or cfg.experiment_name,
            job_type=lcfg.job_type or agent_name, tags=list(lcfg.tags), name=lcfg.run_name,
            config=OmegaConf.to_container(cfg, resolve=True), dir=str(self.run_dir), mode=mode,
            id=wandb_id, resume="allow" if wandb_id else None,
            settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
        )
        run.define_metric("env_step")
        run.define_metric("*", step_metric="env_step")
        return run

    @property
    def wandb_id(self) -> str | None:
        return self.wandb.id if self.wandb is not None else None

    def log(self, metrics: dict, env_step: int) -> dict:
        row = {"env_step": int(env_step), "time": round(time.time() - self.start, 3)}
        row.update({k: _clean(v) for k, v in metrics.items()})
        self.file.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log(wandb_row(row), step=self.step)
        self.step += 1
        return row

    def summary(self, metrics: dict) -> None:
        if self.wandb is not None:
            for k, v in metrics.items():
                self.wandb.summary[k] = v

    def close(self, exit_code: int = 0) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=exit_code)
            self.wandb = None
