"""Test set-up: 2 fake CPU devices (set before jax is imported), no GPUs.

The tests share the programs' persistent compilation cache: the many small
runs of the suite compile the same programs (the `:runlocal` step, scorer,
...), in this process and in the programs it starts.
"""
import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

from absl import flags  # pylint: disable=g-import-not-at-top

from ama_jax.process import runtime  # pylint: disable=g-import-not-at-top

runtime.use_compilation_cache()

# absltest helpers (create_tempdir) read flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()
