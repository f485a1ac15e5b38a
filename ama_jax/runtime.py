"""Process set-up shared by the command-line programs.

`setup()` runs once, first thing in `main`, before JAX computes anything:

- glibc malloc settings for XLA:CPU (`malloc_tuning`);
- TensorFlow, when installed, is kept off the accelerators, so that TFDS
  never takes GPU memory from JAX. TensorFlow is optional at run time: the
  MNIST / Fashion-MNIST path reads its data through `tfds.data_source`
  without it, and without it metrics go to the log and `metrics.jsonl`
  instead of TensorBoard (`metric_writers.create_writer`).
"""
from absl import logging

from ama_jax import malloc_tuning


def setup() -> None:
  malloc_tuning.tune()  # Before JAX's first computation (CPU speed).
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.info('TensorFlow is not installed: no TensorBoard summaries.')
    return
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF already initialised its devices (a 2nd call).
    logging.info('TensorFlow devices already initialised; left as they are.')
