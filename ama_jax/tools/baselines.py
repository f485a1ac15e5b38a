r"""Runs the raw-pixel baselines (`ama_jax.scoring.baselines`) on a config's split.

  python -m ama_jax.tools.baselines --config=configs/default.py \
      --methods=knn,pca,ocsvm --output=/tmp/baselines.json

Loads the config's protocol splits (`input_pipeline.load_protocol`, the
split AMA trains on for the same data config and seed), runs kNN, PCA and
the one-class SVM with each hyper-parameter chosen on validation, prints a
table and, with `--output`, writes the results as JSON.
"""
import json
import os
import sys
import time
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ama_jax.scoring import baselines
from ama_jax import errors
from ama_jax.data import input_pipeline
from ama_jax.tools import cli

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config.')
_METHODS = flags.DEFINE_list('methods', list(baselines.METHODS),
                              'Baselines to run.')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON results file.')
_MAX_TRAIN = flags.DEFINE_integer(
    'max_train', None, 'Cap on training normals for every baseline.'
)
_MAX_TRAIN_OCSVM = flags.DEFINE_integer(
    'max_train_ocsvm', 5000, 'Cap on OC-SVM training normals.'
)


def main(argv: Sequence[str]) -> None:
  """Runs the baselines on `--config`'s split; prints (and writes) them."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config is required.')
  start = time.perf_counter()
  with errors.reraise_as(errors.DataError, ValueError):
    data = input_pipeline.load_protocol(config.data, config.seed)
  results = baselines.run_baselines(
      data,
      seed=config.seed,
      methods=_METHODS.value,
      max_train=_MAX_TRAIN.value,
      max_train_ocsvm=_MAX_TRAIN_OCSVM.value,
  )
  seconds = time.perf_counter() - start
  print(baselines.format_table(results))
  print(f'wall time {seconds:.1f} s')
  if _OUTPUT.value:
    payload = {
        'argv': sys.argv,
        'data': config.data.to_dict(),
        'seed': config.seed,
        'max_train': _MAX_TRAIN.value,
        'max_train_ocsvm': _MAX_TRAIN_OCSVM.value,
        'ocsvm_nu': baselines.OCSVM_NU,
        'wall_seconds': seconds,
        'results': results,
    }
    tmp = f'{_OUTPUT.value}.tmp'  # Renamed when complete: never half a file.
    with open(tmp, 'w') as f:
      # default=str: tuples/None are fine; numpy scalars become strings.
      json.dump(payload, f, indent=2, default=str)
    os.replace(tmp, _OUTPUT.value)
    logging.info('Wrote %s.', _OUTPUT.value)


if __name__ == '__main__':
  cli.run_main(main)
