"""cpcrl.wandb_file against a real offline run written by the installed wandb."""

from __future__ import annotations

import os
import shutil

import pytest

from cpcrl import wandb_file
from cpcrl.wandb_file import WandbFileError, find_run_file, read_records, read_run, run_files, run_history

BLOB = "x" * 70_000  # more than two 32 KiB blocks: the record is split into FIRST, MIDDLE and LAST chunks
VOLATILE = {"_timestamp", "_runtime"}  # wall-clock values


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One real offline run (wandb.init costs ~1-3 s, so every test shares it)."""
    root = tmp_path_factory.mktemp("wandb_run")
    with pytest.MonkeyPatch.context() as mp:
        # Offline, quiet, and nothing written to $HOME or the repo.
        for var, sub in [("WANDB_DIR", ""), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config"),
                         ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")]:
            mp.setenv(var, str(root / sub))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        mp.setenv("WANDB_CONSOLE", "off")  # no stdout/stderr hooks fighting pytest's capture
        mp.delenv("WANDB_RUN_ID", raising=False)
        wandb = pytest.importorskip("wandb")
        run = wandb.init(mode="offline", dir=root, project="t", group="g", job_type="jt", name="n", tags=["a"],
                         config={"lr": 0.1, "nested": {"x": 1}})
        try:
            run.define_metric("env_step")
            run.define_metric("*", step_metric="env_step")
            run.log({"env_step": 0, "loss": 1.5})
            run.log({"env_step": 10, "loss": 0.25, "info": {"len": 7}, "tag": "ok"})
            run.log({"env_step": 20, "loss": -3.0})
            run.config.update({"late": "yes"})
            run.summary["best"] = 42
            run.summary["blob"] = BLOB
        finally:
            run.finish()  # the run file is complete (flushed up to the exit record) only after finish()
            wandb.teardown()  # stop the wandb-core service process this test started
    return root


def stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in VOLATILE}


def test_history(run_dir):
    history = read_run(run_dir)["history"]
    assert [stable(row) for row in history] == [
        {"_step": 0, "env_step": 0, "loss": 1.5},
        {"_step": 1, "env_step": 10, "loss": 0.25, "info.len": 7, "tag": "ok"},
        {"_step": 2, "env_step": 20, "loss": -3.0},
    ]
    assert all(isinstance(row["_timestamp"], float) and row["_runtime"] >= 0 for row in history)


def test_config_summary_run_metrics(run_dir):
    run = read_run(run_dir)
    config = dict(run["config"])
    assert isinstance(config.pop("_wandb"), dict)  # wandb's own bookkeeping entry
    assert config == {"lr": 0.1, "nested": {"x": 1}, "late": "yes"}
    summary = run["summary"]
    assert (summary["best"], summary["loss"], summary["env_step"], summary["_step"]) == (42, -3.0, 20, 2)
    assert summary["info"] == {"len": 7} and summary["blob"] == BLOB
    assert isinstance(summary["_wandb"]["runtime"], int)  # a nested_key update lands in a nested dict
    meta = run["run"]
    assert {k: meta[k] for k in ("project", "entity", "display_name", "group", "job_type", "tags")} == {
        "project": "t", "entity": "", "display_name": "n", "group": "g", "job_type": "jt", "tags": ["a"]}
    assert meta["run_id"] and find_run_file(run_dir).name == f"run-{meta['run_id']}.wandb"
    assert run["metrics"] == [{"name": "env_step", "step_metric": ""}, {"name": "*", "step_metric": "env_step"}]


def test_records_in_order(run_dir):
    records = list(read_records(run_dir))
    assert [r.num for r in records] == list(range(1, len(records) + 1))
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds[0] == "header" and kinds[-1] == "exit" and "run" in kinds


def test_find_run_file_accepts_file_run_dir_and_training_dir(run_dir, tmp_path):
    run_file = find_run_file(run_dir)
    assert run_file.parent.name.startswith("offline-run-") and run_file.parent.parent.name == "wandb"
    assert find_run_file(run_file) == run_file
    assert find_run_file(run_file.parent) == run_file.resolve()
    # Two runs under one training dir: the newest file wins.
    runs = [("offline-run-20000101_000000-old", 2_000_000_000), ("offline-run-19990101_000000-new", 2_000_000_100)]
    for name, mtime in runs:
        (tmp_path / "wandb" / name).mkdir(parents=True)
        copy = shutil.copy(run_file, tmp_path / "wandb" / name / f"run-{name[-3:]}.wandb")
        os.utime(copy, (mtime, mtime))
    assert find_run_file(tmp_path).name == "run-new.wandb"


def test_missing_path_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no W&B run file"):
        find_run_file(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no W&B run file"):
        read_run(tmp_path)  # an existing dir with no run in it


def test_truncated_file_yields_the_records_before_the_cut(run_dir, tmp_path, caplog):
    data = find_run_file(run_dir).read_bytes()
    full = [r.SerializeToString() for r in read_records(run_dir)]
    cut = tmp_path / "cut.wandb"
    cut.write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING", logger=wandb_file.__name__):
        partial = [r.SerializeToString() for r in read_records(cut)]
    assert 0 < len(partial) < len(full) and partial == full[: len(partial)]
    assert "truncated" in caplog.text
    assert len(read_run(cut)["history"]) <= 3
    for size in (0, 3, 7):  # created but (almost) nothing written: no records, no error
        cut.write_bytes(data[:size])
        assert list(read_records(cut)) == []


def test_corrupted_or_foreign_file_raises_clear_error(run_dir, tmp_path):
    data = bytearray(find_run_file(run_dir).read_bytes())
    data[200] ^= 0xFF  # inside the run record's payload
    bad = tmp_path / "bad.wandb"
    bad.write_bytes(bytes(data))
    with pytest.raises(WandbFileError, match="CRC mismatch"):
        list(read_records(bad))
    foreign = tmp_path / "foreign.wandb"
    foreign.write_bytes(b"not a run file at all")
    with pytest.raises(WandbFileError, match="not a W&B run file"):
        list(read_records(foreign))


def test_run_files_order_by_start_time_and_run_history_merges_them(run_dir, tmp_path):
    run_file = find_run_file(run_dir)
    run_id = read_run(run_dir)["run"]["run_id"]
    names = ("run-20260102_000000-" + run_id, "offline-run-20260101_000000-" + run_id)  # online, offline dirs
    for name in names:
        (tmp_path / "wandb" / name).mkdir(parents=True)
        shutil.copy(run_file, tmp_path / "wandb" / name / run_file.name)
    (tmp_path / "wandb" / "offline-run-20260103_000000-other").mkdir()  # another run: not one of its files
    assert [p.parent.name for p in run_files(tmp_path, run_id)] == [names[1], names[0]]
    # the second file starts again at _step 0: it replaces the first file's rows, as a resume from step 0 would
    assert run_history(tmp_path, run_id) == read_run(run_file)["history"]
