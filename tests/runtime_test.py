"""Tests for the process set-up (`ama_jax.process.runtime`)."""
import os
import subprocess
import sys

from ama_jax.process import runtime

_OPTION = 'xla_cpu_experimental_ynn_fusion_type'


def test_add_xla_flags_appends_what_is_missing(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
  value = runtime.add_xla_flags(('--a_flag=1', '--b_flag=x'))
  assert value.split() == ['--xla_force_host_platform_device_count=2',
                           '--a_flag=1', '--b_flag=x']
  assert os.environ['XLA_FLAGS'] == value


def test_add_xla_flags_keeps_the_users_own_value(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', f'--{_OPTION}=')
  assert runtime.add_xla_flags(runtime.CPU_XLA_FLAGS) == f'--{_OPTION}='
  monkeypatch.delenv('XLA_FLAGS')
  assert runtime.add_xla_flags(runtime.CPU_XLA_FLAGS) == ' '.join(
      runtime.CPU_XLA_FLAGS)


def test_cpu_tuning_leaves_accelerator_runs_alone(monkeypatch):
  monkeypatch.setenv('JAX_PLATFORMS', 'cuda')
  monkeypatch.setenv('XLA_FLAGS', '--x=1')
  runtime.cpu_tuning()
  assert os.environ['XLA_FLAGS'] == '--x=1'


def test_this_jaxlib_takes_the_cpu_flags():
  """In a fresh process: XLA accepts CPU_XLA_FLAGS (an unknown flag would
  abort the backend's start), convolutions then compile to XLA's own kernel
  and dots still to a YNNPACK fusion, and the convolution's value is right."""
  code = """
import jax, jax.numpy as jnp
from jax import lax
from ama_jax.process import runtime
runtime.cpu_tuning()
x = jnp.ones((2, 8, 8, 4)); w = jnp.ones((3, 3, 4, 4)) / 9
conv = lambda x, w: lax.conv_general_dilated(
    x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
dot = lambda a, b: a @ b
print('conv', '__ynn_fusion' in jax.jit(conv).lower(x, w).compile().as_text())
a = jnp.ones((64, 64))
print('dot', '__ynn_fusion' in jax.jit(dot).lower(a, a).compile().as_text())
print('value', float(conv(x, w)[0, 3, 3, 0]))
"""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['JAX_PLATFORMS'] = 'cpu'
  out = subprocess.run([sys.executable, '-c', code], env=env, text=True,
                       capture_output=True, check=True).stdout.split('\n')
  assert 'conv False' in out and 'dot True' in out
  value = float(next(l for l in out if l.startswith('value')).split()[1])
  assert abs(value - 4.0) < 1e-5  # 3 x 3 taps x 4 channels x 1/9.


def test_cpu_tuning_after_jax_started_changes_nothing(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  jax.numpy.zeros(1).block_until_ready()  # The backend is up.
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('XLA_FLAGS', '--x=1')
  runtime.cpu_tuning()
  assert os.environ['XLA_FLAGS'] == '--x=1'
