#!/usr/bin/env bash
# Issue 21's device check, prepared for a lent GPU machine (H100/H200 class), in two parts that each fit one
# 10-minute call. Here first: `bash benchmarks/gpu/wheels.sh` (once). Then, with the device tool:
#   run(carry=[".whl"], timeout_s=600, command="bash benchmarks/gpu/check.sh A")   # cuda tests + Dreamer speed
#   run(carry=[".whl"], timeout_s=600, command="bash benchmarks/gpu/check.sh B")   # PlaNet CEM + PPO on the cube
# Every result lands in $OUT (json + logs); copy them to benchmarks/results/ and write the figures into
# docs/BENCHMARKS.md with the GPU model, torch version and command (check.sh prints them first).
set -uo pipefail
PART=${1:-A}
OUT=${OUT:-/tmp/cpcrl_gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheels: install failed (make them with benchmarks/gpu/wheels.sh and carry .whl)"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
# the cube's C step (the numpy fallback runs where this fails)
python3 - <<'PY' || echo "cube C step not built: the numpy path runs"
import subprocess, sysconfig
inc, suffix = sysconfig.get_paths()["include"], sysconfig.get_config_var("EXT_SUFFIX")
subprocess.run(["gcc", "-O2", "-shared", "-fPIC", f"-I{inc}", "cpcrl/envs/_cube_step.c", "-o",
                f"cpcrl/envs/_cube_step{suffix}"], check=True)
PY
python3 -c "import torch, platform; print('gpu', torch.cuda.get_device_name(), 'torch', torch.__version__, \
'cpu', platform.processor() or platform.machine(), 'cores', __import__('os').cpu_count())" | tee "$OUT/machine.txt"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$OUT/machine.txt" 2>&1
T0=$SECONDS
stamp() { echo "[$((SECONDS - T0)) s] $*"; }

if [ "$PART" = A ]; then
    stamp "pytest -m cuda"
    timeout 330 python3 -m pytest -q -m cuda tests/test_cuda.py -p no:cacheprovider -x --durations=10 \
        2>&1 | tee "$OUT/pytest_cuda.log" | tail -25
    for mode in none reduce-overhead; do
        stamp "Dreamer v3 speed, device.compile=$mode"
        timeout 120 python3 benchmarks/bench_dreamer.py speed --device cuda --versions v3 --sizes xs s \
            --updates 20 --compile "$mode" --json "$OUT/dreamer_speed_cuda_$mode.json" 2>&1 | tail -4
    done
else
    for mode in none reduce-overhead; do
        stamp "PlaNet speed, device.compile=$mode"
        timeout 150 python3 benchmarks/bench_planet.py speed --device cuda --threads 1 --compile "$mode" \
            --json "$OUT/planet_speed_cuda_$mode.json" 2>&1 | tail -6
    done
    for mode in none reduce-overhead; do
        stamp "ppo_lstm on the cube, 4096 envs, device.compile=$mode"
        timeout 120 python3 -m cpcrl agent=ppo_lstm env=cube2x2 env.num_envs=4096 device=cuda device.compile=$mode \
            train.total_steps=2097152 eval.every=0 checkpoint.every=0 eval.cube_per_distance=0 eval.cube_uniform_states=0 \
            eval.cube_curve_states=0 eval.episodes=64 logger=none hydra.run.dir="/tmp/ppo_cube_$mode" \
            2>&1 | tail -3
        cp "/tmp/ppo_cube_$mode/summary.json" "$OUT/ppo_cube_4096_$mode.json" 2>/dev/null \
            && python3 -c "import json; print('perf/sps', json.load(open('$OUT/ppo_cube_4096_$mode.json'))['perf/sps'])"
    done
fi
stamp done
