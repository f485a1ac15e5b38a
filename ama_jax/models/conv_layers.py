"""Convolution layers of the networks (`nets`): their variables, PyTorch's
initialisers and the choice of form.

The layer modules hold `nn.Conv`'s variables (`kernel` HWIO, `bias`) and
compute PyTorch's layers in one of two sets of forms (`conv_kernels`),
chosen by `model.conv_impl` (`CONV_IMPLS`, `conv_forms`): 'xla', XLA's own
convolutions (cuDNN on GPU); 'cpu_forms', exact matmul forms faster on CPU
(im2col, sub-pixel phase matmuls, resampling fused into the convolution,
kernel gradients as ordinary matmuls); 'auto', 'cpu_forms' on CPU and 'xla'
elsewhere. All equal the literal `lax.conv_general_dilated` composition up
to float rounding, values and gradients (conv_layers_test). Measurements
behind the choices: docs/PERFORMANCE.md.
"""
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ama_jax.models import conv_kernels

Array = jax.Array
Initializer = Any
Dtype = Any

# `model.conv_impl` values (see the module docstring and `conv_forms`).
CONV_IMPLS = ('auto', 'xla', 'cpu_forms')

# PyTorch's default Conv2d/Linear weight init, kaiming_uniform(a=sqrt(5)),
# is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1 / 3, 'fan_in',
                                                     'uniform')
# PyTorch's ConvTranspose2d takes fan_in from its *output* channels.
_TORCH_TRANSPOSE_KERNEL_INIT = nn.initializers.variance_scaling(
    1 / 3, 'fan_in', 'uniform', in_axis=-1, out_axis=-2)


def torch_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def cast(dtype: Dtype, *arrays: Array) -> tuple[Array, ...]:
  """The arrays in `dtype`; an array already in it is returned as it is (no
  convert op, so float32 models lower exactly as before the dtype field)."""
  return tuple(a if a.dtype == dtype else a.astype(dtype) for a in arrays)


def conv_forms(conv_impl: str) -> str:
  """The forms a `model.conv_impl` value stands for: 'cpu_forms' or 'xla'.

  'auto' is 'cpu_forms' on CPU and 'xla' on accelerators: the matmul forms
  are CPU measurements (docs/PERFORMANCE.md), and on GPU they would turn
  every convolution into a GEMM fusion for XLA's autotuner instead of
  cuDNN's convolutions. Decided when a layer is traced, by
  `jax.default_backend()`.

  Raises:
    ValueError: a value not in `CONV_IMPLS`.
  """
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f'Unknown conv_impl {conv_impl!r}; choose one of '
                     f'{CONV_IMPLS}.')
  if conv_impl == 'auto':
    return 'cpu_forms' if jax.default_backend() == 'cpu' else 'xla'
  return conv_impl


class Conv4x4S2(nn.Module):
  """`torch.nn.Conv2d(c_in, features, 4, 2, 1)`: H x W -> H/2 x W/2.

  Variables as `nn.Conv(features, (4, 4), strides=2, padding=1)`: `kernel`
  [4, 4, c_in, features] and `bias` [features], initialized with the same
  keys, so either module reads the other's checkpoints.
  """

  features: int
  kernel_init: Initializer = TORCH_KERNEL_INIT
  bias_init: Initializer = nn.initializers.zeros
  # A `model.conv_impl` value (`conv_forms`): 'cpu_forms' is
  # `conv_kernels.conv_4x4_s2`'s 'im2col', 'xla' its 'lax'.
  impl: str = 'auto'
  dtype: Dtype = jnp.float32  # Of the arithmetic; variables are float32.

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', self.kernel_init,
                        (4, 4, x.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    x, kernel, bias = cast(self.dtype, x, kernel, bias)
    form = 'im2col' if conv_forms(self.impl) == 'cpu_forms' else 'lax'
    return conv_kernels.conv_4x4_s2(x, kernel, form) + bias


class ConvSame(nn.Module):
  """`nn.Conv(features, (k, k), padding='SAME')`, optionally fused with a
  nearest x2 upsampling before it or a 2x2 average pool after it.

  Same variables (`kernel` [k, k, c_in, features], `bias`) and initial
  values as `nn.Conv`, so either module reads the other's checkpoints; the
  fused forms compute the same function as the separate ops (up to float
  rounding) with fewer multiply-adds (conv3(up(x)):
  `conv_kernels.upsample2_conv3x3` / `conv_kernels.upsample_conv_kernel`,
  4/9 of them; pool(conv3(x)): `conv_kernels.conv3x3_pool2`, 4/9; for 1x1
  kernels the conv moves to the low-resolution side, 1/4).
  """

  features: int
  kernel_size: int
  kernel_init: Initializer = TORCH_KERNEL_INIT
  bias_init: Initializer = nn.initializers.zeros
  resample: str = 'none'  # 'none' | 'up' (conv(up(x))) | 'pool' (pool(conv(x)))
  # 'literal': the literal composition with `lax.conv_general_dilated` (the
  # reference form). A `model.conv_impl` value (`conv_forms`) gives the
  # fused forms above, with 1x1 kernels on the low-resolution side:
  # 'xla': every convolution XLA's own (conv3(up(x)) as a 4x4 stride-2
  # transposed convolution, pool(conv3(x)) as a 4x4 stride-2 convolution).
  # 'cpu_forms': conv3(up(x)) as 2x2 phase matmuls, pool(conv3(x)) in the
  # im2col form, 1x1 kernels as a matmul, unfused 3x3 kernels 'rowgrad' (see
  # `conv_kernels.conv_same`) for >= 16 input and output channels, else
  # 'im2col' (fewer input than output channels: the critic's 6 -> 128, the
  # encoder's 3 -> 128) or 'col2im' (the generator's 256 -> 3): measured
  # 2-3x faster than XLA's convolution with its gradients
  # (docs/PERFORMANCE.md).
  impl: str = 'auto'
  dtype: Dtype = jnp.float32  # Of the arithmetic; variables are float32.

  @nn.compact
  def __call__(self, x: Array) -> Array:
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init,
                        (k, k, x.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    if self.resample not in ('none', 'up', 'pool'):
      raise ValueError(f"Unknown resample {self.resample!r}; choose 'none',"
                       " 'up' or 'pool'.")
    if self.impl not in CONV_IMPLS + ('literal',):
      raise ValueError(f'Unknown ConvSame impl {self.impl!r}; choose one of '
                       f"{CONV_IMPLS + ('literal',)}.")
    x, kernel, bias = cast(self.dtype, x, kernel, bias)
    up, pool = self.resample == 'up', self.resample == 'pool'
    if self.impl == 'literal':
      y = conv_kernels.conv_same(conv_kernels.upsample2(x) if up else x,
                                 kernel, 'lax') + bias
      return conv_kernels.avg_pool2(y) if pool else y
    cpu = conv_forms(self.impl) == 'cpu_forms'
    if k == 1:  # Conv and resampling commute: convolve the small side.
      y = conv_kernels.conv_same(conv_kernels.avg_pool2(x) if pool else x,
                                 kernel, 'dot' if cpu else 'lax') + bias
      return conv_kernels.upsample2(y) if up else y
    if up or pool:
      if k != 3:
        raise ValueError(f'resample={self.resample!r} needs a 1x1 or 3x3 '
                         f'kernel, got {k}x{k}.')
      if up and cpu:
        return conv_kernels.upsample2_conv3x3(x, kernel) + bias
      if up:
        return conv_kernels.conv_transpose_4x4_s2(
            x, conv_kernels.upsample_conv_kernel(kernel), 'dilated') + bias
      return conv_kernels.conv3x3_pool2(x, kernel,
                                        'im2col' if cpu else 'lax') + bias
    return conv_kernels.conv_same(x, kernel, _conv_same_form(
        x.shape[-1], self.features) if cpu else 'lax') + bias


def _conv_same_form(c_in: int, c_out: int) -> str:
  """`conv_kernels.conv_same`'s form of an unfused k x k layer on CPU
  ('cpu_forms')."""
  if min(c_in, c_out) >= 16:
    return 'rowgrad'
  return 'im2col' if c_in <= c_out else 'col2im'


class ConvTranspose4x4(nn.Module):
  """`torch.nn.ConvTranspose2d(c_in, features, 4, 2, 1)`: H x W -> 2H x 2W.

  Table 4 writes padding 2, which would give 7 -> 12 -> 22; PyTorch
  padding 1 gives the 7 -> 14 -> 28 that the table's shapes need.
  """

  features: int
  # A `model.conv_impl` value (`conv_forms`). 'xla':
  # `conv_kernels.conv_transpose_4x4_s2`'s 'dilated' form (XLA's transposed
  # convolution). 'cpu_forms': 'subpixel' for >= 16 output channels (faster
  # on CPU), else 'dilated' (faster for one output channel).
  impl: str = 'auto'
  dtype: Dtype = jnp.float32  # Of the arithmetic; variables are float32.

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', _TORCH_TRANSPOSE_KERNEL_INIT,
                        (4, 4, x.shape[-1], self.features))
    bias = self.param('bias', torch_bias_init(16 * self.features),
                      (self.features,))
    x, kernel, bias = cast(self.dtype, x, kernel, bias)
    cpu = conv_forms(self.impl) == 'cpu_forms'
    form = 'subpixel' if cpu and self.features >= 16 else 'dilated'
    return conv_kernels.conv_transpose_4x4_s2(x, kernel, form) + bias

