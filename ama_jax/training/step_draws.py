"""The training step's random draws: per-example keys, synthetic negatives
and the simplex interpolation plan.

Every draw is keyed by the step, the example's row in the global batch and
a purpose (`row_keys`), never by the device or process, so a run on n
devices draws what one device draws on the same global batch.
"""
from typing import NamedTuple, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from ama_jax.training import placement
from ama_jax.training import sampling
from ama_jax.training import step_settings
from ama_jax.training import train_state

AXIS = placement.AXIS
PRNGKey = jax.Array


def row_keys(step_rng: PRNGKey, global_rows: jax.Array, name: int
             ) -> jax.Array:
  """One key per example for purpose `name`: f(step, global row, purpose)."""
  purpose_rng = jax.random.fold_in(step_rng, name)
  return jax.vmap(jax.random.fold_in, (None, 0))(purpose_rng, global_rows)


# Purposes of per-example keys (never reuse a number).
_NEGATIVES, _ALPHA, _PARTNERS, _GP, _GP_INTER = 0, 1, 2, 3, 4


def penalty_keys(step_rng: PRNGKey, global_rows: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
  """Per-example keys of the gradient penalty's mixing weights: on the
  (x, x_rec) pairs and on the (x, x_inter) pairs."""
  return (row_keys(step_rng, global_rows, _GP),
          row_keys(step_rng, global_rows, _GP_INTER))


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
  """What `add_negatives` did to the batch (for the diagnostics)."""
  z_norm: jax.Array  # [k] ||z_neg|| of this device's slots.
  valid: jax.Array  # [k] bool: the slot holds a negative.
  radius: jax.Array  # The shell's reference radius.


def _measured_radius(ae_model, ae_vars, x_slots, valid,
                     s: step_settings.StepSettings) -> jax.Array:
  """A quantile of ||E(x)|| over the (real) images of the global batch's
  negative slots, before they are replaced: where the encoder puts normals."""
  z = ae_model.apply(ae_vars, x_slots, train=False, method='encode')
  norms = lax.all_gather(jnp.linalg.norm(z, axis=-1), AXIS, tiled=True)
  valid = lax.all_gather(valid, AXIS, tiled=True)
  return jnp.nanquantile(jnp.where(valid, norms, jnp.nan),
                         s.sampling.radius_quantile)


def add_negatives(ae_model, ae: train_state.PlayerState, x: jax.Array,
                  weights: jax.Array, labels: jax.Array, weight: jax.Array,
                  step_rng: PRNGKey, global_rows: jax.Array,
                  s: step_settings.StepSettings
                  ) -> tuple[jax.Array, jax.Array, Negatives]:
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
  keys = row_keys(step_rng, global_rows, _NEGATIVES)[rows]
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


def interpolation_plan(weights: jax.Array, global_rows: jax.Array,
                       step_rng: PRNGKey, s: step_settings.StepSettings
                       ) -> tuple[jax.Array, jax.Array]:
  """Simplex weights [b, m] and global anchor rows [b, m] (own row first).

  Partners are drawn with replacement from the normal rows of the global
  batch, one key per example (the official code uses batch permutations).
  """
  is_normal = lax.all_gather(weights > 0, AXIS, tiled=True)  # [B]
  alpha = sampling.simplex_weights(
      row_keys(step_rng, global_rows, _ALPHA), s.loss.num_inter)
  logits = jnp.where(is_normal, 0.0, -jnp.inf)
  partners = jax.vmap(
      lambda k: jax.random.categorical(
          k, logits, shape=(s.loss.num_inter - 1,)))(
              row_keys(step_rng, global_rows, _PARTNERS))
  anchors = jnp.concatenate([global_rows[:, None], partners], axis=1)
  return alpha, anchors
