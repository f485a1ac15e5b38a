"""Encoder, generator and critic of AMA (paper appendix Tables 3 and 4).

Two architectures, chosen by `config.model.arch`:

* `mnist` (Table 4): 28x28xC images, latent 64, a DCGAN-like encoder and
  generator (two stride-2 convolutions / transposed convolutions around two
  dense layers) and a critic of the same shape on the channel-stacked pair.
* `cifar` (Table 3, official `cifar_models_bNorm.py`): 32x32xC images, latent
  128, a DCGAN encoder with BatchNorm, the SNGAN ResNet generator and the
  SNGAN ResNet critic (optionally spectral-normalized) on the stacked pair.

Images are NHWC. Layers match `shared/bench/torch_ref.py` (the PyTorch
reference) layer for layer: kernel sizes, paddings, biases and, where
practical, initialisers. Flattening is in NHWC order, a fixed permutation of
PyTorch's NCHW order, so the function class is the same.

Variables: `params`, and `batch_stats` holding BatchNorm statistics (cifar
encoder/generator) or spectral-norm `u`/`sigma` (critic with
`spectral_norm=True`). Train-mode calls need `mutable=['batch_stats']`.

Two fields choose how the same function is computed (`create_models`):

* `model.conv_impl` (`CONV_IMPLS`): 'cpu_forms' computes convolutions in
  exact matmul forms measured faster on CPU (im2col, sub-pixel and phase
  matmuls, matmul kernel gradients); 'xla' uses XLA's own convolutions
  everywhere (cuDNN on GPU); 'auto' is 'cpu_forms' on CPU, 'xla' elsewhere.
  Both compute the same function up to float rounding (models_test).
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
from jax import lax
import jax.numpy as jnp
import ml_collections

Array = jax.Array
Initializer = Any
Dtype = Any

# `model.conv_impl` values (see the module docstring and `conv_forms`).
CONV_IMPLS = ('auto', 'xla', 'cpu_forms')
# `model.compute_dtype` values.
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# PyTorch's default Conv2d/Linear weight init, kaiming_uniform(a=sqrt(5)),
# is U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
_TORCH_KERNEL_INIT = nn.initializers.variance_scaling(
    1 / 3, 'fan_in', 'uniform'
)
# PyTorch's ConvTranspose2d takes fan_in from its *output* channels.
_TORCH_TRANSPOSE_KERNEL_INIT = nn.initializers.variance_scaling(
    1 / 3, 'fan_in', 'uniform', in_axis=-1, out_axis=-2
)
_LEAK = 0.2  # LeakyReLU slope of the paper and the official code.


def _torch_bias_init(fan_in: int) -> Initializer:
  """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _xavier(gain: float) -> Initializer:
  """`torch.nn.init.xavier_uniform_(w, gain)` as a flax initializer."""
  return nn.initializers.variance_scaling(gain**2, 'fan_avg', 'uniform')


def _cast(dtype: Dtype, *arrays: Array) -> tuple[Array, ...]:
  """The arrays in `dtype`; an array already in it is returned as it is (no
  convert op, so float32 models lower exactly as before the dtype field)."""
  return tuple(a if a.dtype == dtype else a.astype(dtype) for a in arrays)


def _float32(x: Array) -> Array:
  """A network output in float32 (losses and scores are float32)."""
  return _cast(jnp.float32, x)[0]


def _layer(
    layer: nn.Module, x: Array, *, spectral_norm: bool, train: bool
) -> Array:
  """Applies `layer`, spectral-normalized if asked (critic layers only).

  One power iteration per call, as the official code; `u`/`sigma` live in
  `batch_stats` and advance only when `train` (then it must be mutable).
  """
  if spectral_norm:
    return nn.SpectralNorm(layer, name=f'{layer.name}_sn')(
        x, update_stats=train
    )
  return layer(x)


def _batch_norm(
    train: bool, axis_name: Optional[str], name: str,
    dtype: Dtype = jnp.float32,
) -> nn.BatchNorm:
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


def _avg_pool2(x: Array) -> Array:
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def _upsample2(x: Array) -> Array:
  """Nearest-neighbour x2 upsampling (`F.interpolate(scale_factor=2)`)."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


# ---------------------------------------------------------------------------
# Shared blocks.
# ---------------------------------------------------------------------------
def conv_transpose_4x4_s2(x: Array, kernel: Array, impl: str) -> Array:
  """PyTorch `ConvTranspose2d(k=4, stride=2, padding=1)` without bias.

  out[2i - 1 + ky, 2j - 1 + kx] += x[i, j] @ kernel[ky, kx] (H -> 2H), i.e.
  PyTorch's weight `W[c_in, c_out, ky, kx]` is `kernel = W.permute(2, 3, 0,
  1)`. Both implementations compute the same sums (equal up to float
  rounding, see models_test).

  Args:
    x: [batch, H, W, c_in].
    kernel: [4, 4, c_in, c_out].
    impl: 'dilated': the textbook form, correlating the 2x-dilated input,
      padded by k - 1 - p = 2, with the spatially flipped kernel.
      'subpixel': each output phase (r, s) in {0, 1}^2 is a 2x2 correlation
      of the input padded by 1, so all four come from one matmul of 2x2
      patches [B (H+1) (W+1), 4 c_in] by [4 c_in, 4 c_out], then
      depth-to-space. On CPU its gradient is several times faster than the
      dilated form's for wide outputs; for c_out = 1 the dilated form wins.

  Returns:
    [batch, 2H, 2W, c_out].
  """
  if impl == 'dilated':
    return lax.conv_general_dilated(
        x,
        kernel[::-1, ::-1],
        window_strides=(1, 1),
        padding=((2, 2), (2, 2)),
        lhs_dilation=(2, 2),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )
  if impl != 'subpixel':
    raise ValueError(
        f"Unknown conv-transpose impl {impl!r}; choose 'dilated' or"
        " 'subpixel'."
    )
  # With x padded by 1 (xp[t] = x[t - 1]), output row 2m + r is
  #   r = 0: xp[m] @ k[3] + xp[m + 1] @ k[1]   (window start t = m)
  #   r = 1: xp[m + 1] @ k[2] + xp[m + 2] @ k[0]   (window start t = m + 1)
  # so tap a of phase r is k[3 - 2a - r] = k[::-1][2a + r], in both axes.
  c_in, c_out = kernel.shape[2:]
  k = kernel[::-1, ::-1].reshape(2, 2, 2, 2, c_in, c_out)  # a, r, b, s, i, o
  return _phase_matmul(x, k.transpose(0, 2, 4, 1, 3, 5))


def _phase_matmul(x: Array, k: Array) -> Array:
  """Sub-pixel x2 upsampling by 2x2 phase correlations, as one matmul.

  Args:
    x: [b, h, w, c_in].
    k: [2 (a), 2 (b), c_in, 2 (r), 2 (s), c_out]: tap (a, b) of output
      phase (r, s), whose window for output (2m + r, 2n + s) starts at
      (m + r, n + s) of x padded by 1.

  Returns:
    [b, 2h, 2w, c_out]: out[2m + r, 2n + s] = z[m + r, n + s, r, s] with z
    the [b (h+1) (w+1), 4 c_in] 2x2 patches times k as [4 c_in, 4 c_out].
  """
  b, h, w, c_in = x.shape
  c_out = k.shape[-1]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  patches = jnp.concatenate(
      [xp[:, a : a + h + 1, c : c + w + 1] for a in (0, 1) for c in (0, 1)],
      axis=-1,
  )  # [b, h + 1, w + 1, (a, b, c_in)]
  z = _patch_matmul(patches, k.reshape(4 * c_in, 4 * c_out))
  z = z.reshape(b, h + 1, w + 1, 2, 2, c_out)
  rows = [
      jnp.stack([z[:, r : r + h, s : s + w, r, s] for s in (0, 1)], axis=3)
      for r in (0, 1)
  ]  # each [b, h, w, 2 (s), c_out]
  y = jnp.stack(rows, axis=2)  # [b, h, 2 (r), w, 2 (s), c_out]
  return y.reshape(b, 2 * h, 2 * w, c_out)


def _patch_matmul(patches: Array, k: Array) -> Array:
  """patches [..., n] @ k [n, o], for the im2col / sub-pixel layers.

  The same product as `jnp.dot`. On CPU its kernel gradient, a reduction
  over all rows, is taken as a row-major [small, rows] @ [rows, large]
  matmul with the smaller operand transposed into a fresh buffer: XLA:CPU
  otherwise emits it as a dot contracting both operands' leading dimension,
  which runs at about half the speed of its ordinary matmul (measured on
  one core: the cifar critic's [2048, 128] kernel gradient over 77k rows,
  0.86 s -> 0.51 s).
  """
  if jax.default_backend() != 'cpu':
    return jnp.dot(patches, k)
  return _patch_matmul_cpu(patches, k)


@jax.custom_vjp
def _patch_matmul_cpu(patches: Array, k: Array) -> Array:
  return jnp.dot(patches, k)


def _patch_matmul_fwd(patches, k):
  return jnp.dot(patches, k), (patches, k)


def _patch_matmul_bwd(res, g):
  patches, k = res
  p2 = patches.reshape(-1, patches.shape[-1])
  g2 = g.reshape(-1, g.shape[-1])
  # The barriers keep XLA from folding the transposes back into the dot.
  if g2.shape[1] <= p2.shape[1]:
    gt = lax.optimization_barrier(g2.T)
    dk = lax.optimization_barrier(jnp.dot(gt, p2)).T
  else:
    dk = jnp.dot(lax.optimization_barrier(p2.T), g2)
  return jnp.dot(g, k.T), dk


_patch_matmul_cpu.defvjp(_patch_matmul_fwd, _patch_matmul_bwd)


def conv_4x4_s2(x: Array, kernel: Array, impl: str) -> Array:
  """PyTorch `Conv2d(k=4, stride=2, padding=1)` without bias: H -> H // 2.

  out[i, j] = sum_{ky, kx} xp[2i + ky, 2j + kx] @ kernel[ky, kx], xp the
  input zero-padded by 1. Both implementations compute the same sums (equal
  up to float rounding, see models_test).

  Args:
    x: [batch, H, W, c_in].
    kernel: [4, 4, c_in, c_out] (HWIO, as `nn.Conv`).
    impl: 'lax': `lax.conv_general_dilated` with stride 2.
      'im2col': space-to-depth, s[m, n, (r, s, c)] = xp[2m + r, 2n + s, c],
      so tap (ky, kx) = (2a + r, 2b + s) reads block (i + a, j + b); the four
      shifted block windows concatenated are the patches [B Ho Wo, 16 c_in],
      times the kernel as a [16 c_in, c_out] matrix. Its gradients are
      matmuls plus pads, slices and adds.

  Returns:
    [batch, H // 2, W // 2, c_out].
  """
  if impl == 'lax':
    return lax.conv_general_dilated(
        x, kernel, window_strides=(2, 2), padding=((1, 1), (1, 1)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  if impl != 'im2col':
    raise ValueError(
        f"Unknown conv impl {impl!r}; choose 'lax' or 'im2col'.")
  b, h, w, c_in = x.shape
  c_out = kernel.shape[-1]
  ho, wo = h // 2, w // 2
  # Pad to exactly 2 (ho + 1) rows / columns: 1 before, 1 or 0 after (odd
  # sizes never read their last padded row).
  xp = jnp.pad(x, ((0, 0), (1, 2 * ho + 1 - h), (1, 2 * wo + 1 - w), (0, 0)))
  s = xp.reshape(b, ho + 1, 2, wo + 1, 2, c_in).transpose(0, 1, 3, 2, 4, 5)
  s = s.reshape(b, ho + 1, wo + 1, 4 * c_in)  # [..., (r, s, c_in)]
  k = kernel.reshape(2, 2, 2, 2, c_in, c_out)  # a, r, b, s, i, o
  k = k.transpose(0, 2, 1, 3, 4, 5).reshape(16 * c_in, c_out)
  patches = jnp.concatenate(
      [s[:, a : a + ho, c : c + wo] for a in (0, 1) for c in (0, 1)],
      axis=-1)  # [b, ho, wo, (a, b, r, s, c_in)]
  return _patch_matmul(patches, k)


def _conv_same_lax(x: Array, kernel: Array) -> Array:
  return lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding='SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _conv_same_kernel_grad(x: Array, g: Array, k: int) -> Array:
  """d/dkernel of a k x k stride-1 'SAME' convolution, as one matmul.

  With p[y, x, (kx, c)] = x[y, x + kx - q] (q = k // 2, zero outside) and
  gs[y, x, (ky, o)] = g[y - ky + q, x], the kernel gradient
  dk[ky, kx, c, o] = sum_{y, x} x[y + ky - q, x + kx - q, c] g[y, x, o] is
  sum_{y, x} p[y, x, (kx, c)] gs[y, x, (ky, o)]: a [k c, k o] matmul that
  reduces over batch and pixels (XLA:CPU's own weight gradient of this
  convolution ran 2-4x slower, see `conv_same`).
  """
  b, h, w, c = x.shape
  o = g.shape[-1]
  q = k // 2
  xp = jnp.pad(x, ((0, 0), (0, 0), (q, q), (0, 0)))
  p = jnp.concatenate([xp[:, :, j:j + w] for j in range(k)], axis=-1)
  gp = jnp.pad(g, ((0, 0), (q, q), (0, 0), (0, 0)))
  gs = jnp.concatenate([gp[:, 2 * q - i:2 * q - i + h] for i in range(k)],
                       axis=-1)
  # Batch chunks of ~128 MB of patches (2 CPU cores: ~15% faster for
  # 200-500 MB of patches, slower when split below ~100 MB).
  n = max(1, min(b, round(p.size * p.dtype.itemsize / 2**27)))
  bounds = [b * i // n for i in range(n + 1)]
  dk = sum(jnp.einsum('bhwk,bhwo->ko', p[i:j], gs[i:j])
           for i, j in zip(bounds[:-1], bounds[1:]))  # [(kx, c), (ky, o)]
  return dk.reshape(k, c, k, o).transpose(2, 0, 1, 3)


@jax.custom_vjp
def _conv_same_rowgrad(x: Array, kernel: Array) -> Array:
  return _conv_same_lax(x, kernel)


def _conv_same_rowgrad_fwd(x, kernel):
  return _conv_same_lax(x, kernel), (x, kernel)


def _conv_same_rowgrad_bwd(res, g):
  x, kernel = res
  _, vjp_x = jax.vjp(lambda x: _conv_same_lax(x, kernel), x)
  (dx,) = vjp_x(g)
  return dx, _conv_same_kernel_grad(x, g, kernel.shape[0])


_conv_same_rowgrad.defvjp(_conv_same_rowgrad_fwd, _conv_same_rowgrad_bwd)


def conv_same(x: Array, kernel: Array, impl: str) -> Array:
  """k x k, stride-1, 'SAME' convolution without bias (k odd).

  Args:
    x: [batch, H, W, c_in].
    kernel: [k, k, c_in, c_out] (HWIO, as `nn.Conv`).
    impl: 'lax': `lax.conv_general_dilated` and its autodiff.
      'rowgrad': the same forward and input gradient, with the kernel
      gradient as one [k c_in, k c_out] matmul (`_conv_same_kernel_grad`).
      Measured on 2 CPU cores (forward + both gradients of one layer): 3x3,
      128 -> 128 at 16x16, 320 rows: 0.88 s -> 0.40 s; 256 -> 256 at 32x32,
      64 rows: 1.7 s -> 1.3 s. Higher derivatives (the gradient penalty)
      differentiate the backward pass, which is plain jax.
      'dot': only for k = 1, a matmul over channels.

  Returns:
    [batch, H, W, c_out].
  """
  k = kernel.shape[0]
  if kernel.shape[1] != k or k % 2 != 1:
    raise ValueError(f'conv_same needs an odd square kernel, got '
                     f'{kernel.shape[:2]}.')
  if impl == 'lax':
    return _conv_same_lax(x, kernel)
  if impl == 'rowgrad':
    return _conv_same_rowgrad(x, kernel)
  if impl == 'dot' and k == 1:
    return jnp.dot(x, kernel[0, 0])
  raise ValueError(f"Unknown conv impl {impl!r} for a {k}x{k} kernel; "
                   "choose 'lax', 'rowgrad' or (1x1 only) 'dot'.")


def conv3x3_pool2(x: Array, kernel: Array, impl: str) -> Array:
  """2x2 average pool of a 3x3 'SAME' convolution (no bias), in one conv.

  Both are linear: pool(conv3(x))[i, j] = sum_{u, v < 4} xp[2i + u, 2j + v]
  @ K[u, v] with xp padded by 1 and K[u, v] = 1/4 sum_{r, s in {0, 1}}
  kernel[u - r, v - s] (zero outside 3x3): the 4x4 stride-2 convolution
  `conv_4x4_s2`, with 4/9 of the multiply-adds (H x W -> H/2 x W/2).

  Args:
    x: [batch, H, W, c_in], H and W even.
    kernel: [3, 3, c_in, c_out].
    impl: of `conv_4x4_s2` ('lax' or 'im2col').

  Returns:
    [batch, H / 2, W / 2, c_out].
  """
  if kernel.shape[:2] != (3, 3):
    raise ValueError(f'conv3x3_pool2 needs a 3x3 kernel, got {kernel.shape}.')
  pads = [((a, 1 - a), (c, 1 - c), (0, 0), (0, 0)) for a in (0, 1)
          for c in (0, 1)]
  k4 = sum(jnp.pad(kernel, p) for p in pads) / 4
  return conv_4x4_s2(x, k4, impl)


def upsample2_conv3x3(x: Array, kernel: Array) -> Array:
  """3x3 'SAME' convolution (no bias) of the nearest x2 upsampling of x.

  Output row 2m + r reads upsampled rows 2m + r - 1 .. 2m + r + 1, i.e. input
  rows m - 1, m, m (r = 0) or m, m, m + 1 (r = 1): each output phase (r, s)
  is a 2x2 correlation of x padded by 1 with taps summed from the 3x3
  kernel (r = 0: k[0], k[1] + k[2]; r = 1: k[0] + k[1], k[2]). All four
  phases are one matmul of 2x2 patches [B (H+1) (W+1), 4 c_in] by
  [4 c_in, 4 c_out], then depth-to-space, as `conv_transpose_4x4_s2`'s
  'subpixel' form: 16 (H+1)(W+1) / (36 H W) of the direct form's
  multiply-adds (~1/2 at 16x16 inputs).

  Args:
    x: [batch, H, W, c_in].
    kernel: [3, 3, c_in, c_out].

  Returns:
    [batch, 2H, 2W, c_out].
  """
  if kernel.shape[:2] != (3, 3):
    raise ValueError(
        f'upsample2_conv3x3 needs a 3x3 kernel, got {kernel.shape}.')
  # taps[r][a]: the kernel rows summed into tap a of phase r.
  taps = (((0,), (1, 2)), ((0, 1), (2,)))

  def phase_kernel(r, s):  # [2 (a), 2 (b), c_in, c_out]
    return jnp.stack([jnp.stack([
        sum(kernel[i, j] for i in taps[r][a] for j in taps[s][bb])
        for bb in (0, 1)]) for a in (0, 1)])

  k = jnp.stack([jnp.stack([phase_kernel(r, s) for s in (0, 1)])
                 for r in (0, 1)])  # [r, s, a, b, i, o]
  return _phase_matmul(x, k.transpose(2, 3, 4, 0, 1, 5))


def upsample_conv_kernel(kernel: Array) -> Array:
  """The 4x4 kernel K with `conv_transpose_4x4_s2(x, K)` == conv3(up2(x)).

  As in `upsample2_conv3x3`, output row 2m reads input rows m - 1 (tap 0)
  and m (taps 1 + 2), row 2m + 1 rows m (taps 0 + 1) and m + 1 (tap 2); the
  transposed convolution adds x[i] @ K[ky] into row 2i - 1 + ky, so
  K = [k2, k1 + k2, k0 + k1, k0] in each axis. The same function as
  conv3(up2(x)) with 4/9 of its multiply-adds, as XLA's own transposed
  convolution (the 'xla' form of `ConvSame(resample='up')`).

  Args:
    kernel: [3, 3, c_in, c_out].

  Returns:
    [4, 4, c_in, c_out].
  """
  taps = ((2,), (1, 2), (0, 1), (0,))
  rows = jnp.stack([sum(kernel[i] for i in t) for t in taps])  # [4, 3, ...]
  return jnp.stack([sum(rows[:, j] for j in t) for t in taps], axis=1)


def conv_forms(conv_impl: str) -> str:
  """The forms a `model.conv_impl` value stands for: 'cpu_forms' or 'xla'.

  'auto' is 'cpu_forms' on CPU and 'xla' on accelerators: the matmul forms
  are CPU measurements (below), and on GPU they would turn every
  convolution into a GEMM fusion for XLA's autotuner instead of cuDNN's
  convolutions. Decided when a layer is traced, by `jax.default_backend()`.

  CPU (measured on 2 cores):

  In the mnist training step (batch 256, n_critic 1, WGAN-GP on, jax 0.10.2,
  interleaved runs on a loaded machine) 'im2col' for the 64 -> 128 conv2
  layers (encoder and critic) took the step from ~4.6 s to ~3.1 s: the lax
  weight gradient on the 1280-row critic batch and the penalty's second
  derivative are the slow parts it replaces. For conv1 (1-2 input channels)
  it first gained nothing; once its kernel gradient became an ordinary
  matmul (`_patch_matmul`) it did: the critic's conv1 forward + gradients on
  1202 rows took 24 ms against lax's 68, and the step (2026-11-29, quiet
  machine, interleaved) went from 1.11-1.16 s to 1.07-1.10 s (benchmark
  settings) and from ~1.27-1.32 s to ~1.24-1.27 s (penalty on). cifar's
  3- and 6-channel inputs: within noise (6.5-6.9 s either way).

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
  kernel_init: Initializer = _TORCH_KERNEL_INIT
  bias_init: Initializer = nn.initializers.zeros
  # A `model.conv_impl` value (`conv_forms`): 'cpu_forms' is `conv_4x4_s2`'s
  # 'im2col', 'xla' its 'lax'.
  impl: str = 'auto'
  dtype: Dtype = jnp.float32  # Of the arithmetic; variables are float32.

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param('kernel', self.kernel_init,
                        (4, 4, x.shape[-1], self.features))
    bias = self.param('bias', self.bias_init, (self.features,))
    x, kernel, bias = _cast(self.dtype, x, kernel, bias)
    form = 'im2col' if conv_forms(self.impl) == 'cpu_forms' else 'lax'
    return conv_4x4_s2(x, kernel, form) + bias


class ConvSame(nn.Module):
  """`nn.Conv(features, (k, k), padding='SAME')`, optionally fused with a
  nearest x2 upsampling before it or a 2x2 average pool after it.

  Same variables (`kernel` [k, k, c_in, features], `bias`) and initial
  values as `nn.Conv`, so either module reads the other's checkpoints; the
  fused forms compute the same function as the separate ops (up to float
  rounding) with fewer multiply-adds (conv3(up(x)): `upsample2_conv3x3` /
  `upsample_conv_kernel`, 4/9 of them; pool(conv3(x)): `conv3x3_pool2`, 4/9;
  for 1x1 kernels the conv moves to the low-resolution side, 1/4).
  """

  features: int
  kernel_size: int
  kernel_init: Initializer = _TORCH_KERNEL_INIT
  bias_init: Initializer = nn.initializers.zeros
  resample: str = 'none'  # 'none' | 'up' (conv(up(x))) | 'pool' (pool(conv(x)))
  # 'literal': the literal composition with `lax.conv_general_dilated` (the
  # reference form). A `model.conv_impl` value (`conv_forms`) gives the
  # fused forms above, with 1x1 kernels on the low-resolution side:
  # 'xla': every convolution XLA's own (conv3(up(x)) as a 4x4 stride-2
  # transposed convolution, pool(conv3(x)) as a 4x4 stride-2 convolution).
  # 'cpu_forms': conv3(up(x)) as 2x2 phase matmuls, pool(conv3(x)) in the
  # im2col form, 1x1 kernels as a matmul, unfused 3x3 kernels 'rowgrad' (see
  # `conv_same`) for >= 16 input and output channels, else XLA's (256 -> 3
  # and 6 -> 128 layers measured equal or faster with it on CPU).
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
    x, kernel, bias = _cast(self.dtype, x, kernel, bias)
    up, pool = self.resample == 'up', self.resample == 'pool'
    if self.impl == 'literal':
      y = conv_same(_upsample2(x) if up else x, kernel, 'lax') + bias
      return _avg_pool2(y) if pool else y
    cpu = conv_forms(self.impl) == 'cpu_forms'
    if k == 1:  # Conv and resampling commute: convolve the small side.
      y = conv_same(_avg_pool2(x) if pool else x, kernel,
                    'dot' if cpu else 'lax') + bias
      return _upsample2(y) if up else y
    if up or pool:
      if k != 3:
        raise ValueError(f'resample={self.resample!r} needs a 1x1 or 3x3 '
                         f'kernel, got {k}x{k}.')
      if up and cpu:
        return upsample2_conv3x3(x, kernel) + bias
      if up:
        return conv_transpose_4x4_s2(x, upsample_conv_kernel(kernel),
                                     'dilated') + bias
      return conv3x3_pool2(x, kernel, 'im2col' if cpu else 'lax') + bias
    fast = cpu and min(x.shape[-1], self.features) >= 16
    return conv_same(x, kernel, 'rowgrad' if fast else 'lax') + bias


class ConvTranspose4x4(nn.Module):
  """`torch.nn.ConvTranspose2d(c_in, features, 4, 2, 1)`: H x W -> 2H x 2W.

  Table 4 writes padding 2, which would give 7 -> 12 -> 22; PyTorch
  padding 1 gives the 7 -> 14 -> 28 that the table's shapes need.
  """

  features: int
  # A `model.conv_impl` value (`conv_forms`). 'xla': `conv_transpose_4x4_s2`'s
  # 'dilated' form (XLA's transposed convolution). 'cpu_forms': 'subpixel'
  # for >= 16 output channels, else 'dilated'. Measured on 2 CPU cores,
  # batch 256, forward + gradient: subpixel ~7x faster for 128 -> 64
  # channels (7 -> 14) but ~3x slower for 64 -> 1 (14 -> 28); the mnist
  # generator is ~4.5x faster with 'cpu_forms' than with 'dilated' alone
  # (its forward alone ~15% slower).
  impl: str = 'auto'
  dtype: Dtype = jnp.float32  # Of the arithmetic; variables are float32.

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param(
        'kernel',
        _TORCH_TRANSPOSE_KERNEL_INIT,
        (4, 4, x.shape[-1], self.features),
    )
    bias = self.param('bias', _torch_bias_init(16 * self.features),
                      (self.features,))
    x, kernel, bias = _cast(self.dtype, x, kernel, bias)
    cpu = conv_forms(self.impl) == 'cpu_forms'
    form = 'subpixel' if cpu and self.features >= 16 else 'dilated'
    return conv_transpose_4x4_s2(x, kernel, form) + bias


class ResBlockUp(nn.Module):
  """SNGAN generator block: BN-ReLU-up-conv3-BN-ReLU-conv3 + up-conv1."""

  features: int
  axis_name: Optional[str] = None
  conv_impl: str = 'auto'  # See `ConvSame.impl`.
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    def conv(k, gain, name, resample='none'):
      # Official Gblock: biases start at zero, xavier gains sqrt(2) and 1.
      return ConvSame(self.features, k, kernel_init=_xavier(gain),
                      bias_init=nn.initializers.zeros, resample=resample,
                      impl=self.conv_impl, dtype=self.dtype, name=name)

    bn = functools.partial(_batch_norm, train, self.axis_name,
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
  conv_impl: str = 'auto'  # See `ConvSame.impl`.
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    def conv(h, k, gain, name, resample='none'):
      # Official Block/Dblock: biases start at zero, xavier gains sqrt(2), 1.
      layer = ConvSame(self.features, k, kernel_init=_xavier(gain),
                       bias_init=nn.initializers.zeros, resample=resample,
                       impl=self.conv_impl, dtype=self.dtype, name=name)
      return _layer(layer, h, spectral_norm=self.spectral_norm, train=train)

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
def _torch_conv(features: int, c_in: int, name: str, *,
                zero_bias: bool = False, impl: str = 'auto',
                dtype: Dtype = jnp.float32) -> Conv4x4S2:
  """PyTorch `Conv2d(c_in, features, 4, 2, 1)` with PyTorch's default init."""
  return Conv4x4S2(
      features, kernel_init=_TORCH_KERNEL_INIT,
      bias_init=(nn.initializers.zeros if zero_bias
                 else _torch_bias_init(16 * c_in)),
      impl=impl, dtype=dtype, name=name)


def _torch_dense(features: int, fan_in: int, name: str, *,
                 zero_bias: bool = False,
                 dtype: Dtype = jnp.float32) -> nn.Dense:
  """PyTorch `Linear(fan_in, features)` with PyTorch's default init."""
  return nn.Dense(
      features, kernel_init=_TORCH_KERNEL_INIT,
      bias_init=(nn.initializers.zeros if zero_bias
                 else _torch_bias_init(fan_in)),
      dtype=dtype, name=name)


class MnistEncoder(nn.Module):
  """x [B, 28, 28, C] -> z [B, latent]: conv(w)-conv(2w)-dense(16w)-dense."""

  latent_dim: int = 64
  width: int = 64
  conv_impl: str = 'auto'  # See `conv_forms`.
  dtype: Dtype = jnp.float32  # Of the arithmetic; z is float32.

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    del train  # No normalization layers.
    conv = functools.partial(_torch_conv, impl=self.conv_impl,
                             dtype=self.dtype)
    dense = functools.partial(_torch_dense, dtype=self.dtype)
    (x,) = _cast(self.dtype, x)
    h = nn.relu(conv(self.width, x.shape[-1], 'conv1')(x))
    h = nn.relu(conv(2 * self.width, self.width, 'conv2')(h))
    h = h.reshape(h.shape[0], -1)
    h = nn.relu(dense(16 * self.width, h.shape[-1], 'fc1')(h))
    return _float32(dense(self.latent_dim, 16 * self.width, 'fc2')(h))


class MnistGenerator(nn.Module):
  """z [B, latent] -> x [B, 28, 28, C] in [-1, 1] (float32)."""

  channels: int = 1
  width: int = 64
  conv_impl: str = 'auto'  # See ConvTranspose4x4.
  dtype: Dtype = jnp.float32  # Of the arithmetic; the images are float32.

  @nn.compact
  def __call__(self, z: Array, train: bool) -> Array:
    del train  # No normalization layers.
    w = self.width
    dense = functools.partial(_torch_dense, dtype=self.dtype)
    deconv = functools.partial(ConvTranspose4x4, impl=self.conv_impl,
                               dtype=self.dtype)
    (z,) = _cast(self.dtype, z)
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
  conv_impl: str = 'auto'  # See `conv_forms`.
  dtype: Dtype = jnp.float32  # Of the arithmetic.

  @nn.compact
  def __call__(self, xy: Array, train: bool) -> tuple[Array, Array]:
    # Official SN layers start biases at zero (torch_ref.SNConv2d/SNLinear).
    sn = dict(spectral_norm=self.spectral_norm, train=train)
    conv = functools.partial(_torch_conv, zero_bias=True, impl=self.conv_impl,
                             dtype=self.dtype)
    w = self.width
    (xy,) = _cast(self.dtype, xy)
    h = _layer(conv(w, xy.shape[-1], 'conv1'), xy, **sn)
    h = nn.leaky_relu(h, _LEAK)
    h = _layer(conv(2 * w, w, 'conv2'), h, **sn)
    h = nn.leaky_relu(h, _LEAK)
    h = h.reshape(h.shape[0], -1)
    h = _layer(_torch_dense(16 * w, h.shape[-1], 'fc', zero_bias=True,
                            dtype=self.dtype), h, **sn)
    features = _float32(nn.leaky_relu(h, _LEAK))
    logits = _layer(_torch_dense(1, 16 * w, 'out', zero_bias=True), features,
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
    (h,) = _cast(self.dtype, x)
    for i, mult in enumerate((1, 2, 4)):  # 32 -> 16 -> 8 -> 4
      h = nn.Conv(mult * self.width, (4, 4), strides=(2, 2),
                  padding=((1, 1), (1, 1)), use_bias=False,
                  kernel_init=_TORCH_KERNEL_INIT, dtype=self.dtype,
                  name=f'conv{i + 1}')(h)
      h = _batch_norm(train, self.axis_name, f'bn{i + 1}', self.dtype)(h)
      h = nn.leaky_relu(h, _LEAK)
    h = nn.Conv(self.latent_dim, (4, 4), padding='VALID', use_bias=False,
                kernel_init=_TORCH_KERNEL_INIT, dtype=self.dtype,
                name='conv4')(h)  # 4 -> 1
    return _float32(h.reshape(h.shape[0], self.latent_dim))


class CifarGenerator(nn.Module):
  """SNGAN ResnetGenerator32: z [B, latent] -> x [B, 32, 32, C] (float32)."""

  channels: int = 3
  width: int = 256  # Channels of every block (the official `ch`).
  axis_name: Optional[str] = None
  conv_impl: str = 'auto'  # See `ConvSame.impl`.
  dtype: Dtype = jnp.float32  # Of the arithmetic; the images are float32.

  @nn.compact
  def __call__(self, z: Array, train: bool) -> Array:
    (z,) = _cast(self.dtype, z)
    h = nn.Dense(4 * 4 * self.width, kernel_init=_xavier(1.0),
                 bias_init=_torch_bias_init(z.shape[-1]), dtype=self.dtype,
                 name='fc')(z)
    h = h.reshape(h.shape[0], 4, 4, self.width)
    for i in range(3):  # 4 -> 8 -> 16 -> 32
      h = ResBlockUp(self.width, self.axis_name, self.conv_impl, self.dtype,
                     name=f'block{i + 1}')(h, train)
    h = nn.relu(_batch_norm(train, self.axis_name, 'bn', self.dtype)(h))
    h = ConvSame(self.channels, 3, kernel_init=_xavier(1.0),
                 bias_init=_torch_bias_init(9 * self.width),
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
  conv_impl: str = 'auto'  # See `ConvSame.impl`.
  dtype: Dtype = jnp.float32  # Of the arithmetic.

  @nn.compact
  def __call__(self, xy: Array, train: bool) -> tuple[Array, Array]:
    kw = dict(features=self.width, spectral_norm=self.spectral_norm,
              conv_impl=self.conv_impl, dtype=self.dtype)
    (xy,) = _cast(self.dtype, xy)
    h = ResBlockDown(downsample=True, first=True, name='block1', **kw)(
        xy, train)  # 32 -> 16
    h = ResBlockDown(downsample=True, name='block2', **kw)(h, train)  # -> 8
    h = ResBlockDown(downsample=False, name='block3', **kw)(h, train)
    h = ResBlockDown(downsample=False, name='block4', **kw)(h, train)
    features = jnp.sum(_float32(nn.relu(h)), axis=(1, 2))
    out = nn.Dense(1, use_bias=False, kernel_init=_xavier(1.0), name='out')
    logits = _layer(out, features, spectral_norm=self.spectral_norm,
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


def create_models(
    model_config: ml_collections.ConfigDict,
    image_shape: Sequence[int],
    axis_name: Optional[str] = None,
) -> tuple[Autoencoder, Critic]:
  """Builds (Autoencoder, Critic) for `model_config.arch`.

  Args:
    model_config: `config.model`: `arch`, `latent_dim`, `width` (mnist: base
      width, 64 in Table 4; cifar: encoder w, 2w, 4w, generator 4w, critic
      2w, 64 for Table 3), `spectral_norm` (critic), and optionally
      `conv_impl` (`CONV_IMPLS`, default 'auto') and `compute_dtype`
      (`COMPUTE_DTYPES`, default 'float32').
    image_shape: (H, W, C) of the images.
    axis_name: pmap axis for global BatchNorm statistics; None outside pmap.

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
  conv_forms(conv_impl)  # Validates it.
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
