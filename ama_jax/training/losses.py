"""Pure loss functions of AMA (paper eqs. 1-5; docs/DESIGN.md).

D(x, y) is the critic on the channel-stacked pair; w_r the per-row weight
(+1 normal, -lambda_neg for a negative or labelled anomaly), so one formula
covers eq. (3) and the mirrored eq. (5):

  critic:      mean_r[w_r (D(x_r, xhat_r) - D(x_r, x_r))]
               + lambda_inter mean_{i,k}[D(x_k, xinter_i) - D(x_k, x_k)]
               + lambda_gp GP
  autoencoder: mean_r[-w_r D(x_r, xhat_r)]
               + lambda_inter mean_{i,k}[-D(x_k, xinter_i)]
               + lambda_reg mean_normal ||E(x)||

Every function is keyword-only and a mean over rows: `mask` [B] (bool or
0/1) selects rows, `denominator` replaces the row count, e.g. the global
count across devices so that `lax.psum` of per-device losses is the global
mean. Masked-out rows never reach the sum (`jnp.where`, not a product), so
even a non-finite value there changes neither the loss nor its gradient.
"""
from collections.abc import Callable
from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array


def _masked_mean(
    values: Array, mask: Optional[Array], denominator: Optional[Array]
) -> Array:
  """Mean of `values` [B, ...] over rows in `mask` (and over trailing axes)."""
  values = values.reshape(values.shape[0], -1).mean(axis=1)
  if mask is None:
    mask = jnp.ones(values.shape, bool)
  mask = jnp.asarray(mask).astype(bool)
  total = jnp.sum(jnp.where(mask, values, 0.0))
  if denominator is None:
    # No selected row: the loss is 0 rather than 0 / 0.
    denominator = jnp.maximum(jnp.sum(mask), 1)
  return total / denominator


def _weighted(weights: Array, values: Array) -> Array:
  # A zero weight removes its row exactly (no 0 * inf = nan).
  return jnp.where(weights != 0, weights * values, 0.0)


def critic_loss(
    *,
    real_logits: Array,
    fake_logits: Array,
    weights: Array,
    mask: Optional[Array] = None,
    denominator: Optional[Array] = None,
) -> Array:
  """Mirrored Wasserstein critic loss, mean_r[w_r (fake_r - real_r)].

  Minimising it maximises D(x, x) - D(x, xhat) on normal rows (eq. 1, 3) and
  its mirror, lambda_neg times, on negative rows (eq. 5).

  Args:
    real_logits: [B] D(x_r, x_r).
    fake_logits: [B] D(x_r, xhat_r).
    weights: [B] +1 normal, -lambda_neg negative.
    mask: optional [B] rows to average over (default all).
    denominator: optional divisor replacing the number of selected rows.

  Returns:
    Scalar loss.
  """
  values = _weighted(weights, fake_logits - real_logits)
  return _masked_mean(values, mask, denominator)


def ae_adversarial_loss(
    *,
    fake_logits: Array,
    weights: Array,
    mask: Optional[Array] = None,
    denominator: Optional[Array] = None,
) -> Array:
  """Encoder/generator adversarial loss, mean_r[-w_r D(x_r, xhat_r)].

  Args:
    fake_logits: [B] D(x_r, G(E(x_r))).
    weights: [B] +1 normal, -lambda_neg negative.
    mask: optional [B] rows to average over (default all).
    denominator: optional divisor replacing the number of selected rows.

  Returns:
    Scalar loss.
  """
  return _masked_mean(_weighted(weights, -fake_logits), mask, denominator)


def interpolation_critic_loss(
    *,
    anchor_real_logits: Array,
    inter_logits: Array,
    mask: Optional[Array] = None,
    denominator: Optional[Array] = None,
) -> Array:
  """Critic part of eq. (4): mean_{i,k}[D(x_k, xinter_i) - D(x_k, x_k)].

  Args:
    anchor_real_logits: [B] or [B, m] D(x_k, x_k) for the anchors k of
      interpolant i (row i).
    inter_logits: same shape, D(x_k, xinter_i).
    mask: optional [B] valid interpolants (normal rows only).
    denominator: optional divisor replacing the number of selected rows.

  Returns:
    Scalar loss (mean over selected rows and over anchors).
  """
  return _masked_mean(inter_logits - anchor_real_logits, mask, denominator)


def interpolation_ae_loss(
    *,
    inter_logits: Array,
    mask: Optional[Array] = None,
    denominator: Optional[Array] = None,
) -> Array:
  """Encoder/generator part of eq. (4): mean_{i,k}[-D(x_k, xinter_i)].

  Args:
    inter_logits: [B] or [B, m] D(x_k, xinter_i).
    mask: optional [B] valid interpolants (normal rows only).
    denominator: optional divisor replacing the number of selected rows.

  Returns:
    Scalar loss.
  """
  return _masked_mean(-inter_logits, mask, denominator)


def _safe_norm(x: Array, axis) -> Array:
  """L2 norm with gradient 0 (not nan) at 0, as PyTorch's `norm`."""
  sq = jnp.sum(jnp.square(x), axis=axis)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def latent_norm(
    z: Array,
    *,
    mask: Optional[Array] = None,
    squared: bool = False,
    denominator: Optional[Array] = None,
) -> Array:
  """Latent regulariser: mean over selected rows of ||z||_2 (or ||z||_2^2).

  The official code uses the un-squared norm of normal rows' encodings.

  Args:
    z: [B, d] encodings E(x).
    mask: optional [B] rows to average over (normal rows).
    squared: use ||z||^2 instead of ||z||.
    denominator: optional divisor replacing the number of selected rows.

  Returns:
    Scalar.
  """
  values = jnp.sum(jnp.square(z), axis=-1) if squared else _safe_norm(z, -1)
  return _masked_mean(values, mask, denominator)


def _per_sample_norm(grads: Array) -> Array:
  return _safe_norm(grads, tuple(range(1, grads.ndim)))  # [B]


def _per_pixel_norm(grads: Array) -> Array:
  # Official `gradients.norm(2, dim=1)` on NCHW: a norm over channels per
  # pixel, not WGAN-GP's per-sample norm.
  return _safe_norm(grads, -1)  # [B, H, W]


GP_STYLES = {'per_sample': _per_sample_norm, 'per_pixel': _per_pixel_norm}


def gradient_penalty(
    critic_fn: Callable[[Array], Array],
    x: Array,
    x_rec: Array,
    alpha: Array,
    *,
    style: str,
) -> Array:
  """WGAN-GP on the mirrored pair, as the official `calc_gradient_penalty`.

  Only the second slot is interpolated: the critic sees (x, alpha x + (1 -
  alpha) x_rec) and the gradient is taken w.r.t. the whole channel stack.
  Inputs are treated as constants (PyTorch's `.detach()`): the penalty
  trains the critic only.

  Args:
    critic_fn: stacked pair [B, H, W, 2C] -> logits [B]; pure (eval-mode
      normalisation, nothing mutable).
    x: [B, H, W, C] images.
    x_rec: [B, H, W, C] reconstructions.
    alpha: [B] (or broadcastable to x) mixing weights in [0, 1].
    style: 'per_sample' ((||grad||_2 per example - 1)^2, WGAN-GP) or
      'per_pixel' (the official code: norm over channels at each pixel, then
      (. - 1)^2 averaged over pixels and examples).

  Returns:
    Scalar penalty (not multiplied by lambda_gp).

  Raises:
    ValueError: unknown style.
  """
  if style not in GP_STYLES:
    raise ValueError(
        f'Unknown gradient-penalty style {style!r}; choose one of'
        f' {sorted(GP_STYLES)}.'
    )
  alpha = jnp.asarray(alpha)
  if alpha.ndim == 1:
    alpha = alpha.reshape(-1, *([1] * (x.ndim - 1)))
  x = lax.stop_gradient(x)
  x_inter = lax.stop_gradient(alpha * x + (1 - alpha) * x_rec)
  stacked = jnp.concatenate([x, x_inter], axis=-1)
  grads = jax.grad(lambda h: jnp.sum(critic_fn(h)))(stacked)
  return jnp.mean(jnp.square(GP_STYLES[style](grads) - 1.0))
