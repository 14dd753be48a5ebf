"""The measured distributions behind the learning tests (tests/test_learning.py).

Each learning test runs the real CLI on one config and asserts a threshold on its final summary. This script
runs the same config over many seeds, over other CPUs' kernels (ATEN_CPU_CAPABILITY=default | avx2 | the
machine's own) and over 1 and 2 intra-op threads, and writes what it saw to
benchmarks/results/learning_<case>.json, so a threshold comes from a distribution, not from one lucky run.

    python benchmarks/learning_distributions.py ppo_lstm_cartpole_pomdp --seeds 0-9 --capabilities native default avx2
    python benchmarks/learning_distributions.py ppo_lstm_cartpole_pomdp --seeds 0-4 --threads 2
    python benchmarks/learning_distributions.py ppo_lstm_cartpole_pomdp --seeds 0-4 --extra world_model=none --tag ff
    python benchmarks/learning_distributions.py --list
    python benchmarks/learning_distributions.py --table      # the docs/BENCHMARKS.md table from the results

`--extra` appends overrides (a broken or weaker learner: a feed-forward net, no training) and `--tag` names the
control, written to learning_<case>_<tag>.json beside the case's own runs.

Several runs go side by side (`--jobs`, default 2): the results are learning outcomes, not timings.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine_info import cpu_model  # noqa: E402
from tests.test_learning import CASES  # noqa: E402  one definition of each case: the test's own


def parse_seeds(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def run_one(case, extra: list[str], seed: int, capability: str, threads: int) -> dict:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("ATEN_CPU_CAPABILITY", None)
    if capability != "native":
        env["ATEN_CPU_CAPABILITY"] = capability
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        argv = [*case.args, *extra, f"seed={seed}", f"device.threads={threads}", "logger=none", "hydra.run.dir=run"]
        proc = subprocess.run([sys.executable, "-m", "cpcrl", *argv], cwd=tmp, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"seed": seed, "capability": capability, "threads": threads, "error": proc.stderr[-500:]}
        summary = json.loads((Path(tmp) / "run" / "summary.json").read_text())
    return {"seed": seed, "capability": capability, "threads": threads, "value": summary[case.metric],
            "wall_s": round(wall, 1)}


def describe(runs: list[dict]) -> str:
    """'n=10 min 52.9 median 149.5' per (kernel, threads) group."""
    groups: dict[tuple, list[float]] = {}
    for r in runs:
        if "value" in r:
            groups.setdefault((r["capability"], r["threads"]), []).append(r["value"])
    return "; ".join(f"{cap} {t}t: n={len(v)} min {min(v):.4g} median {statistics.median(v):.4g}"
                     for (cap, t), v in sorted(groups.items()))


def markdown_table() -> str:
    rows = ["| case | threshold | runs: kernel, threads: n, min, median | all runs: min / median | controls |",
            "|---|---|---|---|---|"]
    results = ROOT / "benchmarks" / "results"
    for name, case in sorted(CASES.items()):
        path = results / f"learning_{name}.json"
        if not path.exists():
            rows.append(f"| `{name}` | {case.threshold} | not measured | | |")
            continue
        runs = json.loads(path.read_text())["runs"]
        values = [r["value"] for r in runs if "value" in r]
        controls = []
        for ctrl in sorted(results.glob(f"learning_{name}_*.json")):
            rec = json.loads(ctrl.read_text())
            v = [r["value"] for r in rec["runs"] if "value" in r]
            controls.append(f"{rec['tag']} ({' '.join(rec['args'][len(case.args):])}): n={len(v)} "
                            f"max {max(v):.4g} median {statistics.median(v):.4g}")
        rows.append(f"| `{name}` | {case.metric} >= {case.threshold} | {describe(runs)} | "
                    f"{min(values):.4g} / {statistics.median(values):.4g} | {'; '.join(controls) or '-'} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", nargs="?", choices=sorted(CASES))
    parser.add_argument("--seeds", default="0-9")
    parser.add_argument("--capabilities", nargs="+", default=["native"],
                        choices=["native", "default", "avx2", "avx512"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--extra", nargs="*", default=[], help="overrides appended to the case's (a control)")
    parser.add_argument("--tag", default=None, help="name of the control: learning_<case>_<tag>.json")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/learning_<case>.json")
    parser.add_argument("--table", action="store_true", help="print the markdown table of every measured case")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table())
        return 0
    if args.case is None:
        for name, case in sorted(CASES.items()):
            print(f"{name}: {case.metric} >= {case.threshold}  ({' '.join(case.args)})")
        return 0
    case = CASES[args.case]
    grid = [(s, c, t) for c in args.capabilities for t in args.threads for s in parse_seeds(args.seeds)]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda g: run_one(case, args.extra, *g), grid))
    for r in runs:
        print(json.dumps(r))
    name = args.case + (f"_{args.tag}" if args.tag else "")
    out = args.out or ROOT / "benchmarks" / "results" / f"learning_{name}.json"
    previous = json.loads(out.read_text())["runs"] if out.exists() else []
    key = lambda r: (r["seed"], r["capability"], r["threads"])  # noqa: E731
    merged = {key(r): r for r in previous}
    merged.update({key(r): r for r in runs})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    values = [r["value"] for r in merged.values() if "value" in r]
    record = {"case": args.case, "args": [*case.args, *args.extra], "tag": args.tag, "metric": case.metric,
              "threshold": case.threshold,
              "machine": cpu_model(), "date": datetime.date.today().isoformat(), "commit": commit.strip(),
              "command": "python benchmarks/learning_distributions.py " + " ".join(argv or sys.argv[1:]),
              "min": min(values, default=None), "median": statistics.median(values) if values else None,
              "runs": sorted(merged.values(), key=key)}
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{args.case}: n={len(values)} min={record['min']} median={record['median']} threshold={case.threshold}"
          f" -> {out}")
    return 0 if all("value" in r for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
