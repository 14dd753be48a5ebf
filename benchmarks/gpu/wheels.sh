#!/usr/bin/env bash
# Wheels for a lent GPU machine (its image: Python 3.12 with its own CUDA torch, no hydra/gymnasium/wandb), into
# .whl/ (git-ignored), to carry with the device tool: `run(carry=[".whl"], command="bash benchmarks/gpu/check.sh A")`.
# Only what that image lacks (the package list in .library/device/KINDS.md); ~25 MB of the 64 MiB a call may carry.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
rm -rf .whl /tmp/cpcrl_whl && mkdir -p .whl /tmp/cpcrl_whl
# hydra-core 1.3 needs antlr4 4.9.*, published as a source archive only: build its (pure Python) wheel here
"$PY" -m pip wheel -q --no-deps -w /tmp/cpcrl_whl antlr4-python3-runtime==4.9.3
"$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --find-links /tmp/cpcrl_whl -d /tmp/cpcrl_whl \
    "hydra-core==$("$PY" -c 'import hydra; print(hydra.__version__)')" \
    "omegaconf==$("$PY" -c 'import omegaconf; print(omegaconf.__version__)')" \
    "gymnasium==$("$PY" -c 'import gymnasium; print(gymnasium.__version__)')" \
    "wandb==$("$PY" -c 'import wandb; print(wandb.__version__)')"
# what the image already holds (one version of each package, or the install there stops)
for f in /tmp/cpcrl_whl/*.whl; do
    name=$(basename "$f" | cut -d- -f1 | tr 'A-Z-' 'a-z_')
    case " numpy protobuf pyyaml requests urllib3 idna certifi charset_normalizer click cloudpickle packaging \
           typing_extensions anyio h11 httpcore httpx xxhash " in
        *" $name "*) ;;
        *) cp "$f" .whl/ ;;
    esac
done
du -sh .whl
