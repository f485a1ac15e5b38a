#!/usr/bin/env bash
# The README's main job: the quick Fashion-MNIST -> MNIST detector.
#   bash scripts/quick.sh [--workdir=DIR] [--config.seed=S] [more flags...]
# Sets up .venv and the offline data when missing (scripts/setup.sh), then
# trains and evaluates with `configs/fmnist_mnist.py:quick` (default workdir
# workdirs/quick; an existing workdir is resumed, or reported if finished).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
workdir=workdirs/quick
for arg in "$@"; do [[ "$arg" == --workdir=* ]] && workdir=""; done
exec .venv/bin/python -m ama_jax.main --config=configs/fmnist_mnist.py:quick \
  ${workdir:+--workdir=$workdir} "$@"
