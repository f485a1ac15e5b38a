#!/usr/bin/env bash
# One machine, all its accelerators (pmap over every local device).
#   bash launch/local.sh configs/fmnist_mnist.py /tmp/ama [--config.x=y ...]
# The global batch (train.batch_size) is split evenly over the devices.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:?usage: launch/local.sh CONFIG WORKDIR [flags...]}
workdir=${2:?usage: launch/local.sh CONFIG WORKDIR [flags...]}
shift 2
bash scripts/setup.sh
exec .venv/bin/python -m ama_jax.main --config="$config" --workdir="$workdir" "$@"
