#!/usr/bin/env bash
# The reproduction tables on an offline accelerator, in a time box.
#
#   BUDGET_S=540 bash launch/accelerator_reproduce.sh OUT_DIR [LAUNCHER FLAGS...]
#   e.g. ... OUT_DIR --oneclass_epochs=100      (the ten one-class digits)
#        ... OUT_DIR --oneclass_epochs=0         (Fashion-MNIST seeds only)
#
# For an offline machine (no network) whose Python already has jax (with its
# accelerator plugin), flax, optax, orbax, scikit-learn and matplotlib. Run from the repo root. What it needs that
# such a machine lacks travels beside the repo, untracked:
#   .whl/             wheels (cp312, manylinux) of what the machine lacks,
#                     installed into /tmp/site. For example: ml-collections 1.1.0, clu 0.0.12,
#                     tensorflow-datasets 4.9.10, array-record 0.8.1, dm-tree,
#                     immutabledict, promise (no wheel on PyPI: `pip wheel`),
#                     simple-parsing, docstring-parser, tensorflow-metadata,
#                     googleapis-common-protos, protobuf 6.33.5 (the
#                     metadata's generated code needs >= 6.31), termcolor,
#                     toml, importlib_resources (`pip download --no-deps
#                     --only-binary=:all: --python-version 3.12 ...`);
#   .gpu/idx.tar.xz   data/raw/{mnist,fashion_mnist}/ (the IDX files that
#                     scripts/fetch_data.py fetches), unpacked into data/.
# Then it prepares both TFDS copies once (the workers would race), prints the
# versions and devices, and runs launch/parallel_reproduce.py for what is left
# of BUDGET_S seconds (counted from this script's start) minus 25 s for
# packing, with the flags after OUT_DIR. OUT_DIR receives the launcher's log
# and runs.tgz: each run's results.json and metrics.jsonl, the tables'
# .md/.json and the workers' logs (no checkpoints), for
# `python -m ama_jax.tools.reproduce --report_only` on any machine.
set -uo pipefail
out=${1:?usage: BUDGET_S=540 bash launch/accelerator_reproduce.sh OUT_DIR}
budget=${BUDGET_S:-540}
start=$SECONDS
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
if [ ! -d data/raw/mnist ] && [ -f .gpu/idx.tar.xz ]; then
  mkdir -p data && tar -xJf .gpu/idx.tar.xz -C data || exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 - <<'EOF' || exit 1
import time
t = time.time()
import jax, flax, optax, orbax.checkpoint, tensorflow_datasets, sklearn
print('python packages:', {m.__name__: getattr(m, '__version__', '?') for m in
      (jax, flax, optax, orbax.checkpoint, tensorflow_datasets, sklearn)})
print('devices:', jax.devices())
from ama_jax.data import idx_images
for name in ('mnist', 'fashion_mnist'):
  idx_images.prepare(name, data_dir=idx_images.DEFAULT_DATA_DIR,
                     raw_dir=idx_images.DEFAULT_RAW_DIR)
print(f'set-up checks and TFDS preparation: {time.time() - t:.1f} s')
EOF
left=$((budget - (SECONDS - start) - 25))
echo "launcher budget: ${left} s (set-up took $((SECONDS - start)) s)"
python3 launch/parallel_reproduce.py --out=runs/reproduce --budget_s="$left" \
  "${@:2}" >"$out/launcher.log" 2>&1
echo "launcher rc=$? after $((SECONDS - start)) s"
tail -n 3 "$out/launcher.log"
# Only the small files: checkpoints/, best/ and jax_cache/ are gigabytes
# (5.8 GB for the ten one-class runs), too much to carry back.
(cd runs/reproduce && find . -type f \( -name '*.json' -o -name '*.jsonl' \
  -o -name '*.md' -o -name '*.log' \) -not -path '*/checkpoints/*' \
  -not -path '*/best/*' -not -path './jax_cache/*' -size -4M |
  tar -czf "$out/runs.tgz" -T -)
ls -la "$out"
