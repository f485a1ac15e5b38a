"""The training step's losses for each player: the autoencoder's forward
pass, the critic on the pairs the losses need, and the critic's and the
encoder/generator's losses (paper eqs. 1, 3-5) with their diagnostics.

Losses are sums over this device's rows divided by global counts
(`StepBatch`), so the `psum` of their gradients over the devices is the
gradient of the global batch's loss.
"""
from typing import NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp

from ama_jax.training import losses
from ama_jax.training import placement
from ama_jax.training import step_settings

AXIS = placement.AXIS


def ae_forward(ae_model, params, batch_stats, x, alpha, anchors,
               s: step_settings.StepSettings):
  """x -> (x_rec, z, x_inter) in train mode; returns new batch stats too."""

  def forward(module, x):
    z = module.encode(x, train=True)
    x_rec = module.decode(z, train=True)
    if s.loss.lambda_inter == 0:
      return x_rec, z, None
    z_all = lax.all_gather(z, AXIS, tiled=True)  # [B, d]
    z_inter = jnp.einsum('bm,bmd->bd', alpha, z_all[anchors])
    x_inter = module.decode(z_inter, train=True)
    if s.loss.detach_inter:  # Official code: no gradient to E, G (no work).
      x_inter = lax.stop_gradient(x_inter)
    return x_rec, z, x_inter

  (x_rec, z, x_inter), updates = ae_model.apply(
      {'params': params, 'batch_stats': batch_stats}, x, method=forward,
      mutable=['batch_stats'])
  return (x_rec, z, x_inter), updates.get('batch_stats', batch_stats)


class CriticPairs(NamedTuple):
  """Critic outputs on the pairs of one step, by name.

  fake: [b] D(x, x_rec); real: [b] D(x, x) (None where not needed);
  inter: [b, m] D(x_k, x_inter_i) for the m anchors k of interpolant i
  (None without interpolation).
  """
  fake: jax.Array
  real: Optional[jax.Array]
  inter: Optional[jax.Array]


def critic_on_pairs(critic_fn, x, x_rec, x_inter=None, x_anchors=None, *,
                    with_real: bool) -> tuple[CriticPairs, jax.Array]:
  """Runs the critic once on every pair the losses need (one batch).

  Args:
    critic_fn: (lefts, rights) -> (logits, features); stacks on channels.
    x, x_rec: [b, H, W, C] images and reconstructions.
    x_inter: [b, H, W, C] decoded interpolants, or None.
    x_anchors: [m, b, H, W, C] each interpolant's anchor images.
    with_real: also score the mirrored pairs (x, x).

  Returns:
    (CriticPairs of logits, the critic's features of the `fake` pairs).
  """
  lefts, rights = [x], [x_rec]
  if with_real:
    lefts.append(x)
    rights.append(x)
  if x_inter is not None:
    m = x_anchors.shape[0]
    lefts.append(x_anchors.reshape(-1, *x.shape[1:]))
    rights.append(jnp.concatenate([x_inter] * m))
  logits, features = critic_fn(jnp.concatenate(lefts),
                               jnp.concatenate(rights))
  b = x.shape[0]
  fake, rest = logits[:b], logits[b:]
  real = None
  if with_real:
    real, rest = rest[:b], rest[b:]
  inter = None if x_inter is None else rest.reshape(-1, b).T  # [b, m]
  return CriticPairs(fake=fake, real=real, inter=inter), features[:b]


class StepBatch(NamedTuple):
  """This device's rows of one step and the global counts losses divide by."""
  x: jax.Array  # [b, H, W, C] images, synthetic negatives in place.
  # [b] row weights, as the official code's labels: +1 normal, -lambda_neg
  # for (real or synthetic) anomalies.
  weights: jax.Array
  normal: jax.Array  # [b] float32 1 for normal rows.
  negative: jax.Array  # [b] float32 1 for anomalous rows.
  num_rows: jax.Array  # Rows of the global batch.
  num_normal: jax.Array  # Normal rows of the global batch.
  num_negative: jax.Array  # Anomalous rows of the global batch (at least 1).


def critic_loss(critic_model, params, batch_stats, i: int, *,
                batch: StepBatch, x_rec, x_inter, x_anchors, pair_anchors,
                gp_keys, gp_inter_keys, s: step_settings.StepSettings):
  """Critic loss of critic update i (eqs. 1, 4, 5 and the penalty); the
  reconstructions are constants. Returns (loss, (aux, new batch_stats))."""
  x, weights, normal, negative = (batch.x, batch.weights, batch.normal,
                                  batch.negative)
  critic_vars = {'params': params, 'batch_stats': batch_stats}
  (pairs, _), updates = critic_model.apply(
      critic_vars, x, x_rec, x_inter, x_anchors, with_real=True,
      train=True, mutable=['batch_stats'], method=critic_on_pairs_method)
  loss = losses.critic_loss(real_logits=pairs.real,
                            fake_logits=pairs.fake, weights=weights,
                            denominator=batch.num_rows)
  # Critic gaps D(x, x) - D(x, xhat): normals (the Wasserstein estimate of
  # eq. 1) and synthetic negatives (eq. 5; the critic pushes it below 0).
  aux = {'wasserstein': jnp.sum(normal * (pairs.real - pairs.fake))
                        / batch.num_normal,
         'diag/critic_gap_negative':
             jnp.sum(negative * (pairs.real - pairs.fake))
             / batch.num_negative}
  if s.loss.lambda_inter != 0:
    real_all = lax.all_gather(pairs.real, AXIS, tiled=True)
    anchor_real = real_all[pair_anchors]  # [b, m] or [b, 1]
    inter = losses.interpolation_critic_loss(
        anchor_real_logits=anchor_real, inter_logits=pairs.inter,
        mask=normal, denominator=batch.num_normal)
    loss += s.loss.lambda_inter * inter
    aux['critic_inter'] = inter
    # Critic values on the interpolation pairs (x_k, x_inter) beside those
    # on the anchors' mirrored pairs (x_k, x_k).
    per_pair = batch.num_normal * pair_anchors.shape[1]
    aux['diag/critic_inter_pair'] = jnp.sum(
        normal[:, None] * pairs.inter) / per_pair
    aux['diag/critic_inter_anchor_real'] = jnp.sum(
        normal[:, None] * anchor_real) / per_pair
  if s.loss.lambda_gp:
    stacked = lambda xy: critic_model.apply(
        critic_vars, xy, train=False, method='stacked')[0]
    fold = lambda keys: jax.vmap(jax.random.fold_in, (0, None))(keys, i)
    gp = losses.gradient_penalty(
        stacked, x, x_rec, jax.vmap(jax.random.uniform)(fold(gp_keys)),
        style=s.loss.gp_style)
    if s.loss.gp_inter and s.loss.lambda_inter != 0:
      # The same penalty on (x, x_inter) pairs, so the critic stays
      # Lipschitz where eq. (4) evaluates it too.
      gp = gp + losses.gradient_penalty(
          stacked, x, x_inter,
          jax.vmap(jax.random.uniform)(fold(gp_inter_keys)),
          style=s.loss.gp_style)
    gp *= s.local_batch / batch.num_rows  # Local mean -> this device's share.
    loss += s.loss.lambda_gp * gp
    aux['gradient_penalty'] = gp
  new_stats = updates.get('batch_stats', batch_stats)
  return loss, (aux, new_stats)


def ae_loss(critic_model, critic_vars, outputs, *, batch: StepBatch,
            x_anchors, s: step_settings.StepSettings):
  """Encoder/generator loss (eqs. 1, 3, 4, 5) as a function of the AE
  outputs (x_rec, z, x_inter). Detached (official code), the interpolation
  term is a constant for E and G: it is left out rather than computed for
  its value only."""
  ae_inter = s.loss.lambda_inter != 0 and not s.loss.detach_inter
  x_rec, z, x_inter = outputs
  pairs, _ = critic_model.apply(
      critic_vars, batch.x, x_rec, x_inter if ae_inter else None,
      x_anchors, with_real=False, train=False,
      method=critic_on_pairs_method)
  adv = losses.ae_adversarial_loss(fake_logits=pairs.fake,
                                   weights=batch.weights,
                                   denominator=batch.num_rows)
  reg = losses.latent_norm(z, mask=batch.normal, squared=s.loss.reg_squared,
                           denominator=batch.num_normal)
  loss = adv + s.loss.lambda_reg * reg
  aux = {'ae_adversarial': adv, 'latent_norm': reg}
  if ae_inter:
    inter = losses.interpolation_ae_loss(inter_logits=pairs.inter,
                                         mask=batch.normal,
                                         denominator=batch.num_normal)
    loss += s.loss.lambda_inter * inter
    aux['ae_inter'] = inter
  return loss, aux


def critic_on_pairs_method(module, x, x_rec, x_inter, x_anchors, *,
                           with_real: bool, train: bool):
  """`critic_on_pairs` as a method of the `models.Critic` module."""
  return critic_on_pairs(lambda l, r: module(l, r, train), x, x_rec, x_inter,
                         x_anchors, with_real=with_real)
