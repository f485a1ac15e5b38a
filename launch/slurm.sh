#!/usr/bin/env bash
# Several GPU nodes under SLURM: one process per GPU, every process running
# the same command. JAX reads the coordinator, the process count and each
# process's index (and its GPU, SLURM_LOCALID) from SLURM.
# Submit from the repository root, on a filesystem every node mounts
# (repository, .venv, data/ and WORKDIR); tasks per node = GPUs per node:
#   sbatch --nodes=2 --gpus-per-node=4 --ntasks-per-node=4 \
#     launch/slurm.sh configs/fmnist_mnist.py "$PWD/runs/fm_2x4" [--config.x=y ...]
# The global batch (train.batch_size) is split evenly over all GPUs. .venv
# needs JAX's CUDA plugin (README "Multiple accelerators and hosts").
#SBATCH --job-name=ama_jax
#SBATCH --nodes=2
#SBATCH --gpus-per-node=8
#SBATCH --ntasks-per-node=8
#SBATCH --time=08:00:00
#SBATCH --output=ama_jax-%j.out
# SIGTERM 2 minutes before the time limit: the run stops at its next step
# with a checkpoint and exit status 75; the job is then requeued and resumes.
#SBATCH --signal=TERM@120
#SBATCH --requeue
set -euo pipefail
usage="usage: sbatch [--nodes=N --gpus-per-node=G --ntasks-per-node=G] launch/slurm.sh CONFIG WORKDIR [flags...]"
cd "${SLURM_SUBMIT_DIR:?$usage (from the repository root)}"
config=${1:?$usage}
workdir=${2:?$usage}
shift 2
gpus=${SLURM_GPUS_ON_NODE:?no GPUs allocated; $usage}
tasks=${SLURM_NTASKS_PER_NODE:-1}
if [[ "$tasks" != "$gpus" ]]; then
  echo "launch/slurm.sh: $tasks task(s) per node for $gpus GPU(s) per node;" \
       "pass --ntasks-per-node=$gpus (one process per GPU)." >&2
  exit 2
fi
bash scripts/setup.sh  # Once, here: the nodes share the filesystem.
# Every task sees all GPUs of its node; JAX gives task SLURM_LOCALID its own.
status=0
srun --kill-on-bad-exit=1 .venv/bin/python -m ama_jax.main \
  --config="$config" --workdir="$workdir" --multihost "$@" || status=$?
if [[ $status -eq 75 ]]; then  # Stopped, resumable (ama_jax/process/stops.py).
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
