"""AMA training state and the pure, pmapped training step.

One call of `train_step` is one AMA iteration (paper eqs. 1-5; official
code's `train.py`): synthetic negatives, `n_critic` critic updates on the
same batch, then one encoder/generator update, then (optionally) the
exponential moving average of the weights that validation and scoring use.

Everything that changes during a run (the learning rate, whether the
negatives are on and their weight, the epoch's rows) is data
(`schedules.Schedule`, `placement.TrainData`), so a run compiles its step
once. Where the arrays live (devices, the training set, an epoch's rows) is
`placement.py`; the step gathers its batch by row inside compiled code. The
step's static settings are `step_settings`, its random draws `step_draws`,
each player's loss `step_losses`.

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
import functools
from typing import Callable, Optional

import jax
from jax import lax
import jax.numpy as jnp
import optax

from ama_jax.training import placement
from ama_jax.training import schedules
from ama_jax.training import step_draws
from ama_jax.training import step_losses
from ama_jax.training import step_settings
from ama_jax.training import train_state

AXIS = placement.AXIS  # The pmapped axis (one name for step and scoring).
PRNGKey = jax.Array
Metrics = dict[str, jax.Array]


def _take_batch(data: placement.TrainData, step: jax.Array,
                local_batch: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """This device's rows of the global batch and their global row numbers."""
  start = (step % data.steps_per_epoch) * local_batch
  global_rows = lax.axis_index(AXIS) * local_batch + jnp.arange(local_batch)
  rows = lax.dynamic_slice_in_dim(data.rows, start, local_batch)
  return (placement.pixels_to_float(data.images[rows]), data.labels[rows],
          global_rows)


def _step_batch(ae_model, state: train_state.AMAState,
                data: placement.TrainData, step: jax.Array,
                step_rng: PRNGKey, s: step_settings.StepSettings
                ) -> tuple[step_losses.StepBatch, jax.Array,
                           Optional[step_draws.Negatives]]:
  """The batch, with synthetic negatives (atypical selection, eq. 5).

  Returns:
    (the batch, its global row numbers, what the negatives did or None).
  """
  x, labels, global_rows = _take_batch(data, step, s.local_batch)
  b = s.local_batch
  # Row weights, as the official code's labels: +1 normal, -lambda_neg for
  # (real or synthetic) anomalies; the sign flip turns "reconstruct" into
  # "don't reconstruct".
  weights = jnp.where(labels == 1, -s.loss.lambda_neg, 1.0)
  negatives = None
  if s.negative_slots[0].shape[1]:
    x, weights, negatives = step_draws.add_negatives(
        ae_model, state.ae, x, weights, labels,
        schedules.negative_weight(data.schedule, step), step_rng,
        global_rows, s)
  normal = (weights > 0).astype(jnp.float32)
  negative = (weights < 0).astype(jnp.float32)
  num_rows = lax.psum(jnp.float32(b), AXIS)
  num_normal = lax.psum(normal.sum(), AXIS)
  # Diagnostics average over at least one row (0 when there is none).
  num_negative = jnp.maximum(lax.psum(negative.sum(), AXIS), 1.0)
  batch = step_losses.StepBatch(x, weights, normal, negative, num_rows,
                                num_normal, num_negative)
  return batch, global_rows, negatives


def _interpolation(batch: step_losses.StepBatch, global_rows: jax.Array,
                   step_rng: PRNGKey, s: step_settings.StepSettings):
  """Simplex interpolation plan (eq. 4): weights and anchor rows.

  Returns:
    (alpha [b, m], anchors [b, m], the anchors' images the critic pairs with
    the interpolants, their rows), all None without interpolation.
  """
  alpha = anchors = x_anchors = pair_anchors = None
  if s.loss.lambda_inter != 0:
    alpha, anchors = step_draws.interpolation_plan(batch.weights, global_rows,
                                                   step_rng, s)
    # The critic sees (x_k, x_inter) for every anchor k ('all', the official
    # code), or for the interpolant's own row only ('first': x_1, whose
    # encoding is e_1 of eq. 4), a third of the critic's interpolation work.
    if s.loss.inter_anchors == 'all':
      pair_anchors = anchors
      x_all = lax.all_gather(batch.x, AXIS, tiled=True)
      x_anchors = jnp.moveaxis(x_all[anchors], 1, 0)  # [m, b, H, W, C]
    else:
      pair_anchors = anchors[:, :1]  # Row i itself (anchors put it first).
      x_anchors = batch.x[None]  # Row i's own image: [1, b, H, W, C].
  return alpha, anchors, x_anchors, pair_anchors


def _critic_updates(critic_model, critic: train_state.PlayerState,
                    batch: step_losses.StepBatch, x_rec, x_inter, x_anchors,
                    pair_anchors, step_rng: PRNGKey, global_rows: jax.Array,
                    lr: jax.Array, s: step_settings.StepSettings
                    ) -> tuple[train_state.PlayerState, Metrics]:
  """`n_critic` critic updates on the same batch; the reconstructions are
  constants (PyTorch's .detach()). Returns (critic, the last one's metrics).
  """
  x_rec_c = lax.stop_gradient(x_rec)
  x_inter_c = None if x_inter is None else lax.stop_gradient(x_inter)
  gp_keys, gp_inter_keys = step_draws.penalty_keys(step_rng, global_rows)
  critic_loss_fn = functools.partial(
      step_losses.critic_loss, critic_model, batch=batch, x_rec=x_rec_c,
      x_inter=x_inter_c, x_anchors=x_anchors, pair_anchors=pair_anchors,
      gp_keys=gp_keys, gp_inter_keys=gp_inter_keys, s=s)

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
  for i in range(s.n_critic):
    critic, critic_aux = critic_update(critic, i)
  return critic, critic_aux


def _ae_update(critic_model, ae: train_state.PlayerState,
               critic: train_state.PlayerState, batch: step_losses.StepBatch,
               outputs, ae_vjp, new_ae_stats, x_anchors, lr: jax.Array,
               s: step_settings.StepSettings):
  """Encoder/generator update, as a function of the AE outputs (x_rec, z,
  x_inter) pulled back through the forward pass's VJP.

  Returns:
    (new AE state, its loss, the loss's pieces, the summed gradients).
  """
  ae_loss_fn = functools.partial(
      step_losses.ae_loss, critic_model, train_state.variables(critic),
      batch=batch, x_anchors=x_anchors, s=s)
  (ae_loss, ae_aux), out_grads = jax.value_and_grad(
      ae_loss_fn, has_aux=True)(outputs)
  (ae_grads,) = ae_vjp(out_grads)
  ae_grads = lax.psum(ae_grads, AXIS)
  ae = train_state.apply_update(ae, ae_grads, lr,
                                lax.pmean(new_ae_stats, AXIS))
  return ae, ae_loss, ae_aux, ae_grads


def _step_metrics(batch: step_losses.StepBatch, x_rec, z,
                  negatives: Optional[step_draws.Negatives], ae_loss, ae_aux,
                  ae_grads, critic_aux, new_state: train_state.AMAState,
                  lr: jax.Array, data: placement.TrainData, step: jax.Array
                  ) -> Metrics:
  """The step's metrics (global values), and the finiteness check."""
  normal, negative = batch.normal, batch.negative
  l1 = jnp.mean(jnp.abs(batch.x - x_rec), axis=(1, 2, 3))
  metrics = lax.psum(dict(
      ae_aux, ae_loss=ae_loss, num_negatives=jnp.sum(batch.weights < 0),
      **{'diag/l1_rec_normal': jnp.sum(normal * l1) / batch.num_normal,
         'diag/l1_rec_negative':
             jnp.sum(negative * l1) / batch.num_negative}),
      AXIS)
  metrics.update(critic_aux, ae_grad_norm=optax.tree.norm(ae_grads),
                 lr=lr, lambda_neg=schedules.negative_weight(data.schedule,
                                                              step))
  metrics.update(_latent_diagnostics(z, normal, negative, negatives))
  # A state is good only if its losses and its new parameters are finite.
  metrics['finite'] = jnp.isfinite(
      metrics['critic_loss'] + metrics['ae_loss']
      + optax.tree.norm(new_state.ae.params)
      + optax.tree.norm(new_state.critic.params))
  return metrics


def train_step(state: train_state.AMAState, data: placement.TrainData,
               train_rng: PRNGKey, *,
               ae_model, critic_model, settings: step_settings.StepSettings
               ) -> tuple[train_state.AMAState, Metrics]:
  """One AMA iteration on this device's share of the global batch.

  Args:
    state: the unreplicated training state (identical on all devices).
    data: the training set, this device's rows of the current epoch and the
      schedule (`epoch_data`).
    train_rng: base key of the step's random terms, from the config seed.
    ae_model, critic_model: the flax modules (static).
    settings: static settings (`step_settings.StepSettings`).

  Returns:
    (new state, metrics) where every metric is a global value.
  """
  s = settings
  step = state.step
  step_rng = jax.random.fold_in(train_rng, step)
  lr = schedules.learning_rate(data.schedule, step)
  # 1. The batch, with synthetic negatives (atypical selection, eq. 5).
  batch, global_rows, negatives = _step_batch(ae_model, state, data, step,
                                              step_rng, s)
  # 2. Simplex interpolation plan (eq. 4): weights and anchor rows.
  alpha, anchors, x_anchors, pair_anchors = _interpolation(
      batch, global_rows, step_rng, s)
  # 3. Autoencoder forward, once: E and G do not change during the critic
  # updates; its VJP gives the AE gradient after them.
  (x_rec, z, x_inter), ae_vjp, new_ae_stats = jax.vjp(
      lambda p: step_losses.ae_forward(ae_model, p, state.ae.batch_stats,
                                       batch.x, alpha, anchors, s),
      state.ae.params, has_aux=True)
  # 4. Critic updates on the same batch.
  critic, critic_aux = _critic_updates(
      critic_model, state.critic, batch, x_rec, x_inter, x_anchors,
      pair_anchors, step_rng, global_rows, lr, s)
  # 5. Encoder/generator update.
  ae, ae_loss, ae_aux, ae_grads = _ae_update(
      critic_model, state.ae, critic, batch, (x_rec, z, x_inter), ae_vjp,
      new_ae_stats, x_anchors, lr, s)
  new_state = train_state.AMAState(ae=ae, critic=critic, ema=state.ema)
  new_state = new_state.replace(
      ema=train_state.ema_update(new_state, s.ema_decay))
  # 6. Metrics, and the finiteness check.
  return new_state, _step_metrics(batch, x_rec, z, negatives, ae_loss,
                                  ae_aux, ae_grads, critic_aux, new_state,
                                  lr, data, step)


def _latent_diagnostics(z, normal, negative,
                        negatives: Optional[step_draws.Negatives]
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


def make_p_train_step(ae_model, critic_model,
                      settings: step_settings.StepSettings, *,
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
