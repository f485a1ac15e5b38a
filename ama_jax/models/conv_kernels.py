"""The forms of the networks' convolutions, as functions of (x, kernel).

Each computes a PyTorch layer without its bias in XLA's own form (`lax`,
`dilated`) or in exact matmul forms faster on CPU: im2col, sub-pixel phase
matmuls, a nearest x2 upsampling or a 2x2 average pool fused into the
convolution, kernel gradients as ordinary matmuls. All equal the literal
`lax.conv_general_dilated` composition up to float rounding, values and
gradients (conv_layers_test); `conv_layers` picks one per layer.
Measurements behind the forms: docs/PERFORMANCE.md.
"""
import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array


def avg_pool2(x: Array) -> Array:
  """2x2 average pooling, stride 2 (`F.avg_pool2d(2)`)."""
  return nn.avg_pool(x, (2, 2), strides=(2, 2))


def upsample2(x: Array) -> Array:
  """Nearest-neighbour x2 upsampling (`F.interpolate(scale_factor=2)`)."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


def conv_transpose_4x4_s2(x: Array, kernel: Array, impl: str) -> Array:
  """PyTorch `ConvTranspose2d(k=4, stride=2, padding=1)` without bias.

  out[2i - 1 + ky, 2j - 1 + kx] += x[i, j] @ kernel[ky, kx] (H -> 2H), i.e.
  PyTorch's weight `W[c_in, c_out, ky, kx]` is `kernel = W.permute(2, 3, 0,
  1)`. Both implementations compute the same sums (equal up to float
  rounding, see conv_layers_test).

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
        x, kernel[::-1, ::-1], window_strides=(1, 1),
        padding=((2, 2), (2, 2)), lhs_dilation=(2, 2),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  if impl != 'subpixel':
    raise ValueError(f"Unknown conv-transpose impl {impl!r}; choose "
                     "'dilated' or 'subpixel'.")
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
  which runs at about half the speed of its ordinary matmul.
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
  up to float rounding, see conv_layers_test).

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


def _conv_same_im2col(x: Array, kernel: Array) -> Array:
  """Input-side im2col: the k x k shifted windows of x concatenated,
  [B, H, W, k k c_in], times the kernel as a [k k c_in, c_out] matrix.

  For few input channels (the cifar critic's 6-channel pair, the encoder's
  3-channel image) the patches stay small and all three products (forward,
  input and kernel gradients) are ordinary matmuls; XLA:CPU's own kernel
  gradient of such a convolution ran at ~10 GFLOP/s (docs/PERFORMANCE.md).
  """
  k = kernel.shape[0]
  q = k // 2
  _, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (q, q), (q, q), (0, 0)))
  patches = jnp.concatenate([xp[:, i:i + h, j:j + w] for i in range(k)
                             for j in range(k)], axis=-1)  # (ky, kx, c)
  return _patch_matmul(patches, kernel.reshape(k * k * c, -1))


def _conv_same_col2im(x: Array, kernel: Array) -> Array:
  """Output-side form: z = x @ kernel as [c_in, (ky, kx, c_out)], then
  y[i, j] = sum_{ky, kx} z[i + ky - q, j + kx - q, ky, kx] (zero outside).

  For few output channels (the cifar generator's 256 -> 3 image layer)
  z has k k c_out columns and the three products are ordinary matmuls
  plus k k shifted adds.
  """
  k = kernel.shape[0]
  q = k // 2
  b, h, w, c = x.shape
  o = kernel.shape[-1]
  km = kernel.transpose(2, 0, 1, 3).reshape(c, k * k * o)
  z = _patch_matmul(x, km).reshape(b, h, w, k, k, o)
  zp = jnp.pad(z, ((0, 0), (q, q), (q, q), (0, 0), (0, 0), (0, 0)))
  return sum(zp[:, i:i + h, j:j + w, i, j] for i in range(k)
             for j in range(k))


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
      gradient as one [k c_in, k c_out] matmul (`_conv_same_kernel_grad`),
      faster on CPU than XLA's. Higher derivatives (the gradient penalty)
      differentiate the backward pass, which is plain jax.
      'im2col': patches of the input times the kernel as a matrix
      (`_conv_same_im2col`), for few input channels.
      'col2im': the input times the kernel as a matrix, then shifted sums
      (`_conv_same_col2im`), for few output channels.
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
  if impl == 'im2col':
    return _conv_same_im2col(x, kernel)
  if impl == 'col2im':
    return _conv_same_col2im(x, kernel)
  if impl == 'dot' and k == 1:
    return jnp.dot(x, kernel[0, 0])
  raise ValueError(f"Unknown conv impl {impl!r} for a {k}x{k} kernel; "
                   "choose 'lax', 'rowgrad', 'im2col', 'col2im' or (1x1 "
                   "only) 'dot'.")


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
  convolution (the 'xla' form of `conv_layers.ConvSame(resample='up')`).

  Args:
    kernel: [3, 3, c_in, c_out].

  Returns:
    [4, 4, c_in, c_out].
  """
  taps = ((2,), (1, 2), (0, 1), (0,))
  rows = jnp.stack([sum(kernel[i] for i in t) for t in taps])  # [4, 3, ...]
  return jnp.stack([sum(rows[:, j] for j in t) for t in taps], axis=1)
