#!/bin/bash
# Idle-CPU window: the README's cifar benchmark beside the reference, then
# ours alone with XLA:CPU flags to try. Results: /work/runs/bench6/*.json
cd /work/main
B=".venv/bin/python -m ama_jax.tools.benchmark --arch cifar --batch 64 --n_critic 1 --steps 3 --score_batches 0"
echo "$(date +%T) readme cifar" >> /work/runs/bench6/log
.venv/bin/python -m ama_jax.tools.benchmark --arch cifar --batch 64 --n_critic 1 --steps 3 --score_batches 3 \
  --rounds 2 --torch_python=/tmp/torchref/bin/python "--torch_args=--mode lean --threads 2 --channels-last" \
  --json_out=/work/runs/bench6/readme_cifar.json > /work/runs/bench6/readme_cifar.out 2>&1
for flags in "" "--xla_cpu_prefer_vector_width=512" "--xla_cpu_use_onednn=true" "--xla_cpu_experimental_onednn_custom_call=true"; do
  tag=$(echo "x$flags" | tr -c 'a-z0-9\n' '_')
  echo "$(date +%T) ours $flags" >> /work/runs/bench6/log
  XLA_FLAGS="$flags" $B --json_out=/work/runs/bench6/flags.json > /work/runs/bench6/ours_$tag.out 2>&1
done
echo "$(date +%T) ours conv_impl=xla" >> /work/runs/bench6/log
$B --conv_impl xla --json_out=/work/runs/bench6/flags.json > /work/runs/bench6/ours_conv_xla.out 2>&1
echo "$(date +%T) done" >> /work/runs/bench6/log
