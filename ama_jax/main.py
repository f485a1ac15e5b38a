r"""Trains and evaluates AMA.

  python -m ama_jax.main --config=configs/fmnist_mnist.py --workdir=/tmp/ama
  python -m ama_jax.main --config=configs/mnist_oneclass.py:3 \
      --workdir=/tmp/m3 --config.train.num_epochs=20

Config fields are overridden with `--config.<field>=<value>`; a `:arg` suffix
selects a variant (`:runlocal` for a tiny smoke run). A workdir that holds a
checkpoint is resumed. `--multihost` calls `jax.distributed.initialize()`
(see launch/).
"""
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, '
                    'figures and results.json.')
flags.DEFINE_bool('multihost', False, 'Call jax.distributed.initialize() '
                  '(every process runs the same command).')
config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py[:arg]).',
    lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from ama_jax import malloc_tuning  # pylint: disable=g-import-not-at-top
  malloc_tuning.tune()  # Before JAX's first computation (CPU speed).
  # TFDS must not take accelerator memory from JAX.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.multihost:
    jax.distributed.initialize()
  from ama_jax import loop  # pylint: disable=g-import-not-at-top
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if jax.process_index() == 0:
    print(loop.summary(FLAGS.workdir), flush=True)


if __name__ == '__main__':
  app.run(main)
