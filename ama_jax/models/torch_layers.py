"""PyTorch's layers as the networks (`nets`) build them: `Conv2d(k=4, s=2,
p=1)` and `Linear` with PyTorch's default initialisers, xavier-uniform
initialisers, `BatchNorm2d`'s settings and optional spectral normalisation.
"""
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from ama_jax.models import conv_layers

Array = jax.Array
Initializer = Any
Dtype = Any


def xavier(gain: float) -> Initializer:
  """`torch.nn.init.xavier_uniform_(w, gain)` as a flax initializer."""
  return nn.initializers.variance_scaling(gain**2, 'fan_avg', 'uniform')


def apply_layer(layer: nn.Module, x: Array, *, spectral_norm: bool,
                train: bool) -> Array:
  """Applies `layer`, spectral-normalized if asked (critic layers only).

  One power iteration per call, as the official code; `u`/`sigma` live in
  `batch_stats` and advance only when `train` (then it must be mutable).
  """
  if spectral_norm:
    return nn.SpectralNorm(layer, name=f'{layer.name}_sn')(
        x, update_stats=train
    )
  return layer(x)


def batch_norm(
    train: bool, axis_name: Optional[str], name: str,
    dtype: Dtype = jnp.float32,
) -> nn.BatchNorm:
  """PyTorch's `BatchNorm2d` (momentum 0.1, eps 1e-5) as `nn.BatchNorm`."""
  # momentum 0.9 == PyTorch's momentum 0.1; axis_name makes batch statistics
  # global across devices inside pmap. (PyTorch's running variance is the
  # unbiased one; flax keeps the biased one: a negligible difference.) Flax
  # reduces in float32 and keeps the running statistics in float32; `dtype`
  # is the output's.
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      axis_name=axis_name,
      dtype=dtype,
      name=name,
  )


def torch_conv(features: int, c_in: int, name: str, *,
               zero_bias: bool = False, impl: str = 'auto',
               dtype: Dtype = jnp.float32) -> conv_layers.Conv4x4S2:
  """PyTorch `Conv2d(c_in, features, 4, 2, 1)` with PyTorch's default init."""
  return conv_layers.Conv4x4S2(
      features, kernel_init=conv_layers.TORCH_KERNEL_INIT,
      bias_init=(nn.initializers.zeros if zero_bias
                 else conv_layers.torch_bias_init(16 * c_in)),
      impl=impl, dtype=dtype, name=name)


def torch_dense(features: int, fan_in: int, name: str, *,
                zero_bias: bool = False,
                dtype: Dtype = jnp.float32) -> nn.Dense:
  """PyTorch `Linear(fan_in, features)` with PyTorch's default init."""
  return nn.Dense(
      features, kernel_init=conv_layers.TORCH_KERNEL_INIT,
      bias_init=(nn.initializers.zeros if zero_bias
                 else conv_layers.torch_bias_init(fan_in)),
      dtype=dtype, name=name)
