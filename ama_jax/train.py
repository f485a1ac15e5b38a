"""AMA training state and the pure, pmapped training step.

One call of `train_step` is one AMA iteration (paper eqs. 1-5; official
code's `train.py`): synthetic negatives, `n_critic` critic updates on the
same batch, then one encoder/generator update.

Multi-device contract: the state is passed unreplicated (`in_axes=None`) and
every leaf of the returned state is identical on all devices. The devices are
those of every process (`mesh_devices`), so one pmapped call is one global
step whether they sit in one process or in several. Each epoch's order of the
training set is drawn from the config seed, identically on every process.
The training set is put on every device once per run (`put_train_set`); each
epoch uploads only the row indices each device's steps take (`epoch_data`),
and the step gathers its batch by those indices inside compiled code (no
host work between steps). Every random draw is keyed by the example's row in
the global batch (never by the device or process), and losses are sums over
local rows divided by global counts whose gradients are `psum`med, so a run
on n devices computes exactly what one device computes on the same global
batch (up to float summation order), however the devices are split over
processes.
Interpolation partners are drawn from the whole global batch through
`all_gather`; its transpose (a reduce-scatter) routes their gradients back.
"""
import dataclasses
import functools
from typing import Any, Callable, Optional

import flax
from flax.training import train_state
import jax
from jax import lax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ama_jax import losses
from ama_jax import models
from ama_jax import sampling

AXIS = 'batch'
PRNGKey = jax.Array
Metrics = dict[str, jax.Array]


class PlayerState(train_state.TrainState):
  """Params, optimizer state and normalization statistics of one player."""
  batch_stats: Any  # BatchNorm stats (AE) or spectral-norm u/sigma (critic).


@flax.struct.dataclass
class AMAState:
  """Everything training updates; a pytree, so pmap and orbax see all of it."""
  ae: PlayerState  # params == {'encoder': ..., 'generator': ...}
  critic: PlayerState

  @property
  def step(self) -> jax.Array:
    return self.ae.step


@flax.struct.dataclass
class TrainData:
  """The training set on every device, and each device's rows of one epoch.

  Leading axis of every field: the local devices. `images` and `labels` are
  the whole training set, the same on every device (`put_train_set`, once
  per run); `rows` [steps_per_epoch * local_batch] are the indices of the
  images the device's steps take in the current epoch (`epoch_data`), step
  i of the epoch taking rows[i * local_batch:(i + 1) * local_batch].
  """
  images: jax.Array  # [..., N, H, W, C] float32 in [-1, 1].
  labels: jax.Array  # [..., N] int32: 0 normal, 1 labelled anomaly.
  rows: jax.Array  # [..., steps_per_epoch * local_batch] int32.


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """Static (compile-time) settings of `train_step`, hashable."""
  local_batch: int
  steps_per_epoch: int
  n_critic: int = 1
  lambda_inter: float = 0.5
  num_inter: int = 3
  detach_inter: bool = False
  lambda_neg: float = 5.0
  lambda_reg: float = 1.0
  reg_squared: bool = False
  lambda_gp: float = 0.0
  gp_style: str = 'per_sample'
  negative_style: str = 'outward'
  radial_direction: str = 'inward'
  delta: float = 0.5
  negative_fraction: float = 0.1

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, local_batch: int,
                  steps_per_epoch: int) -> 'StepSettings':
    return cls(
        local_batch=local_batch, steps_per_epoch=steps_per_epoch,
        n_critic=config.train.n_critic,
        lambda_inter=config.loss.lambda_inter,
        num_inter=config.loss.num_inter,
        detach_inter=config.loss.detach_inter,
        lambda_neg=config.loss.lambda_neg,
        lambda_reg=config.loss.lambda_reg,
        reg_squared=config.loss.reg_squared,
        lambda_gp=config.loss.lambda_gp, gp_style=config.loss.gp_style,
        negative_style=config.sampling.style,
        radial_direction=config.sampling.radial_direction,
        delta=config.sampling.delta,
        negative_fraction=config.sampling.fraction)

  @property
  def negative_rows(self) -> np.ndarray:
    """Local rows replaced by synthetic negatives (static, evenly spread)."""
    if self.negative_style == 'none' or self.negative_fraction <= 0:
      return np.zeros((0,), np.int32)
    mask = sampling.negative_mask(np.arange(self.local_batch),
                                  self.local_batch, self.negative_fraction)
    return np.flatnonzero(mask).astype(np.int32)


# ----------------------------------------------------------------------------
# State and optimizers.
# ----------------------------------------------------------------------------
def lr_schedule(config: ml_collections.ConfigDict,
                total_updates: int) -> optax.Schedule:
  """Paper: lr x `decay` at 30%, 60% and 90% of training (MultiStepLR)."""
  boundaries = {max(1, int(round(f * total_updates))): config.optim.decay
                for f in config.optim.decay_at}
  return optax.piecewise_constant_schedule(config.optim.lr, boundaries)


def make_optimizers(config: ml_collections.ConfigDict, total_steps: int
                    ) -> tuple[optax.GradientTransformation,
                               optax.GradientTransformation]:
  """Adam for E, G (one state, two betas) and for the critic."""
  optim = config.optim
  ae_lr = lr_schedule(config, total_steps)
  # The critic takes n_critic updates per step: its schedule counts those.
  critic_lr = lr_schedule(config, total_steps * config.train.n_critic)
  ae_tx = optax.multi_transform(
      {'encoder': optax.adam(ae_lr, b1=optim.b1_encoder, b2=optim.b2),
       'generator': optax.adam(ae_lr, b1=optim.b1_generator, b2=optim.b2)},
      lambda params: {k: k for k in params})
  critic_tx = optax.adam(critic_lr, b1=optim.b1_critic, b2=optim.b2)
  return ae_tx, critic_tx


def create_train_state(rng: PRNGKey, config: ml_collections.ConfigDict,
                       image_shape: tuple[int, int, int], total_steps: int
                       ) -> AMAState:
  """Initializes both players (under jit) with their optimizers."""
  ae_model, critic_model = models.create_models(config.model, image_shape)
  ae_tx, critic_tx = make_optimizers(config, total_steps)
  x = jnp.zeros((2, *image_shape), jnp.float32)

  @jax.jit
  def init(rng):
    ae_rng, critic_rng = jax.random.split(rng)
    ae_vars = ae_model.init(ae_rng, x, train=False)
    critic_vars = critic_model.init(critic_rng, x, x, train=False)
    return AMAState(
        ae=PlayerState.create(apply_fn=ae_model.apply,
                              params=ae_vars['params'], tx=ae_tx,
                              batch_stats=ae_vars.get('batch_stats', {})),
        critic=PlayerState.create(
            apply_fn=critic_model.apply, params=critic_vars['params'],
            tx=critic_tx, batch_stats=critic_vars.get('batch_stats', {})))

  return init(rng)


def _variables(player: PlayerState, params=None) -> dict[str, Any]:
  return {'params': player.params if params is None else params,
          'batch_stats': player.batch_stats}


# ----------------------------------------------------------------------------
# The step.
# ----------------------------------------------------------------------------
def _row_keys(step_rng: PRNGKey, global_rows: jax.Array, name: int
              ) -> jax.Array:
  """One key per example for purpose `name`: f(step, global row, purpose)."""
  purpose_rng = jax.random.fold_in(step_rng, name)
  return jax.vmap(jax.random.fold_in, (None, 0))(purpose_rng, global_rows)


# Purposes of per-example keys (never reuse a number).
_NEGATIVES, _ALPHA, _PARTNERS, _GP = 0, 1, 2, 3


def _take_batch(data: TrainData, step: jax.Array, s: StepSettings
                ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """This device's rows of the global batch and their global row numbers."""
  start = (step % s.steps_per_epoch) * s.local_batch
  global_rows = lax.axis_index(AXIS) * s.local_batch + jnp.arange(
      s.local_batch)
  rows = lax.dynamic_slice_in_dim(data.rows, start, s.local_batch)
  return data.images[rows], data.labels[rows], global_rows


def synthetic_negatives(ae_model, ae_vars, x: jax.Array, keys: jax.Array, *,
                        style: str, delta: float, radial_direction: str,
                        axis_name: Optional[str] = None,
                        return_latents: bool = False):
  """G(z_neg) for the rows of x, E and G in eval mode (paper Fig. 3).

  Args:
    ae_model, ae_vars: the autoencoder and its variables.
    x: [n, H, W, C] images whose encodings seed 'radial' / 'cube' styles.
    keys: [n] typed keys, one per row.
    style, delta, radial_direction: `config.sampling` fields.
    axis_name: inside pmap, the axis over which 'cube' takes min |z|.

    return_latents: also return z_neg.

  Returns:
    [n, H, W, C] synthetic negatives (and z_neg [n, latent] if asked).
  """
  z = ae_model.apply(ae_vars, x, train=False, method='encode')
  scale = jnp.min(jnp.abs(z))  # 'cube': min |z| over the (global) batch.
  if axis_name is not None:
    scale = lax.pmin(scale, axis_name)
  z_neg = sampling.negative_latents(keys, z, style=style, delta=delta,
                                    radial_direction=radial_direction,
                                    cube_scale=scale)
  x_neg = ae_model.apply(ae_vars, z_neg, train=False, method='decode')
  return (x_neg, z_neg) if return_latents else x_neg


def _add_negatives(ae_model, ae: PlayerState, x: jax.Array,
                   weights: jax.Array, keys: jax.Array, s: StepSettings
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Replaces the static negative rows by G(z_neg) (E, G in eval mode).

  Returns (x, weights, ||z_neg|| of the negative rows).
  """
  rows = s.negative_rows
  x_neg, z_neg = synthetic_negatives(
      ae_model, _variables(ae), x[rows], keys[rows], style=s.negative_style,
      delta=s.delta, radial_direction=s.radial_direction, axis_name=AXIS,
      return_latents=True)
  # The official code makes negatives without gradients (no_grad, eval).
  x = x.at[rows].set(lax.stop_gradient(x_neg))
  weights = weights.at[rows].set(-s.lambda_neg)
  return x, weights, jnp.linalg.norm(z_neg, axis=-1)


def _interpolation_plan(weights: jax.Array, global_rows: jax.Array,
                        step_rng: PRNGKey, s: StepSettings
                        ) -> tuple[jax.Array, jax.Array]:
  """Simplex weights [b, m] and global anchor rows [b, m] (own row first).

  Partners are drawn with replacement from the normal rows of the global
  batch, one key per example (the official code uses batch permutations).
  """
  is_normal = lax.all_gather(weights > 0, AXIS, tiled=True)  # [B]
  alpha = sampling.simplex_weights(
      _row_keys(step_rng, global_rows, _ALPHA), s.num_inter)
  logits = jnp.where(is_normal, 0.0, -jnp.inf)
  partners = jax.vmap(
      lambda k: jax.random.categorical(k, logits, shape=(s.num_inter - 1,)))(
          _row_keys(step_rng, global_rows, _PARTNERS))
  anchors = jnp.concatenate([global_rows[:, None], partners], axis=1)
  return alpha, anchors


def _ae_forward(ae_model, params, batch_stats, x, alpha, anchors,
                s: StepSettings):
  """x -> (x_rec, z, x_inter) in train mode; returns new batch stats too."""

  def forward(module, x):
    z = module.encode(x, train=True)
    x_rec = module.decode(z, train=True)
    if s.lambda_inter == 0:
      return x_rec, z, None
    z_all = lax.all_gather(z, AXIS, tiled=True)  # [B, d]
    z_inter = jnp.einsum('bm,bmd->bd', alpha, z_all[anchors])
    x_inter = module.decode(z_inter, train=True)
    if s.detach_inter:  # Official code: no gradient to E, G (and no work).
      x_inter = lax.stop_gradient(x_inter)
    return x_rec, z, x_inter

  (x_rec, z, x_inter), updates = ae_model.apply(
      {'params': params, 'batch_stats': batch_stats}, x, method=forward,
      mutable=['batch_stats'])
  return (x_rec, z, x_inter), updates.get('batch_stats', batch_stats)


def _inter_rows(s: StepSettings, negatives: bool) -> np.ndarray:
  """Local rows whose interpolants the losses use (static).

  Rows holding synthetic negatives have weight 0 in eq. (4), so the critic
  need not see their pairs: leaving them out changes no value or gradient
  and saves f x m x b critic rows per update. (Their interpolants are still
  decoded, so the generator's BatchNorm statistics stay those of the whole
  batch.)
  """
  if negatives and len(s.negative_rows):
    return np.setdiff1d(np.arange(s.local_batch), s.negative_rows)
  return np.arange(s.local_batch)


def _critic_pairs(x, x_all, x_rec, x_inter, anchors, with_real: bool):
  """Stacks every (left, right) pair the losses need into one batch.

  x_inter and anchors [k, m] are those of the interpolation rows only.
  """
  lefts, rights = [x], [x_rec]
  if with_real:
    lefts.append(x)
    rights.append(x)
  if x_inter is not None:
    m = anchors.shape[1]
    lefts.append(jnp.concatenate([x_all[anchors[:, k]] for k in range(m)]))
    rights.append(jnp.concatenate([x_inter] * m))
  return jnp.concatenate(lefts), jnp.concatenate(rights)


def train_step(state: AMAState, data: TrainData, train_rng: PRNGKey, *,
               ae_model, critic_model, settings: StepSettings,
               negatives: bool) -> tuple[AMAState, Metrics]:
  """One AMA iteration on this device's share of the global batch.

  Args:
    state: the unreplicated training state (identical on all devices).
    data: the training set and this device's rows of the current epoch
      (`epoch_data`).
    train_rng: base key of the step's random terms, from the config seed.
    ae_model, critic_model: the flax modules (static).
    settings: static settings (`StepSettings`).
    negatives: static; True once atypical selection has started.

  Returns:
    (new state, metrics) where every metric is a global value.
  """
  s = settings
  step = state.step
  step_rng = jax.random.fold_in(train_rng, step)
  x, labels, global_rows = _take_batch(data, step, s)
  b = s.local_batch
  # Official code's labels: +1 normal, -lambda_neg for (real or synthetic)
  # anomalies; the sign flip turns "reconstruct" into "don't reconstruct".
  weights = jnp.where(labels == 1, -s.lambda_neg, 1.0)
  z_neg_norm = None
  if negatives and len(s.negative_rows):
    x, weights, z_neg_norm = _add_negatives(
        ae_model, state.ae, x, weights,
        _row_keys(step_rng, global_rows, _NEGATIVES), s)
  normal = (weights > 0).astype(jnp.float32)
  negative = (weights < 0).astype(jnp.float32)
  num_rows = lax.psum(jnp.float32(b), AXIS)
  num_normal = lax.psum(normal.sum(), AXIS)
  # Diagnostics average over at least one row (0 when there is none).
  num_negative = jnp.maximum(lax.psum(negative.sum(), AXIS), 1.0)

  use_inter = s.lambda_inter != 0
  alpha = anchors = None
  if use_inter:
    alpha, anchors = _interpolation_plan(weights, global_rows, step_rng, s)
  x_all = lax.all_gather(x, AXIS, tiled=True) if use_inter else None

  # E and G do not change during the critic updates, so their forward pass
  # is run once; its VJP gives the AE gradient after the critic updates.
  (x_rec, z, x_inter), ae_vjp, new_ae_stats = jax.vjp(
      lambda p: _ae_forward(ae_model, p, state.ae.batch_stats, x, alpha,
                            anchors, s),
      state.ae.params, has_aux=True)
  # The critic sees reconstructions as constants (PyTorch's .detach()).
  rows = _inter_rows(s, negatives)
  left, right = _critic_pairs(
      x, x_all, lax.stop_gradient(x_rec),
      None if x_inter is None else lax.stop_gradient(x_inter[rows]),
      None if anchors is None else anchors[rows], with_real=True)

  def critic_loss_fn(params, batch_stats, gp_keys):
    (logits, _), updates = critic_model.apply(
        {'params': params, 'batch_stats': batch_stats}, left, right,
        train=True, mutable=['batch_stats'])
    fake, real = logits[:b], logits[b:2 * b]
    loss = losses.critic_loss(real_logits=real, fake_logits=fake,
                              weights=weights, denominator=num_rows)
    # Critic gaps D(x, x) - D(x, xhat): normals (the Wasserstein estimate
    # of eq. 1) and synthetic negatives (eq. 5; the critic pushes it < 0).
    aux = {'wasserstein': jnp.sum(normal * (real - fake)) / num_normal,
           'diag/critic_gap_negative':
               jnp.sum(negative * (real - fake)) / num_negative}
    if use_inter:
      real_all = lax.all_gather(real, AXIS, tiled=True)
      inter_logits = logits[2 * b:].reshape(-1, len(rows)).T  # [k, m]
      inter = losses.interpolation_critic_loss(
          anchor_real_logits=real_all[anchors[rows]],
          inter_logits=inter_logits, mask=normal[rows],
          denominator=num_normal)
      loss += s.lambda_inter * inter
      aux['critic_inter'] = inter
      # Critic values on the interpolation pairs (x_k, x_inter) beside
      # those on the anchors' mirrored pairs (x_k, x_k).
      aux['diag/critic_inter_pair'] = jnp.sum(
          normal[rows, None] * inter_logits) / (num_normal * s.num_inter)
      aux['diag/critic_inter_anchor_real'] = jnp.sum(
          normal[rows, None] * real_all[anchors[rows]]) / (
              num_normal * s.num_inter)
    if s.lambda_gp:
      gp_alpha = jax.vmap(jax.random.uniform)(gp_keys)
      critic_vars = {'params': params, 'batch_stats': batch_stats}
      gp = losses.gradient_penalty(
          lambda xy: critic_model.apply(critic_vars, xy, train=False,
                                        method='stacked')[0],
          x, lax.stop_gradient(x_rec), gp_alpha, style=s.gp_style)
      gp *= b / num_rows  # Local mean -> this device's share of the mean.
      loss += s.lambda_gp * gp
      aux['gradient_penalty'] = gp
    new_stats = updates.get('batch_stats', batch_stats)
    return loss, (aux, new_stats)

  gp_keys = _row_keys(step_rng, global_rows, _GP)

  def critic_update(critic: PlayerState, i):
    keys = jax.vmap(jax.random.fold_in, (0, None))(gp_keys, i)
    (loss, (aux, stats)), grads = jax.value_and_grad(
        critic_loss_fn, has_aux=True)(critic.params, critic.batch_stats, keys)
    grads = lax.psum(grads, AXIS)
    critic = critic.apply_gradients(grads=grads,
                                    batch_stats=lax.pmean(stats, AXIS))
    # Loss pieces are local sums over global counts: psum gives the value.
    aux = lax.psum(dict(aux, critic_loss=loss), AXIS)
    return critic, dict(aux, critic_grad_norm=optax.tree.norm(grads))

  # A Python loop, not lax.scan: inside a while loop XLA:CPU gives the
  # critic's strided-conv weight gradients a layout ~10x slower (measured:
  # 5.3 s vs 0.2 s per step at batch 256). n_critic is small and static.
  critic = state.critic
  for i in range(s.n_critic):
    critic, critic_aux = critic_update(critic, i)

  # Encoder/generator loss as a function of the AE outputs.
  def ae_loss_fn(outputs):
    x_rec, z, x_inter = outputs
    # Detached (official code), the interpolation term is a constant for E
    # and G: it is left out rather than computed for its value only.
    ae_inter = use_inter and not s.detach_inter
    left, right = _critic_pairs(
        x, x_all, x_rec, x_inter[rows] if ae_inter else None,
        anchors[rows] if ae_inter else None, with_real=False)
    logits, _ = critic_model.apply(_variables(critic), left, right,
                                   train=False)
    adv = losses.ae_adversarial_loss(fake_logits=logits[:b], weights=weights,
                                     denominator=num_rows)
    reg = losses.latent_norm(z, mask=normal, squared=s.reg_squared,
                             denominator=num_normal)
    loss = adv + s.lambda_reg * reg
    aux = {'ae_adversarial': adv, 'latent_norm': reg}
    if ae_inter:
      inter = losses.interpolation_ae_loss(
          inter_logits=logits[b:].reshape(-1, len(rows)).T,
          mask=normal[rows], denominator=num_normal)
      loss += s.lambda_inter * inter
      aux['ae_inter'] = inter
    return loss, aux

  outputs = (x_rec, z, x_inter)
  (ae_loss, ae_aux), out_grads = jax.value_and_grad(
      ae_loss_fn, has_aux=True)(outputs)
  (ae_grads,) = ae_vjp(out_grads)
  ae_grads = lax.psum(ae_grads, AXIS)
  ae = state.ae.apply_gradients(grads=ae_grads,
                                batch_stats=lax.pmean(new_ae_stats, AXIS))

  l1 = jnp.mean(jnp.abs(x - x_rec), axis=(1, 2, 3))
  metrics = lax.psum(dict(
      ae_aux, ae_loss=ae_loss, num_negatives=jnp.sum(weights < 0),
      **{'diag/l1_rec_normal': jnp.sum(normal * l1) / num_normal,
         'diag/l1_rec_negative': jnp.sum(negative * l1) / num_negative}),
      AXIS)
  metrics.update(critic_aux, ae_grad_norm=optax.tree.norm(ae_grads))
  metrics.update(_latent_diagnostics(z, normal, negative, z_neg_norm))
  # A state is good only if its losses and its new parameters are finite.
  metrics['finite'] = jnp.isfinite(
      metrics['critic_loss'] + metrics['ae_loss']
      + optax.tree.norm(ae.params) + optax.tree.norm(critic.params))
  return AMAState(ae=ae, critic=critic), metrics


def _latent_diagnostics(z, normal, negative, z_neg_norm) -> Metrics:
  """Quantiles of ||E(x)|| over the global batch's normals; negatives' radii.

  Beside them: the radius of the latents the negatives were drawn from
  (||z_neg||) and where the encoder maps the negatives back (||E(G(z_neg))||),
  to compare with the shell of atypical selection.
  """
  norm = lax.all_gather(jnp.linalg.norm(z, axis=-1), AXIS, tiled=True)
  normal = lax.all_gather(normal, AXIS, tiled=True) > 0
  negative = lax.all_gather(negative, AXIS, tiled=True) > 0
  q = jnp.nanquantile(jnp.where(normal, norm, jnp.nan),
                      jnp.array([0.05, 0.5, 0.95]))
  out = {'diag/z_norm_normal_q05': q[0], 'diag/z_norm_normal_q50': q[1],
         'diag/z_norm_normal_q95': q[2]}
  if z_neg_norm is not None:
    count = jnp.maximum(jnp.sum(negative), 1)
    out['diag/z_norm_negative_reencoded'] = jnp.sum(
        jnp.where(negative, norm, 0.0)) / count
    out['diag/z_neg_norm'] = jnp.mean(
        lax.all_gather(z_neg_norm, AXIS, tiled=True))
  return out


def train_steps(state: AMAState, data: TrainData, train_rng: PRNGKey, *,
                num_steps: int, **kwargs) -> tuple[AMAState, Metrics]:
  """`num_steps` train steps (of one epoch) in one call; metrics averaged."""
  if num_steps == 1:
    return train_step(state, data, train_rng, **kwargs)

  def body(state, _):
    return train_step(state, data, train_rng, **kwargs)

  state, metrics = lax.scan(body, state, None, length=num_steps)
  finite = jnp.all(metrics.pop('finite'))
  return state, dict(jax.tree.map(lambda m: m.mean(0), metrics),
                     finite=finite)


def make_p_train_step(ae_model, critic_model, settings: StepSettings, *,
                      negatives: bool, num_steps: int = 1, devices=None,
                      per_device_state: bool = False) -> Callable:
  """Builds the pmapped (and donated) training call; build once per variant.

  The returned function takes (state, data, train_rng): the state and key
  unreplicated (from `replicate`), the data from `epoch_data`; it returns
  (state, metrics), both unreplicated. `devices` (default `mesh_devices()`)
  must be the list `epoch_data` was given; with several processes, every
  process calls the function with the same arguments except its own data.
  `per_device_state=True` returns each local device's copy of the state
  instead (leading device axis), for tests of the contract that they are
  identical.
  """
  step = functools.partial(
      train_steps, num_steps=num_steps, ae_model=ae_model,
      critic_model=critic_model, settings=settings, negatives=negatives)
  return jax.pmap(step, axis_name=AXIS, in_axes=(None, 0, None),
                  out_axes=(0 if per_device_state else None, None),
                  donate_argnums=(0,), devices=devices or mesh_devices())


# ----------------------------------------------------------------------------
# Devices and data placement.
# ----------------------------------------------------------------------------
def mesh_devices() -> list[jax.Device]:
  """Every process's devices, process by process: the training step's axis.

  The same list on every process (pmap's own default order); a device's
  position in it is its `lax.axis_index(AXIS)`. One process: the local
  devices.
  """
  return [d for p in range(jax.process_count())
          for d in jax.local_devices(process_index=p)]


def _local(devices) -> list[jax.Device]:
  """The devices of this process among `devices`, in their order."""
  return [d for d in devices if d.process_index == jax.process_index()]


def replicate(tree: Any, devices=None) -> Any:
  """Places a pytree on this process's devices as the pmapped step returns it.

  The step's unreplicated outputs carry a replicated `NamedSharding` over the
  local devices; inputs placed the same way keep the step from compiling a
  second time (and from being copied).
  """
  return jax.device_put(tree, _local_sharding(
      _local(devices or mesh_devices()), jax.sharding.PartitionSpec()))


@functools.partial(jax.jit, static_argnums=2)
def _permutation(data_rng: PRNGKey, epoch: int, num_train: int) -> jax.Array:
  return jax.random.permutation(jax.random.fold_in(data_rng, epoch),
                                num_train)


def epoch_order(data_rng: PRNGKey, epoch: int, num_train: int) -> np.ndarray:
  """The order of the training set in `epoch` (a permutation of num_train).

  A function of the key and the epoch only, so every process draws the same
  one.
  """
  return np.asarray(_permutation(data_rng, epoch, num_train))


def put_train_set(images: np.ndarray, labels: np.ndarray,
                  devices=None) -> TrainData:
  """The whole training set on each of this process's devices (once per run).

  Args:
    images: [N, H, W, C] the whole training set (host memory, the same on
      every process).
    labels: [N] int labels (0 normal, 1 labelled anomaly).
    devices: the training step's devices (default `mesh_devices()`).

  Returns:
    TrainData with a leading local-device axis and no rows yet (`rows` is
    empty): give it to `epoch_data`.
  """
  devices = list(devices or mesh_devices())
  local = _local(devices)
  sharding = _local_sharding(local)

  def put(x: np.ndarray) -> jax.Array:
    return jax.make_array_from_single_device_arrays(
        (len(local), *x.shape), sharding,
        [jax.device_put(x[None], d) for d in local])

  return TrainData(
      images=put(np.asarray(images, np.float32)),
      labels=put(np.asarray(labels, np.int32)),
      rows=put(np.zeros(0, np.int32)))


def epoch_data(train_set: TrainData, order: np.ndarray,
               settings: StepSettings, devices=None) -> TrainData:
  """`train_set` with each of this process's devices' rows of one epoch.

  Step i of the epoch takes the global batch order[i * B: (i + 1) * B]
  (B = number of devices x local batch b, the remainder dropped); the device
  at position q of `devices` takes its rows q * b ... (q + 1) * b - 1. Only
  those row indices are uploaded (the images stay where `put_train_set` put
  them), and the batch a device sees depends on its position alone, not on
  how the devices are split over processes.

  Args:
    train_set: from `put_train_set` with the same devices.
    order: `epoch_order` of the epoch.
    settings: gives the local batch and the steps per epoch.
    devices: the training step's devices (default `mesh_devices()`).

  Returns:
    TrainData with a leading local-device axis, as `make_p_train_step`'s
    function takes it.
  """
  devices = list(devices or mesh_devices())
  b, steps = settings.local_batch, settings.steps_per_epoch
  used = steps * b * len(devices)
  if len(order) < used:
    raise ValueError(f'An epoch of {steps} steps x {b * len(devices)} images '
                     f'needs {used} training images; the order has '
                     f'{len(order)}.')
  num_train = train_set.images.shape[1]
  if np.max(order[:used]) >= num_train:
    raise ValueError(f'The order indexes row {np.max(order[:used])} but the '
                     f'training set on the devices has {num_train} rows: '
                     'pass the put_train_set of the same images.')
  local = _local(devices)
  positions = [devices.index(d) for d in local]
  rows = np.asarray(order[:used], np.int32).reshape(steps, len(devices), b)
  rows = rows[:, positions].transpose(1, 0, 2).reshape(len(local), steps * b)
  return train_set.replace(
      rows=jax.device_put(rows, _local_sharding(local)))


def _local_sharding(
    local: list[jax.Device],
    spec: jax.sharding.PartitionSpec = jax.sharding.PartitionSpec(AXIS),
) -> jax.sharding.NamedSharding:
  """`spec` over a mesh of this process's devices.

  The default splits the leading axis over them, as pmap takes its
  per-device inputs; `replicate` passes an empty spec.
  """
  return jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.array(local), (AXIS,)), spec)
