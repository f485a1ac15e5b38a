r"""Compilation of a whole training run: programs, seconds, cold and warm.

  python -m ama_jax.tools.compile_time --config=configs/fmnist_mnist.py:runlocal

Runs the config's training (`ama_jax.main`'s, in a temporary workdir) twice
in this process: first with an empty persistent compilation cache (cold:
every program traced, lowered and compiled by XLA), then, after
`jax.clear_caches()`, in a new workdir with the cache the first run filled
(warm: what a second run of the same config pays). For each run it prints
every program's trace, lowering and compile (or cache read) seconds, the
number of distinct programs and the totals, then one JSON line (also
appended to `--json_out`). The training step's own compile time beside its
step time is `ama_jax.tools.benchmark`'s `compile_s`.
"""
import json
import tempfile
import time
from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from ama_jax.process import compile_log
from ama_jax.process import runtime
from ama_jax.tools import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config (e.g. configs/fmnist_mnist.py:runlocal).')
_JSON_OUT = flags.DEFINE_string('json_out', None,
                                'File to append the JSON line to.')


def timed_run(config) -> dict:
  """One training run of `config` in a temporary workdir; its summary."""
  import jax  # pylint: disable=g-import-not-at-top
  from ama_jax.training import loop  # pylint: disable=g-import-not-at-top
  log = compile_log.CompileLog()
  jax.monitoring.register_event_duration_secs_listener(log)
  start = time.perf_counter()
  try:
    with tempfile.TemporaryDirectory() as workdir:
      loop.train_and_evaluate(config, workdir)
  finally:
    jax.monitoring.unregister_event_duration_listener(log)
  return log.summary() | {'wall_s': round(time.perf_counter() - start, 2)}


def main(argv: Sequence[str]) -> None:
  """Times the cold and warm compilation of `--config`'s training run."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('--config is required (e.g. '
                         'configs/fmnist_mnist.py:runlocal).')
  with tempfile.TemporaryDirectory() as cache_dir:
    runtime.setup(cache_dir)  # CPU settings; an empty persistent cache.
    import jax  # pylint: disable=g-import-not-at-top
    cold = timed_run(config)
    print(compile_log.table('cold (empty compilation cache)', cold))
    jax.clear_caches()
    warm = timed_run(config)
    print(compile_log.table('warm (the cache of the cold run)', warm))
  line = json.dumps({'config': config_flags.get_config_filename(
                         flags.FLAGS['config']),
                     'backend': jax.default_backend(),
                     'device_kind': jax.devices()[0].device_kind,
                     'cold': cold, 'warm': warm})
  print(line)
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, 'a') as f:
      f.write(line + '\n')


if __name__ == '__main__':
  cli.run_main(main)
