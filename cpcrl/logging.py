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


def truncate_jsonl(path: Path, max_env_step: int) -> None:
    """Drop rows logged after a checkpoint, so a resumed run repeats no step (and drop a torn last line)."""
    if not path.exists():
        return
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


def _clean(value):
    value = float(value) if hasattr(value, "item") else value
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; the key stays so the row shape is stable
    return value


class Logger:
    def __init__(self, cfg, run_dir: Path, agent_name: str, resume_step: int | None = None,
                 wandb_id: str | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        if resume_step is not None:
            truncate_jsonl(self.path, resume_step)
        self.file = open(self.path, "a", buffering=1)
        self.start = time.time()
        self.wandb = None
        if cfg.logger.name == "wandb":
            self.wandb = self._init_wandb(cfg, agent_name, wandb_id)

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
            self.wandb.log({k: v for k, v in row.items() if v is not None and k != "time"})
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
