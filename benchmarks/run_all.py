"""`make bench`: run every benchmarks/bench_*.py in turn; each prints its table and writes results/<name>.json.

Benchmarks are not tests: they measure speed and learning against targets and against the peer a user
would otherwise pick. Copy the tables into docs/BENCHMARKS.md with the machine, date and command.
Pass names to run a subset: `make bench ARGS="cube_env ppo_lstm"`.
"""

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    wanted = set(sys.argv[1:])
    (HERE / "results").mkdir(exist_ok=True)
    failed = []
    for script in sorted(HERE.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        if wanted and name not in wanted:
            continue
        print(f"\n=== {name} ===", flush=True)
        proc = subprocess.run([sys.executable, str(script), "--json", str(HERE / "results" / f"{name}.json")])
        if proc.returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
