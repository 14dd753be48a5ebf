"""The `cpcrl` command: compose the config with Hydra, check it, then train or evaluate.

Bad input never reaches Hydra's run dir: overrides are composed and validated first (one line on
stderr, exit status 2), so a typo leaves nothing half written under outputs/.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import hydra
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from rich.console import Console

from cpcrl import run_dir as run_dirs
from cpcrl.checkpoint import CheckpointWriteError, find_checkpoint, load_checkpoint
from cpcrl.config import CHECKPOINT_MODES, validate
from cpcrl.errors import ConfigError

CONFIG_MODULE = "cpcrl.conf"
HYDRA_FLAGS_WITHOUT_RUN = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion",
                           "-sc", "--version", "--resolve", "-p", "--package")


def fail(message: str, code: int = 2) -> None:
    print(f"cpcrl: error: {message}", file=sys.stderr)
    sys.exit(code)


def _one_line(exc: BaseException) -> str:
    """Hydra's composition errors span several lines; keep what is wrong and the valid options."""
    text = str(exc).split("Config search path")[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "HYDRA_FULL_ERROR" not in ln]
    if "Could not find 'hydra/" in text:
        lines.append("(launcher and sweeper plugins come with: pip install 'cpcrl[sweep]' or 'cpcrl[ray]')")
    cause = str(exc.__cause__).strip().splitlines()[0] if exc.__cause__ and str(exc.__cause__).strip() else ""
    if cause and lines:
        lines[0] = f"{lines[0].rstrip('.')}: {cause}."
    return " ".join(lines).replace("\t", " ")


# Presets chosen like keys: `agent.version=v1` is short for the config group choice `agent/dreamer_version=v1`.
PRESET_KEYS = {"agent.version": "agent/dreamer_version", "agent.size": "agent/dreamer_size",
               "agent.planner": "agent/planner"}


def _rewrite_args(args: list[str]) -> list[str]:
    """`checkpoint=PATH` is short for checkpoint.path; `resume=PATH` re-runs that run's overrides in its dir;
    PRESET_KEYS name preset groups (`agent.size=null` drops the preset)."""
    out = []
    for a in args:
        key, _, value = a.partition("=")
        if a.startswith("checkpoint=") and a != "checkpoint=null":
            a = "checkpoint.path=" + value
        elif key in PRESET_KEYS:
            a = f"~{PRESET_KEYS[key]}" if value == "null" else f"{PRESET_KEYS[key]}={value}"
        out.append(a)
    resume = [a.split("=", 1)[1] for a in out if a.startswith("resume=") and a != "resume=null"]
    if resume:
        ckpt = find_checkpoint(resume[-1]).resolve()
        run_dir = ckpt.parent.parent
        saved_file = run_dir / ".hydra" / "overrides.yaml"
        if not saved_file.exists():
            raise ConfigError(f"cannot resume: {saved_file} is missing (resume needs a run dir made by cpcrl)")
        saved = [o for o in yaml.safe_load(saved_file.read_text()) or []
                 if not o.startswith(("resume=", "hydra.run.dir="))]
        out = saved + [a if not a.startswith("resume=") else f"resume={ckpt}" for a in out]
        out.append(f"hydra.run.dir={run_dir}")
    mode = next((m for m in CHECKPOINT_MODES if f"mode={m}" in out), None)  # they write into the trained run's dir
    paths = [a.split("=", 1)[1] for a in out if a.startswith("checkpoint.path=")]
    out_dir = [a.split("=", 1)[1] for a in out if a.startswith("eval.out_dir=") and a != "eval.out_dir=null"]
    env_keys = [a for a in out if a.lstrip("+~").split("=", 1)[0].split(".")[0] == "env"]
    if mode and paths and env_keys and not any(a.lstrip("+~").split("=", 1)[0] == "env" for a in env_keys):
        # env.<key>=... of an eval composes on the checkpoint's env (train.checkpoint_env checks that it fits)
        saved_file = find_checkpoint(paths[-1]).resolve().parent.parent / ".hydra" / "overrides.yaml"
        if saved_file.exists():
            saved = yaml.safe_load(saved_file.read_text()) or []
            out = [o for o in saved if o.lstrip("+~").split("=", 1)[0].split(".")[0] == "env"] + out
    if mode and paths and not any(a.startswith("hydra.run.dir=") for a in out):
        run_dir = find_checkpoint(paths[-1]).resolve().parent.parent
        if mode == "eval" and out_dir:
            out.append(f"hydra.run.dir={out_dir[-1]}")
        else:
            out.append(f"hydra.run.dir={run_dir}/{mode}/" + "${now:%Y-%m-%d_%H-%M-%S}")
    return out


PLUGIN_EXTRAS = {"hydra_plugins.hydra_joblib_launcher": ("hydra-joblib-launcher", "sweep"),
                 "hydra_plugins.hydra_submitit_launcher": ("hydra-submitit-launcher", "sweep"),
                 "hydra_plugins.hydra_optuna_sweeper": ("hydra-optuna-sweeper", "sweep"),
                 "hydra_plugins.hydra_ray_launcher": ("hydra-ray-launcher", "ray")}


def _check_plugins(hydra_cfg) -> None:
    """A launcher or sweeper whose plugin is missing fails at launch with a trace; say which extra to install."""
    for role in ("launcher", "sweeper"):
        target = str(hydra_cfg[role].get("_target_", ""))
        for module, (package, extra) in PLUGIN_EXTRAS.items():
            if target.startswith(module) and importlib.util.find_spec(module) is None:
                raise ConfigError(f"hydra/{role} needs the {package} plugin, which is not installed: "
                                  f"pip install 'cpcrl[{extra}]'")


def _compose_checks(args: list[str]) -> DictConfig:
    """Compose every value of every sweep once, so a bad option or key fails before any run starts.
    -> the config without sweep values, with its hydra node (hydra.run.dir, hydra.mode)."""
    from hydra import compose, initialize_config_module

    overrides = [a for a in args if not a.startswith("-")]
    parsed = OverridesParser.create().parse_overrides(overrides)
    hydra_args = [o.input_line for o in parsed if o.is_hydra_override() and "/" in o.get_key_element()]
    base = [o.input_line for o in parsed if not o.is_sweep_override() and not o.is_hydra_override()]
    variants = [base]
    for o in parsed:
        if o.is_sweep_override() and not o.is_hydra_override():
            key = o.get_key_element()
            others = [p.input_line if not p.is_sweep_override()
                      else f"{p.get_key_element()}={next(p.sweep_string_iterator())}"
                      for p in parsed if p is not o and not p.is_hydra_override()]
            variants += [others + [f"{key}={v}"] for v in o.sweep_string_iterator()]
    run_dir_args = [o.input_line for o in parsed if o.is_hydra_override() and not o.is_sweep_override()
                    and o.get_key_element().startswith("hydra.run.")]
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        composed = compose(config_name="config", overrides=base + hydra_args + run_dir_args, return_hydra_config=True)
        _check_plugins(composed.hydra)
        for variant in variants:
            cfg = compose(config_name="config", overrides=variant)
            validate(cfg)
    return composed


def _typed_keys(args: list[str]) -> set[str]:
    return {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a and not a.startswith("-")}


def _check_against_checkpoint(cfg: DictConfig, args: list[str], run_dir: Path) -> str | None:
    """Before Hydra touches a run dir: an agent / world_model that contradicts the checkpoint is refused; a resume
    of a complete run -> the message that says so (nothing to do)."""
    source = cfg.resume if cfg.resume else cfg.checkpoint.path
    payload = load_checkpoint(source)
    saved = OmegaConf.create(payload["config"])
    typed = _typed_keys(args)
    for group in ("agent", "world_model"):
        have, want = saved[group].get("name"), cfg[group].get("name")
        if have != want and (cfg.resume or group in typed):
            verb = "resume= continues" if cfg.resume else f"mode={cfg.mode} runs"
            raise ConfigError(f"checkpoint {source} holds {group}={have}, not {group}={want}: {verb} with the "
                              f"checkpoint's own {group} (drop {group}=, or give a checkpoint of {group}={want})")
    if not cfg.resume:
        return None
    summary_file = run_dir / "summary.json"
    if not summary_file.exists():
        return None
    try:
        summary = json.loads(summary_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    counters, total = payload["counters"], int(cfg.train.total_steps)
    if summary.get("env_step") != counters["env_step"]:
        return None  # last.pt is not the one of the final summary
    minutes = cfg.train.get("max_minutes")
    if counters["env_step"] >= total:
        why, more = f"reached train.total_steps={total:,}", "train.total_steps=<more>"
    elif minutes is not None and float(counters.get("wall_s", 0.0)) >= 60.0 * float(minutes):
        why, more = f"used its train.max_minutes={minutes}", "train.max_minutes=<more>"
    else:
        return None
    return (f"run {run_dir} is complete: it {why} at env step {counters['env_step']:,} (summary.json); nothing "
            f"changed. resume={run_dir} {more} extends it")


_PREPARED: run_dirs.Prepared | None = None  # the run dir this process made ready (single runs, not multirun jobs)


def _prepare_run_dir(args: list[str], composed: DictConfig) -> list[str] | None:
    """A single run: fix its dir now (hydra.run.dir resolved), check it can be written, lock it against a second
    writer and check a resume or eval against its checkpoint, all before Hydra writes .hydra/ there.
    -> the args with that dir, or None when there is nothing to do (a complete run's resume)."""
    global _PREPARED
    if "-m" in args or "--multirun" in args or composed.hydra.mode == RunMode.MULTIRUN:
        return args  # each job's dir is locked in run()
    path = Path(str(OmegaConf.select(composed, "hydra.run.dir")))
    evaluating = composed.mode == "eval" and composed.checkpoint.path
    if evaluating and composed.eval.get("out_dir"):
        state = run_dirs.prepare(path, what="eval.out_dir")
    else:
        try:
            state = run_dirs.prepare(path)
        except ConfigError as e:  # a read-only run: its eval can go elsewhere
            raise ConfigError(f"{e} (or give eval.out_dir=<a writable dir>)" if evaluating else str(e)) from None
    run_dirs.acquire_lock(state.path)  # refused: the holder is writing there, so nothing is undone
    try:
        if composed.resume or (composed.mode in CHECKPOINT_MODES and composed.checkpoint.path):
            done = _check_against_checkpoint(composed, args, state.path)
            if done:
                run_dirs.discard(state)
                print(done)
                return None
    except ConfigError:
        run_dirs.discard(state)
        raise
    _PREPARED = state
    return [a for a in args if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={state.path}"]


def _name_the_run(cfg: DictConfig) -> None:
    """W&B names: the run after its overrides, the group after the sweep (multirun) or the experiment."""
    if cfg.logger.name != "wandb":
        return
    hc = HydraConfig.get()
    with open_dict(cfg):
        cfg.logger.run_name = (cfg.logger.run_name or hc.job.override_dirname
                               or f"{cfg.agent.name}_{cfg.env.name}_s{cfg.seed}")
        if not cfg.logger.group:  # an experiment preset names its group; an ad-hoc sweep is its own group
            sweep = hc.mode == RunMode.MULTIRUN and not hc.runtime.choices.get("experiment")
            cfg.logger.group = Path(hc.sweep.dir).name if sweep else cfg.experiment_name


@hydra.main(config_path="pkg://" + CONFIG_MODULE, config_name="config", version_base="1.3")
def run(cfg: DictConfig) -> float | None:
    from cpcrl import device as devices
    from cpcrl.train import TrainingDiverged, evaluate_checkpoint, solve_checkpoint, train

    run_dir = Path(HydraConfig.get().runtime.output_dir).absolute()
    state = _PREPARED if _PREPARED is not None and _PREPARED.path == run_dir else None
    console = Console(stderr=False)
    try:
        locked_here = run_dirs.acquire_lock(run_dir)  # a multirun job; a single run's lock is held since main
    except ConfigError as e:
        fail(str(e))
    try:
        validate(cfg)
        device = devices.make_device(cfg.device)
        devices.seed_everything(int(cfg.seed))
        if cfg.mode == "eval":
            result = evaluate_checkpoint(cfg, run_dir, device, console)
        elif cfg.mode == "solve":
            result = solve_checkpoint(cfg, run_dir, device, console)
        elif cfg.mode == "probe":
            from cpcrl.probes import probe_checkpoint

            result = probe_checkpoint(cfg, run_dir, device, console)
        else:
            _name_the_run(cfg)
            result = train(cfg, run_dir, device, console)
    except ConfigError as e:
        run_dirs.discard(state, run_dir)
        fail(str(e))
    except TrainingDiverged as e:
        fail(str(e), code=3)
    except CheckpointWriteError as e:
        fail(f"{e}; once it can be written again, resume={run_dir} continues from the last checkpoint", code=1)
    finally:
        if locked_here:
            run_dirs.release_lock(run_dir)
    return result.get("eval/return_mean")


# Hydra's mutually exclusive modes (it raises a bare ValueError for two of them)
HYDRA_MODES = {"--multirun": "-m", "--cfg": "-c", "--info": "-i", "--shell-completion": "-sc", "--run": "-r"}


def _check_one_hydra_mode(args: list[str]) -> None:
    given = [long for long, short in HYDRA_MODES.items() if any(a.split("=", 1)[0] in (long, short) for a in args)]
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(given)} cannot be combined: give one of "
                          f"{', '.join(f'{long} ({short})' for long, short in HYDRA_MODES.items())}")


def main() -> None:
    args = sys.argv[1:]
    try:
        _check_one_hydra_mode(args)
        args = _rewrite_args(args)
        if not any(a.split("=", 1)[0] in HYDRA_FLAGS_WITHOUT_RUN for a in args):
            args = _prepare_run_dir(args, _compose_checks(args))
            if args is None:
                return
    except ConfigError as e:
        fail(str(e))
    except Exception as e:  # Hydra/OmegaConf composition and parse errors
        if type(e).__module__.split(".")[0] not in ("hydra", "omegaconf"):
            raise
        fail(_one_line(e))
    sys.argv = [sys.argv[0], *args]
    run()


if __name__ == "__main__":
    main()
