#!/usr/bin/env bash
# A Cloud TPU VM slice: the same command on every worker. JAX finds the
# coordinator, the number of workers and this worker's index in the TPU VM
# metadata (`--multihost`: a TPU VM's environment does not show them).
# From your workstation, with the repository cloned to ~/ama-jax on every
# worker and WORKDIR a directory all workers share (e.g. an NFS mount):
#   gcloud compute tpus tpu-vm ssh TPU_NAME --zone=ZONE --worker=all \
#     --command='cd ~/ama-jax && bash launch/tpu_vm.sh configs/fmnist_mnist.py /mnt/shared/ama'
# The global batch (train.batch_size) is split evenly over all TPU chips of
# the slice. .venv needs JAX's TPU support (README "Multiple accelerators
# and hosts").
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: launch/tpu_vm.sh CONFIG WORKDIR [flags...] (on every worker)"
config=${1:?$usage}
workdir=${2:?$usage}
shift 2
bash scripts/setup.sh  # Each worker: its own .venv and data/.
exec .venv/bin/python -m ama_jax.main --config="$config" --workdir="$workdir" \
  --multihost "$@"
