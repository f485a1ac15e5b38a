"""AMA training state and the pure, pmapped training step.

One call of `train_step` is one AMA iteration (paper eqs. 1-5; official
code's `train.py`): synthetic negatives, `n_critic` critic updates on the
same batch, then one encoder/generator update, then (optionally) the
exponential moving average of the weights that validation and scoring use.

Everything that changes during a run (the learning rate, whether the
negatives are on and their weight, the epoch's rows) is data
(`schedules.Schedule`, `placement.TrainData`), so a run compiles its step
once. Where the arrays live (devices, the training set, an epoch's rows) is
`placement.py`; the step gathers its batch by row inside compiled code.

Multi-device contract: the state is passed unreplicated (`in_axes=None`) and
every leaf of the returned state is identical on all devices, one pmapped
call being one global step over every process's devices. Every random draw
is keyed by the example's row in the global batch (never by the device or
process), which rows are synthetic negatives is decided on the global batch,
and losses are sums over local rows divided by global counts whose gradients
are `psum`med, so a run on n devices computes exactly what one device
computes on the same global batch (up to float summation order), however the
devices are split over processes. Interpolation partners are drawn from the
whole global batch through `all_gather`; its transpose (a reduce-scatter)
routes their gradients back.
"""
import dataclasses
import functools
from typing import Callable, NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ama_jax.training import losses
from ama_jax.training import placement
from ama_jax.training import sampling
from ama_jax.training import schedules
from ama_jax.training import train_state

AXIS = placement.AXIS  # The pmapped axis (one name for step and scoring).
PRNGKey = jax.Array
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """Static (compile-time) settings of `train_step`, taken from the config in
  one place: the step reads the `loss` and `sampling` fields of
  `configs/default.py` by their config names, so a new setting is added to
  the config only. The schedule is data (`schedules.Schedule`).
  """
  local_batch: int
  num_devices: int
  n_critic: int
  ema_decay: float  # 0 = no moving average of the weights.
  loss: ml_collections.FrozenConfigDict  # config.loss
  sampling: ml_collections.FrozenConfigDict  # config.sampling

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, local_batch: int,
                  num_devices: int = 1) -> 'StepSettings':
    return cls(local_batch=local_batch, num_devices=num_devices,
               n_critic=config.train.n_critic,
               ema_decay=float(config.optim.get('ema_decay') or 0.0),
               loss=ml_collections.FrozenConfigDict(config.loss),
               sampling=ml_collections.FrozenConfigDict(config.sampling))

  @property
  def global_batch(self) -> int:
    return self.local_batch * self.num_devices

  @property
  def negative_slots(self) -> tuple[np.ndarray, np.ndarray]:
    """([devices, k] local rows, [devices, k] valid) of synthetic negatives.

    `sampling.negative_mask` marks round(fraction x global batch) rows of
    the global batch, evenly spread; device q holds global rows q b ...
    (q + 1) b - 1, so it gets floor or ceil of its share. Every device works
    on k = the largest share (a static shape); a device with fewer negatives
    pads its slots with one of its normal rows, marked invalid (its image
    and weight stay as they are).
    """
    b, d = self.local_batch, self.num_devices
    if self.sampling.style == 'none' or self.sampling.fraction <= 0:
      return np.zeros((d, 0), np.int32), np.zeros((d, 0), bool)
    mask = sampling.negative_mask(np.arange(b * d), b * d,
                                  self.sampling.fraction).reshape(d, b)
    k = int(mask.sum(axis=1).max())
    rows = np.zeros((d, k), np.int32)
    valid = np.zeros((d, k), bool)
    for q in range(d):
      own = np.flatnonzero(mask[q])
      spare = np.flatnonzero(~mask[q])
      rows[q] = np.concatenate(
          [own, np.full(k - len(own), spare[0] if len(spare) else 0)])
      valid[q, :len(own)] = True
    return rows, valid


# ----------------------------------------------------------------------------
# The step.
# ----------------------------------------------------------------------------
def _row_keys(step_rng: PRNGKey, global_rows: jax.Array, name: int
              ) -> jax.Array:
  """One key per example for purpose `name`: f(step, global row, purpose)."""
  purpose_rng = jax.random.fold_in(step_rng, name)
  return jax.vmap(jax.random.fold_in, (None, 0))(purpose_rng, global_rows)


# Purposes of per-example keys (never reuse a number).
_NEGATIVES, _ALPHA, _PARTNERS, _GP, _GP_INTER = 0, 1, 2, 3, 4


def _take_batch(data: placement.TrainData, step: jax.Array,
                local_batch: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """This device's rows of the global batch and their global row numbers."""
  start = (step % data.steps_per_epoch) * local_batch
  global_rows = lax.axis_index(AXIS) * local_batch + jnp.arange(local_batch)
  rows = lax.dynamic_slice_in_dim(data.rows, start, local_batch)
  return (placement.pixels_to_float(data.images[rows]), data.labels[rows],
          global_rows)


def synthetic_negatives(ae_model, ae_vars, x: jax.Array, keys: jax.Array, *,
                        style: str, delta: float, radial_direction: str,
                        radius: Optional[jax.Array] = None,
                        axis_name: Optional[str] = None,
                        return_latents: bool = False, turns: str = 'all'):
  """G(z_neg) for the rows of x, E and G in eval mode (paper Fig. 3); for
  style 'rotate', the rows turned (z_neg: their encodings).

  Args:
    ae_model, ae_vars: the autoencoder and its variables.
    x: [n, H, W, C] images whose encodings seed 'radial' / 'cube' styles.
    keys: [n] typed keys, one per row.
    style, delta, radial_direction, turns: `config.sampling` fields.
    radius: the shell's reference radius for 'inward'/'outward' (default
      sqrt(d), the paper).
    axis_name: inside pmap, the axis over which 'cube' takes min |z|.
    return_latents: also return z_neg.

  Returns:
    [n, H, W, C] synthetic negatives (and z_neg [n, latent] if asked).
  """
  if style in sampling.IMAGE_STYLES:  # The rows themselves, turned.
    x_neg = sampling.turned_images(keys, x, turns)
    if not return_latents:
      return x_neg
    return x_neg, ae_model.apply(ae_vars, x_neg, train=False,
                                 method='encode')
  z = ae_model.apply(ae_vars, x, train=False, method='encode')
  scale = jnp.min(jnp.abs(z))  # 'cube': min |z| over the (global) batch.
  if axis_name is not None:
    scale = lax.pmin(scale, axis_name)
  z_neg = sampling.negative_latents(keys, z, style=style, delta=delta,
                                    radial_direction=radial_direction,
                                    cube_scale=scale, radius=radius)
  x_neg = ae_model.apply(ae_vars, z_neg, train=False, method='decode')
  return (x_neg, z_neg) if return_latents else x_neg


class Negatives(NamedTuple):
  """What `_add_negatives` did to the batch (for the diagnostics)."""
  z_norm: jax.Array  # [k] ||z_neg|| of this device's slots.
  valid: jax.Array  # [k] bool: the slot holds a negative.
  radius: jax.Array  # The shell's reference radius.


def _measured_radius(ae_model, ae_vars, x_slots, valid, s: StepSettings
                     ) -> jax.Array:
  """A quantile of ||E(x)|| over the (real) images of the global batch's
  negative slots, before they are replaced: where the encoder puts normals."""
  z = ae_model.apply(ae_vars, x_slots, train=False, method='encode')
  norms = lax.all_gather(jnp.linalg.norm(z, axis=-1), AXIS, tiled=True)
  valid = lax.all_gather(valid, AXIS, tiled=True)
  return jnp.nanquantile(jnp.where(valid, norms, jnp.nan),
                         s.sampling.radius_quantile)


def _add_negatives(ae_model, ae: train_state.PlayerState, x: jax.Array,
                   weights: jax.Array, labels: jax.Array, weight: jax.Array,
                   step_rng: PRNGKey, global_rows: jax.Array,
                   s: StepSettings) -> tuple[jax.Array, jax.Array, Negatives]:
  """Replaces the negative slots by G(z_neg) once `weight` > 0.

  E and G run in eval mode and the negatives carry no gradient, as in the
  official code (no_grad, eval). Before atypical selection starts (weight
  0) the negatives are still drawn, but the batch is left unchanged, so the
  compiled step is the same throughout the run.
  """
  table_rows, table_valid = s.negative_slots
  q = lax.axis_index(AXIS)
  rows = jnp.asarray(table_rows)[q]
  valid = jnp.asarray(table_valid)[q] & (labels[rows] == 0)
  ae_vars = train_state.variables(ae)
  x_slots = x[rows]
  smp = s.sampling
  radius = None
  if smp.shell_radius == 'measured' and smp.style in ('inward', 'outward'):
    radius = _measured_radius(ae_model, ae_vars, x_slots, valid, s)
  keys = _row_keys(step_rng, global_rows, _NEGATIVES)[rows]
  x_neg, z_neg = synthetic_negatives(
      ae_model, ae_vars, x_slots, keys, style=smp.style, delta=smp.delta,
      radial_direction=smp.radial_direction, radius=radius, axis_name=AXIS,
      return_latents=True, turns=smp.get('turns', 'all'))
  on = valid & (weight > 0)
  x = x.at[rows].set(jnp.where(on[:, None, None, None],
                               lax.stop_gradient(x_neg), x_slots))
  weights = weights.at[rows].set(jnp.where(on, -weight, weights[rows]))
  if radius is None:
    radius = jnp.float32(np.sqrt(z_neg.shape[-1]))
  return x, weights, Negatives(z_norm=jnp.linalg.norm(z_neg, axis=-1),
                               valid=on, radius=radius)


def _interpolation_plan(weights: jax.Array, global_rows: jax.Array,
                        step_rng: PRNGKey, s: StepSettings
                        ) -> tuple[jax.Array, jax.Array]:
  """Simplex weights [b, m] and global anchor rows [b, m] (own row first).

  Partners are drawn with replacement from the normal rows of the global
  batch, one key per example (the official code uses batch permutations).
  """
  is_normal = lax.all_gather(weights > 0, AXIS, tiled=True)  # [B]
  alpha = sampling.simplex_weights(
      _row_keys(step_rng, global_rows, _ALPHA), s.loss.num_inter)
  logits = jnp.where(is_normal, 0.0, -jnp.inf)
  partners = jax.vmap(
      lambda k: jax.random.categorical(
          k, logits, shape=(s.loss.num_inter - 1,)))(
              _row_keys(step_rng, global_rows, _PARTNERS))
  anchors = jnp.concatenate([global_rows[:, None], partners], axis=1)
  return alpha, anchors


def _ae_forward(ae_model, params, batch_stats, x, alpha, anchors,
                s: StepSettings):
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


def _critic_loss(critic_model, params, batch_stats, i: int, *,
                 batch: StepBatch, x_rec, x_inter, x_anchors, pair_anchors,
                 gp_keys, gp_inter_keys, s: StepSettings):
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


def _ae_loss(critic_model, critic_vars, outputs, *, batch: StepBatch,
             x_anchors, s: StepSettings):
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


def train_step(state: train_state.AMAState, data: placement.TrainData,
               train_rng: PRNGKey, *,
               ae_model, critic_model, settings: StepSettings
               ) -> tuple[train_state.AMAState, Metrics]:
  """One AMA iteration on this device's share of the global batch.

  Args:
    state: the unreplicated training state (identical on all devices).
    data: the training set, this device's rows of the current epoch and the
      schedule (`epoch_data`).
    train_rng: base key of the step's random terms, from the config seed.
    ae_model, critic_model: the flax modules (static).
    settings: static settings (`StepSettings`).

  Returns:
    (new state, metrics) where every metric is a global value.
  """
  s = settings
  step = state.step
  step_rng = jax.random.fold_in(train_rng, step)
  lr = schedules.learning_rate(data.schedule, step)
  x, labels, global_rows = _take_batch(data, step, s.local_batch)
  b = s.local_batch

  # 1. The batch, with synthetic negatives (atypical selection, eq. 5).
  # Row weights, as the official code's labels: +1 normal, -lambda_neg for
  # (real or synthetic) anomalies; the sign flip turns "reconstruct" into
  # "don't reconstruct".
  weights = jnp.where(labels == 1, -s.loss.lambda_neg, 1.0)
  negatives = None
  if s.negative_slots[0].shape[1]:
    x, weights, negatives = _add_negatives(
        ae_model, state.ae, x, weights, labels,
        schedules.negative_weight(data.schedule, step), step_rng,
        global_rows, s)
  normal = (weights > 0).astype(jnp.float32)
  negative = (weights < 0).astype(jnp.float32)
  num_rows = lax.psum(jnp.float32(b), AXIS)
  num_normal = lax.psum(normal.sum(), AXIS)
  # Diagnostics average over at least one row (0 when there is none).
  num_negative = jnp.maximum(lax.psum(negative.sum(), AXIS), 1.0)
  batch = StepBatch(x, weights, normal, negative, num_rows, num_normal,
                    num_negative)

  # 2. Simplex interpolation plan (eq. 4): weights and anchor rows.
  use_inter = s.loss.lambda_inter != 0
  alpha = anchors = x_anchors = pair_anchors = None
  if use_inter:
    alpha, anchors = _interpolation_plan(weights, global_rows, step_rng, s)
    # The critic sees (x_k, x_inter) for every anchor k ('all', the official
    # code), or for the interpolant's own row only ('first': x_1, whose
    # encoding is e_1 of eq. 4), a third of the critic's interpolation work.
    if s.loss.inter_anchors == 'all':
      pair_anchors = anchors
      x_all = lax.all_gather(x, AXIS, tiled=True)
      x_anchors = jnp.moveaxis(x_all[anchors], 1, 0)  # [m, b, H, W, C]
    else:
      pair_anchors = anchors[:, :1]  # Row i itself (anchors put it first).
      x_anchors = x[None]  # Row i's own image: [1, b, H, W, C].

  # 3. Autoencoder forward, once: E and G do not change during the critic
  # updates; its VJP gives the AE gradient after them.
  (x_rec, z, x_inter), ae_vjp, new_ae_stats = jax.vjp(
      lambda p: _ae_forward(ae_model, p, state.ae.batch_stats, x, alpha,
                            anchors, s),
      state.ae.params, has_aux=True)

  # 4. Critic updates on the same batch; reconstructions are constants
  # (PyTorch's .detach()).
  x_rec_c = lax.stop_gradient(x_rec)
  x_inter_c = None if x_inter is None else lax.stop_gradient(x_inter)
  critic_loss_fn = functools.partial(
      _critic_loss, critic_model, batch=batch, x_rec=x_rec_c,
      x_inter=x_inter_c, x_anchors=x_anchors, pair_anchors=pair_anchors,
      gp_keys=_row_keys(step_rng, global_rows, _GP),
      gp_inter_keys=_row_keys(step_rng, global_rows, _GP_INTER), s=s)

  def critic_update(critic: train_state.PlayerState, i: int):
    (loss, (aux, stats)), grads = jax.value_and_grad(
        critic_loss_fn, has_aux=True)(critic.params, critic.batch_stats, i)
    grads = lax.psum(grads, AXIS)
    critic = train_state.apply_update(critic, grads, lr,
                                      lax.pmean(stats, AXIS))
    # Loss pieces are local sums over global counts: psum gives the value.
    aux = lax.psum(dict(aux, critic_loss=loss), AXIS)
    return critic, dict(aux, critic_grad_norm=optax.tree.norm(grads))

  # A Python loop, not lax.scan: inside a while loop XLA:CPU gives the
  # critic's strided-conv weight gradients a layout ~10x slower (measured:
  # 5.3 s vs 0.2 s per step at batch 256). n_critic is small and static.
  critic = state.critic
  for i in range(s.n_critic):
    critic, critic_aux = critic_update(critic, i)

  # 5. Encoder/generator update, as a function of the AE outputs.
  ae_loss_fn = functools.partial(
      _ae_loss, critic_model, train_state.variables(critic), batch=batch,
      x_anchors=x_anchors, s=s)
  (ae_loss, ae_aux), out_grads = jax.value_and_grad(
      ae_loss_fn, has_aux=True)((x_rec, z, x_inter))
  (ae_grads,) = ae_vjp(out_grads)
  ae_grads = lax.psum(ae_grads, AXIS)
  ae = train_state.apply_update(state.ae, ae_grads, lr,
                                lax.pmean(new_ae_stats, AXIS))
  new_state = train_state.AMAState(ae=ae, critic=critic, ema=state.ema)
  new_state = new_state.replace(
      ema=train_state.ema_update(new_state, s.ema_decay))

  # 6. Metrics, and the finiteness check.
  l1 = jnp.mean(jnp.abs(x - x_rec), axis=(1, 2, 3))
  metrics = lax.psum(dict(
      ae_aux, ae_loss=ae_loss, num_negatives=jnp.sum(weights < 0),
      **{'diag/l1_rec_normal': jnp.sum(normal * l1) / num_normal,
         'diag/l1_rec_negative': jnp.sum(negative * l1) / num_negative}),
      AXIS)
  metrics.update(critic_aux, ae_grad_norm=optax.tree.norm(ae_grads),
                 lr=lr, lambda_neg=schedules.negative_weight(data.schedule,
                                                              step))
  metrics.update(_latent_diagnostics(z, normal, negative, negatives))
  # A state is good only if its losses and its new parameters are finite.
  metrics['finite'] = jnp.isfinite(
      metrics['critic_loss'] + metrics['ae_loss']
      + optax.tree.norm(ae.params) + optax.tree.norm(critic.params))
  return new_state, metrics


def critic_on_pairs_method(module, x, x_rec, x_inter, x_anchors, *,
                           with_real: bool, train: bool):
  """`critic_on_pairs` as a method of the `models.Critic` module."""
  return critic_on_pairs(lambda l, r: module(l, r, train), x, x_rec, x_inter,
                         x_anchors, with_real=with_real)


def _latent_diagnostics(z, normal, negative, negatives: Optional[Negatives]
                        ) -> Metrics:
  """Quantiles of ||E(x)|| over the global batch's normals; negatives' radii.

  Beside them: the shell's reference radius (sqrt(d), or the measured one),
  the radius of the latents the negatives were drawn from (||z_neg||) and
  where the encoder maps the negatives back (||E(G(z_neg))||).
  """
  norm = lax.all_gather(jnp.linalg.norm(z, axis=-1), AXIS, tiled=True)
  normal = lax.all_gather(normal, AXIS, tiled=True) > 0
  q = jnp.nanquantile(jnp.where(normal, norm, jnp.nan),
                      jnp.array([0.05, 0.5, 0.95]))
  out = {'diag/z_norm_normal_q05': q[0], 'diag/z_norm_normal_q50': q[1],
         'diag/z_norm_normal_q95': q[2]}
  if negatives is not None:
    on = lax.all_gather(negatives.valid, AXIS, tiled=True)
    z_neg = lax.all_gather(negatives.z_norm, AXIS, tiled=True)
    out['diag/z_neg_norm'] = (jnp.sum(jnp.where(on, z_neg, 0.0))
                              / jnp.maximum(jnp.sum(on), 1))
    out['diag/shell_radius'] = negatives.radius
    negative = lax.all_gather(negative, AXIS, tiled=True) > 0
    out['diag/z_norm_negative_reencoded'] = (
        jnp.sum(jnp.where(negative, norm, 0.0))
        / jnp.maximum(jnp.sum(negative), 1))
  return out


def train_steps(state: train_state.AMAState, data: placement.TrainData,
                train_rng: PRNGKey,
                count: Optional[jax.Array] = None, *, num_steps: int,
                **kwargs) -> tuple[train_state.AMAState, Metrics]:
  """Up to `num_steps` train steps (of one epoch) in one call.

  With num_steps > 1 the steps are a `lax.scan` of fixed length; only the
  first `count` (data, default all) change the state, so the end of an epoch
  that is not a multiple of num_steps reuses the same compiled call.
  Metrics are averaged over the steps taken.
  """
  if num_steps == 1:
    return train_step(state, data, train_rng, **kwargs)
  count = num_steps if count is None else count

  def body(state, i):
    new, metrics = train_step(state, data, train_rng, **kwargs)
    take = i < count
    state = jax.tree.map(lambda a, b: jnp.where(take, a, b), new, state)
    return state, (metrics, take)

  state, (metrics, taken) = lax.scan(body, state, jnp.arange(num_steps))
  finite = jnp.all(jnp.where(taken, metrics.pop('finite'), True))
  weight = taken.astype(jnp.float32) / jnp.maximum(jnp.sum(taken), 1)
  return state, dict(jax.tree.map(
      lambda m: jnp.tensordot(weight, m.astype(jnp.float32), 1), metrics),
                     finite=finite)


def make_p_train_step(ae_model, critic_model, settings: StepSettings, *,
                      num_steps: int = 1, devices=None,
                      per_device_state: bool = False) -> Callable:
  """Builds the pmapped (and donated) training call; build once per run.

  The returned function takes (state, data, train_rng[, count]): the state
  and key unreplicated (from `replicate`), the data from `epoch_data`, and
  with num_steps > 1 the number of steps to take (<= num_steps); it returns
  (state, metrics), both unreplicated. `devices` (default `mesh_devices()`)
  must be the list `epoch_data` was given; with several processes, every
  process calls the function with the same arguments except its own data.
  `per_device_state=True` returns each local device's copy of the state
  instead (leading device axis), for tests of the contract that they are
  identical.
  """
  step = functools.partial(
      train_steps, num_steps=num_steps, ae_model=ae_model,
      critic_model=critic_model, settings=settings)
  in_axes = (None, 0, None) + ((None,) if num_steps > 1 else ())
  return jax.pmap(step, axis_name=AXIS, in_axes=in_axes,
                  out_axes=(0 if per_device_state else None, None),
                  donate_argnums=(0,),
                  devices=devices or placement.mesh_devices())
