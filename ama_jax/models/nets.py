"""Encoder, generator and critic of AMA (paper appendix Tables 3 and 4).

Two architectures, chosen by `config.model.arch`:

* `mnist` (Table 4): 28x28xC images, latent 64, a DCGAN-like encoder and
  generator (two stride-2 convolutions / transposed convolutions around two
  dense layers) and a critic of the same shape on the channel-stacked pair.
* `cifar` (Table 3; somepago/AMA's `cifar_models_bNorm.py`): 32x32xC
  images, latent 128, a DCGAN encoder with BatchNorm, the SNGAN ResNet
  generator and the SNGAN ResNet critic (optionally spectral-normalized) on
  the stacked pair.

Images are NHWC. Layers match `shared/bench/torch_ref.py` (the PyTorch
reference) layer for layer: kernel sizes, paddings, biases and, where
practical, initialisers. Flattening is in NHWC order, a fixed permutation of
PyTorch's NCHW order, so the function class is the same.

Variables: `params`, and `batch_stats` holding BatchNorm statistics (cifar
encoder/generator) or spectral-norm `u`/`sigma` (critic with
`spectral_norm=True`). Train-mode calls need `mutable=['batch_stats']`.

Two fields choose how the same function is computed (`create_models`; its
`inference` argument gives forward-only mnist models XLA's convolutions):

* `model.conv_impl` (`conv_layers.CONV_IMPLS`): XLA's convolutions
  ('xla'), exact matmul forms faster on CPU ('cpu_forms'), or 'auto'; the
  same function up to float rounding. The layers are in `conv_layers`
  (convolutions) and `torch_layers` (PyTorch's layer settings).
* `model.compute_dtype` (`COMPUTE_DTYPES`): the dtype of the layers'
  arithmetic. Variables stay float32 whatever it is (flax `param_dtype`;
  BatchNorm statistics and spectral-norm vectors in float32), and every
  network returns float32 (z, x_rec, logits, features), so that losses,
  optimizer and calibration see float32; the critic's last (1-output)
  layer computes in float32.
"""
from collections.abc import Sequence
import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ama_jax.models import conv_layers
from ama_jax.models import torch_layers

Array = jax.Array
Dtype = Any

# `model.compute_dtype` values.
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

_LEAK = 0.2  # LeakyReLU slope of the paper and the official code.


def _float32(x: Array) -> Array:
  """A network output in float32 (losses and scores are float32)."""
  return conv_layers.cast(jnp.float32, x)[0]


# ---------------------------------------------------------------------------
# ResNet blocks (cifar generator and critic).
# ---------------------------------------------------------------------------
class ResBlockUp(nn.Module):
  """SNGAN generator block: BN-ReLU-up-conv3-BN-ReLU-conv3 + up-conv1."""

  features: int
  axis_name: Optional[str] = None
  conv_impl: str = 'auto'  # See `conv_layers.ConvSame.impl`.
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    def conv(k, gain, name, resample='none'):
      # Official Gblock: biases start at zero, xavier gains sqrt(2) and 1.
      return conv_layers.ConvSame(
          self.features, k, kernel_init=torch_layers.xavier(gain),
          bias_init=nn.initializers.zeros, resample=resample,
          impl=self.conv_impl, dtype=self.dtype, name=name)

    bn = functools.partial(torch_layers.batch_norm, train, self.axis_name,
                           dtype=self.dtype)
    h = nn.relu(bn('bn1')(x))
    h = conv(3, math.sqrt(2), 'conv1', 'up')(h)  # conv3(up(h)).
    h = nn.relu(bn('bn2')(h))
    h = conv(3, math.sqrt(2), 'conv2')(h)
    return h + conv(1, 1.0, 'shortcut', 'up')(x)


class ResBlockDown(nn.Module):
  """SNGAN critic block (official `Block(optimized=True)` / `Dblock`).

  `first=True` (the optimized first block): conv3-ReLU-conv3-pool +
  pool-conv1, no leading ReLU. Otherwise ReLU-conv3-ReLU-conv3[-pool] +
  shortcut, the shortcut a 1x1 conv only when downsampling (as the official
  code, which passes `downsample` as `optimized`).
  """

  features: int
  downsample: bool
  first: bool = False
  spectral_norm: bool = True
  conv_impl: str = 'auto'  # See `conv_layers.ConvSame.impl`.
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    def conv(h, k, gain, name, resample='none'):
      # Official Block/Dblock: biases start at zero, xavier gains sqrt(2), 1.
      layer = conv_layers.ConvSame(
          self.features, k, kernel_init=torch_layers.xavier(gain),
          bias_init=nn.initializers.zeros, resample=resample,
          impl=self.conv_impl, dtype=self.dtype, name=name)
      return torch_layers.apply_layer(
          layer, h, spectral_norm=self.spectral_norm, train=train)

    # 'pool' = the conv then a 2x2 average pool (the official order; the
    # first block pools before its shortcut conv, the same function).
    pool = 'pool' if self.downsample else 'none'
    h = x if self.first else nn.relu(x)
    h = conv(nn.relu(conv(h, 3, math.sqrt(2), 'conv1')), 3, math.sqrt(2),
             'conv2', pool)
    if not self.downsample:
      return h + x
    return h + conv(x, 1, 1.0, 'shortcut', pool)


# ---------------------------------------------------------------------------
# mnist architecture (Table 4).
# ---------------------------------------------------------------------------
class MnistEncoder(nn.Module):
  """x [B, 28, 28, C] -> z [B, latent]: conv(w)-conv(2w)-dense(16w)-dense."""

  latent_dim: int = 64
  width: int = 64
  conv_impl: str = 'auto'  # See `conv_layers.conv_forms`.
  dtype: Dtype = jnp.float32  # Of the arithmetic; z is float32.

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    del train  # No normalization layers.
    conv = functools.partial(torch_layers.torch_conv, impl=self.conv_impl,
                             dtype=self.dtype)
    dense = functools.partial(torch_layers.torch_dense, dtype=self.dtype)
    (x,) = conv_layers.cast(self.dtype, x)
    h = nn.relu(conv(self.width, x.shape[-1], 'conv1')(x))
    h = nn.relu(conv(2 * self.width, self.width, 'conv2')(h))
    h = h.reshape(h.shape[0], -1)
    h = nn.relu(dense(16 * self.width, h.shape[-1], 'fc1')(h))
    return _float32(dense(self.latent_dim, 16 * self.width, 'fc2')(h))


class MnistGenerator(nn.Module):
  """z [B, latent] -> x [B, 28, 28, C] in [-1, 1] (float32)."""

  channels: int = 1
  width: int = 64
  conv_impl: str = 'auto'  # See `conv_layers.ConvTranspose4x4`.
  dtype: Dtype = jnp.float32  # Of the arithmetic; the images are float32.

  @nn.compact
  def __call__(self, z: Array, train: bool) -> Array:
    del train  # No normalization layers.
    w = self.width
    dense = functools.partial(torch_layers.torch_dense, dtype=self.dtype)
    deconv = functools.partial(conv_layers.ConvTranspose4x4,
                               impl=self.conv_impl, dtype=self.dtype)
    (z,) = conv_layers.cast(self.dtype, z)
    h = nn.relu(dense(16 * w, z.shape[-1], 'fc1')(z))
    h = nn.relu(dense(7 * 7 * 2 * w, 16 * w, 'fc2')(h))
    h = h.reshape(h.shape[0], 7, 7, 2 * w)
    h = nn.relu(deconv(w, name='deconv1')(h))  # 7 -> 14
    h = deconv(self.channels, name='deconv2')(h)  # -> 28
    return jnp.tanh(_float32(h))


class MnistCritic(nn.Module):
  """Stacked pair [B, 28, 28, 2C] -> (logits [B], features [B, 16w]).

  Both outputs float32; the last (1-output) layer computes in float32.
  """

  width: int = 64
  spectral_norm: bool = False
  conv_impl: str = 'auto'  # See `conv_layers.conv_forms`.
  dtype: Dtype = jnp.float32  # Of the arithmetic.

  @nn.compact
  def __call__(self, xy: Array, train: bool) -> tuple[Array, Array]:
    # Official SN layers start biases at zero (torch_ref.SNConv2d/SNLinear).
    sn = dict(spectral_norm=self.spectral_norm, train=train)
    conv = functools.partial(torch_layers.torch_conv, zero_bias=True,
                             impl=self.conv_impl, dtype=self.dtype)
    w = self.width
    (xy,) = conv_layers.cast(self.dtype, xy)
    h = torch_layers.apply_layer(conv(w, xy.shape[-1], 'conv1'), xy, **sn)
    h = nn.leaky_relu(h, _LEAK)
    h = torch_layers.apply_layer(conv(2 * w, w, 'conv2'), h, **sn)
    h = nn.leaky_relu(h, _LEAK)
    h = h.reshape(h.shape[0], -1)
    h = torch_layers.apply_layer(
        torch_layers.torch_dense(16 * w, h.shape[-1], 'fc', zero_bias=True,
                                 dtype=self.dtype), h, **sn)
    features = _float32(nn.leaky_relu(h, _LEAK))
    logits = torch_layers.apply_layer(
        torch_layers.torch_dense(1, 16 * w, 'out', zero_bias=True), features,
        **sn)
    return logits[:, 0], features


# ---------------------------------------------------------------------------
# cifar architecture (Table 3; official cifar_models_bNorm.py).
# ---------------------------------------------------------------------------
class CifarEncoder(nn.Module):
  """x [B, 32, 32, C] -> z [B, latent]: 3 x (conv4 s2, BN, LReLU), conv4.

  Its convolutions are `nn.Conv` (XLA's) with every `conv_impl`.
  """

  latent_dim: int = 128
  width: int = 64
  axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32  # Of the arithmetic; z is float32.

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    (h,) = conv_layers.cast(self.dtype, x)
    for i, mult in enumerate((1, 2, 4)):  # 32 -> 16 -> 8 -> 4
      h = nn.Conv(mult * self.width, (4, 4), strides=(2, 2),
                  padding=((1, 1), (1, 1)), use_bias=False,
                  kernel_init=conv_layers.TORCH_KERNEL_INIT, dtype=self.dtype,
                  name=f'conv{i + 1}')(h)
      h = torch_layers.batch_norm(train, self.axis_name, f'bn{i + 1}',
                                  self.dtype)(h)
      h = nn.leaky_relu(h, _LEAK)
    h = nn.Conv(self.latent_dim, (4, 4), padding='VALID', use_bias=False,
                kernel_init=conv_layers.TORCH_KERNEL_INIT, dtype=self.dtype,
                name='conv4')(h)  # 4 -> 1
    return _float32(h.reshape(h.shape[0], self.latent_dim))


class CifarGenerator(nn.Module):
  """SNGAN ResnetGenerator32: z [B, latent] -> x [B, 32, 32, C] (float32)."""

  channels: int = 3
  width: int = 256  # Channels of every block (the official `ch`).
  axis_name: Optional[str] = None
  conv_impl: str = 'auto'  # See `conv_layers.ConvSame.impl`.
  dtype: Dtype = jnp.float32  # Of the arithmetic; the images are float32.

  @nn.compact
  def __call__(self, z: Array, train: bool) -> Array:
    (z,) = conv_layers.cast(self.dtype, z)
    h = nn.Dense(4 * 4 * self.width, kernel_init=torch_layers.xavier(1.0),
                 bias_init=conv_layers.torch_bias_init(z.shape[-1]),
                 dtype=self.dtype, name='fc')(z)
    h = h.reshape(h.shape[0], 4, 4, self.width)
    for i in range(3):  # 4 -> 8 -> 16 -> 32
      h = ResBlockUp(self.width, self.axis_name, self.conv_impl, self.dtype,
                     name=f'block{i + 1}')(h, train)
    h = nn.relu(torch_layers.batch_norm(train, self.axis_name, 'bn',
                                        self.dtype)(h))
    h = conv_layers.ConvSame(
        self.channels, 3, kernel_init=torch_layers.xavier(1.0),
        bias_init=conv_layers.torch_bias_init(9 * self.width),
        impl=self.conv_impl, dtype=self.dtype, name='conv')(h)
    return jnp.tanh(_float32(h))


class CifarCritic(nn.Module):
  """SNGAN ResnetDiscriminator32 on the stacked pair [B, 32, 32, 2C].

  Returns (logits [B], features [B, width]), both float32; features are the
  ReLU'd, globally *sum*-pooled activations, as the official `feature()`
  (summed in float32), and the last (1-output) layer computes in float32.
  """

  width: int = 128
  spectral_norm: bool = True
  conv_impl: str = 'auto'  # See `conv_layers.ConvSame.impl`.
  dtype: Dtype = jnp.float32  # Of the arithmetic.

  @nn.compact
  def __call__(self, xy: Array, train: bool) -> tuple[Array, Array]:
    kw = dict(features=self.width, spectral_norm=self.spectral_norm,
              conv_impl=self.conv_impl, dtype=self.dtype)
    (xy,) = conv_layers.cast(self.dtype, xy)
    h = ResBlockDown(downsample=True, first=True, name='block1', **kw)(
        xy, train)  # 32 -> 16
    h = ResBlockDown(downsample=True, name='block2', **kw)(h, train)  # -> 8
    h = ResBlockDown(downsample=False, name='block3', **kw)(h, train)
    h = ResBlockDown(downsample=False, name='block4', **kw)(h, train)
    features = jnp.sum(_float32(nn.relu(h)), axis=(1, 2))
    out = nn.Dense(1, use_bias=False, kernel_init=torch_layers.xavier(1.0),
                   name='out')
    logits = torch_layers.apply_layer(out, features,
                                      spectral_norm=self.spectral_norm,
                                      train=train)
    return logits[:, 0], features


# ---------------------------------------------------------------------------
# Public wrappers.
# ---------------------------------------------------------------------------
class Autoencoder(nn.Module):
  """Encoder E and generator G; params {'encoder': ..., 'generator': ...}."""

  encoder: nn.Module
  generator: nn.Module

  def __call__(self, x: Array, train: bool) -> tuple[Array, Array]:
    """Returns (x_rec [B, H, W, C], z [B, latent]) with x_rec = G(E(x))."""
    z = self.encoder(x, train)
    return self.generator(z, train), z

  def encode(self, x: Array, train: bool) -> Array:
    """x [B, H, W, C] in [-1, 1] -> z [B, latent]."""
    return self.encoder(x, train)

  def decode(self, z: Array, train: bool) -> Array:
    """z [B, latent] -> x [B, H, W, C] in [-1, 1]."""
    return self.generator(z, train)


class Critic(nn.Module):
  """D on image pairs stacked on the channel axis; params {'network': ...}."""

  network: nn.Module

  def __call__(self, x: Array, y: Array, train: bool) -> tuple[Array, Array]:
    """D(x, y).

    Args:
      x: [B, H, W, C] in [-1, 1] (the real image).
      y: [B, H, W, C] (x itself, or a reconstruction).
      train: advance spectral-norm vectors (`batch_stats` must be mutable).

    Returns:
      (logits [B], features [B, F]); features are the penultimate layer f.
    """
    return self.network(jnp.concatenate([x, y], axis=-1), train)

  def stacked(self, xy: Array, train: bool) -> tuple[Array, Array]:
    """D on an already stacked pair xy [B, H, W, 2C] (gradient penalty)."""
    return self.network(xy, train)


_SHAPES = {'mnist': (28, 28), 'cifar': (32, 32)}


def input_size(arch: str) -> Optional[tuple[int, int]]:
  """(H, W) of the images `arch` takes; None for an unknown arch."""
  return _SHAPES.get(arch)


# `model.conv_impl='auto'` of forward-only models, by arch, where it is not
# the training step's choice. The CPU matmul forms win where gradients are
# needed (docs/PERFORMANCE.md); forward only, on a 2-core Zen 3 VM
# (2026-12-03, 500 images a call, `runtime.cpu_tuning()`), the mnist
# networks scored 1418 images/s with XLA's convolutions against 1272 with
# the CPU forms, and the cifar ones 42.7 against 49.4 (its generator's
# phase-matmul up-sampling is faster than XLA's transposed convolution), so
# cifar keeps 'auto'. On accelerators 'auto' is 'xla' already.
INFERENCE_CONV_IMPL = {'mnist': 'xla'}


def create_models(
    model_config: ml_collections.ConfigDict,
    image_shape: Sequence[int],
    axis_name: Optional[str] = None,
    *,
    inference: bool = False,
) -> tuple[Autoencoder, Critic]:
  """Builds (Autoencoder, Critic) for `model_config.arch`.

  Args:
    model_config: `config.model`: `arch`, `latent_dim`, `width` (mnist: base
      width, 64 in Table 4; cifar: encoder w, 2w, 4w, generator 4w, critic
      2w, 64 for Table 3), `spectral_norm` (critic), and optionally
      `conv_impl` (`conv_layers.CONV_IMPLS`, default 'auto') and
      `compute_dtype` (`COMPUTE_DTYPES`, default 'float32').
    image_shape: (H, W, C) of the images.
    axis_name: pmap axis for global BatchNorm statistics; None outside pmap.
    inference: the models only run forward (validation, calibration,
      scoring, export). With `conv_impl` 'auto', mnist's then take XLA's own
      convolutions on every backend (`INFERENCE_CONV_IMPL`); the variables
      are the same in every form.

  Returns:
    (autoencoder, critic) modules.

  Raises:
    ValueError: unknown arch, conv_impl or compute_dtype, or an image shape
      the arch cannot take.
  """
  arch = model_config.arch
  if arch not in _SHAPES:
    raise ValueError(
        f'Unknown model.arch {arch!r}; choose one of {sorted(_SHAPES)}.')
  image_shape = tuple(image_shape)
  if len(image_shape) != 3 or image_shape[:2] != _SHAPES[arch] or (
      image_shape[2] < 1):
    h, w = _SHAPES[arch]
    raise ValueError(
        f'model.arch={arch!r} needs images of shape ({h}, {w}, C), got'
        f' {image_shape}; valid: ' + ', '.join(
            f'{a}: {s[0]}x{s[1]}xC' for a, s in _SHAPES.items())
        + ' (set data.image_size and data.channels to convert).')
  channels, w = image_shape[2], model_config.width
  latent_dim, sn = model_config.latent_dim, model_config.spectral_norm
  # .get: configs saved before these fields existed mean the defaults.
  conv_impl = model_config.get('conv_impl', 'auto')
  conv_layers.conv_forms(conv_impl)  # Validates it.
  if inference and conv_impl == 'auto':
    conv_impl = INFERENCE_CONV_IMPL.get(arch, conv_impl)
  dtype_name = model_config.get('compute_dtype', 'float32')
  if dtype_name not in COMPUTE_DTYPES:
    raise ValueError(f'Unknown model.compute_dtype {dtype_name!r}; choose '
                     f'one of {sorted(COMPUTE_DTYPES)}.')
  kw = dict(dtype=COMPUTE_DTYPES[dtype_name])
  if arch == 'mnist':
    encoder = MnistEncoder(latent_dim, w, conv_impl, **kw)
    generator = MnistGenerator(channels, w, conv_impl, **kw)
    network = MnistCritic(w, sn, conv_impl, **kw)
  else:
    encoder = CifarEncoder(latent_dim, w, axis_name, **kw)
    generator = CifarGenerator(channels, 4 * w, axis_name, conv_impl, **kw)
    network = CifarCritic(2 * w, sn, conv_impl, **kw)
  return Autoencoder(encoder, generator), Critic(network)
