"""Process set-up shared by the command-line programs.

`setup()` runs once, first thing in `main`, before JAX computes anything:

- CPU tuning (`cpu_tuning()`), only when JAX will run on the CPU (no
  accelerator plugin installed, or `JAX_PLATFORMS` starting with `cpu`):
  glibc malloc settings for XLA:CPU's per-call temporaries
  (`malloc_tuning`), and `CPU_XLA_FLAGS` added to `XLA_FLAGS`;
- JAX's persistent compilation cache (XLA executables and autotuning
  results), on by default in a per-user folder (`default_cache_dir()`:
  `$AMA_JAX_CACHE_DIR`, else `$XDG_CACHE_HOME/ama_jax/xla`, else
  `~/.cache/ama_jax/xla`), so that a second run of the same program skips
  compilation; `setup(compilation_cache='off')` (the programs'
  `--compilation_cache=off`) turns it off, and a `JAX_COMPILATION_CACHE_DIR`
  already set in the environment is left to JAX;
- TensorFlow, when installed, is kept off the accelerators, so that TFDS
  never takes GPU memory from JAX. TensorFlow is optional at run time: the
  MNIST / Fashion-MNIST path reads its data through `tfds.data_source`
  without it, and without it metrics go to the log and `metrics.jsonl`
  instead of TensorBoard (`metric_writers.create_writer`).
"""
import importlib.metadata
import importlib.util
import os
import pathlib
from typing import Optional

from absl import logging

from ama_jax.process import malloc_tuning

_ACCELERATOR_MODULES = ('libtpu', 'jax_cuda12_plugin', 'jax_cuda13_plugin',
                        'jax_rocm60_plugin', 'jax_rocm7_plugin')


def default_cache_dir() -> pathlib.Path:
  """The per-user folder of the persistent compilation cache."""
  if os.environ.get('AMA_JAX_CACHE_DIR'):
    return pathlib.Path(os.environ['AMA_JAX_CACHE_DIR'])
  base = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(base) / 'ama_jax' / 'xla'


def backend_is_cpu() -> bool:
  """Whether JAX will run on the CPU, decided without starting JAX.

  (Starting a backend here would come before `jax.distributed.initialize`
  in multi-host runs, which must come first.)
  """
  platforms = os.environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms.split(',')[0].strip() == 'cpu'
  if any(importlib.util.find_spec(m) for m in _ACCELERATOR_MODULES):
    return False
  return not list(importlib.metadata.entry_points(group='jax_plugins'))


# XLA:CPU options that `cpu_tuning()` adds to XLA_FLAGS, each unless
# XLA_FLAGS already sets the same option (so a user's own value wins).
# '-individual_convolution' leaves convolutions to XLA's own (Eigen) kernels
# and every other YNNPACK fusion (dots, elementwise) as it is: on a 2-core
# AMD EPYC (Zen 3, AVX2) the cifar generator's 256-channel 3x3 layer at
# 32x32, forward and both gradients, took 3.0-3.3 s against 3.7-3.8 s
# (docs/PERFORMANCE.md, "XLA:CPU's convolutions").
CPU_XLA_FLAGS = (
    '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',)


def add_xla_flags(flags: tuple[str, ...]) -> str:
  """Appends `flags` to the XLA_FLAGS environment variable, each unless
  XLA_FLAGS already names its option; returns the new value. XLA reads it
  when JAX starts its backend, so call this before JAX computes."""
  def option(flag: str) -> str:
    return flag.lstrip('-').split('=', 1)[0]

  current = os.environ.get('XLA_FLAGS', '')
  named = {option(f) for f in current.split()}
  extra = [f for f in flags if option(f) not in named]
  value = ' '.join([current.strip(), *extra]).strip()
  os.environ['XLA_FLAGS'] = value
  return value


def cpu_tuning() -> None:
  """The CPU-only process settings (malloc, `CPU_XLA_FLAGS`), when JAX
  will run on the CPU; call before JAX computes anything."""
  if not backend_is_cpu():
    return
  malloc_tuning.tune()
  if _jax_started():
    logging.warning('JAX has already started its backend: XLA_FLAGS %s '
                    'would not apply, left unset.', CPU_XLA_FLAGS)
    return
  add_xla_flags(CPU_XLA_FLAGS)


def _jax_started() -> bool:
  """Whether JAX has started a backend (after which XLA_FLAGS is read)."""
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):  # Another JAX: assume not.
    return False


def use_compilation_cache(folder: Optional[str] = None) -> None:
  """JAX's persistent compilation cache in `folder` (None: the default).

  Nothing when JAX_COMPILATION_CACHE_DIR names one: JAX reads it itself.
  """
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return
  import jax  # pylint: disable=g-import-not-at-top
  folder = pathlib.Path(folder or default_cache_dir())
  folder.mkdir(parents=True, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', str(folder))
  # Every compiled program, and XLA's GPU autotuning results with them.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def setup(compilation_cache: Optional[str] = None) -> None:
  """Process-wide settings (see the module docstring).

  Args:
    compilation_cache: folder of the persistent compilation cache; None:
      `default_cache_dir()`; 'off' (or ''): no persistent cache.
  """
  cpu_tuning()  # Before JAX's first computation (CPU speed).
  # TensorFlow's C++ INFO lines (oneDNN notices) off the console; its
  # warnings and errors stay. A value already set is kept.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  import jax  # pylint: disable=g-import-not-at-top
  if compilation_cache in ('off', ''):
    jax.config.update('jax_enable_compilation_cache', False)
  else:
    use_compilation_cache(compilation_cache)
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    logging.info('TensorFlow is not installed: no TensorBoard summaries.')
    return
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:  # TF already initialised its devices (a 2nd call).
    logging.info('TensorFlow devices already initialised; left as they are.')
