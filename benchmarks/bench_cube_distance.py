"""Speed of the exact distance table: BFS build, cache read, position lookup and the samplers.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_cube_distance.py [--json OUT]

Builds into a temporary XDG_CACHE_HOME, so the user's cache is neither used nor touched. Median of 5 runs.
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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import cpu_model  # noqa: E402  (sibling module)


def timed(fn, repeats=5):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def _commit() -> str:
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return git.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp()
    from cpcrl.envs import cube_distance as cd
    from cpcrl.envs.cube2x2 import scramble

    path = cd.cache_path()
    n = 1_000_000
    states = scramble(np.random.default_rng(0), np.full(n, 20))
    rng = np.random.default_rng(1)
    res = {
        "date": datetime.date.today().isoformat(), "machine": f"{cpu_model()}, {os.cpu_count()} CPUs",
        "commit": _commit(),
        "command": " ".join(sys.argv),
        "bfs_build_s": timed(cd.build_distance_table),
        "build_and_write_s": timed(lambda: (path.unlink(missing_ok=True), cd.load_or_build(path))),
        "cached_read_s": timed(lambda: cd.load_or_build(path)),
        "position_index_us_per_state": timed(lambda: cd.position_index(states)) / n * 1e6,
        "optimal_distance_us_per_state": timed(lambda: cd.optimal_distance(states)) / n * 1e6,
        "sample_uniform_us_per_state": timed(lambda: cd.sample_uniform(rng, n)) / n * 1e6,
        "sample_at_distance_us_per_state": timed(lambda: cd.sample_at_distance(rng, np.full(n, 11))) / n * 1e6,
    }
    for k, v in res.items():
        print(f"{k:34s} {v:.4g}" if isinstance(v, float) else f"{k:34s} {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
