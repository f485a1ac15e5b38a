"""Latent-space draws of AMA: synthetic negatives and simplex weights.

Atypical selection (paper, "Atypical Selection"; eq. 5) replaces a fraction
of each batch by G(z_neg) for latents z_neg drawn outside the typical set.
Every draw takes one PRNG key per row and each row depends only on its own
key (and, for 'radial'/'cube', on the encodings given), so splitting a batch
over devices, each with its rows' keys, reproduces the single-device draw.
"""
import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
PRNGKey = jax.Array

NEGATIVE_STYLES = ('inward', 'outward', 'radial', 'cube', 'rotate', 'none')
# Styles whose negatives are made from the batch's images themselves, not
# decoded from latents.
IMAGE_STYLES = ('rotate',)
# Turns of 'rotate', in quarter turns of `jnp.rot90`: 'all' (90, 180, 270
# degrees), 'quarter' (90, 270 only: a class that looks the same upside
# down, e.g. the digits 0, 1, 8, gets no negatives that are normal images).
QUARTER_TURNS = {'all': (1, 2, 3), 'quarter': (1, 3)}
TURNS = tuple(QUARTER_TURNS)
RADIAL_DIRECTIONS = ('inward', 'outward')
# 'radial' outward divides by alpha ~ U[0, delta]; alpha = 0 is possible in
# float32, so it is floored (the official code has no guard).
_ALPHA_FLOOR = 1e-6


def _row_keys(rngs: PRNGKey, batch: int) -> PRNGKey:
  """[B] keys: `rngs` itself, or a single key split into B."""
  if rngs.shape == ():
    return jax.random.split(rngs, batch)
  if rngs.shape != (batch,):
    raise ValueError(f'Expected one key or {batch} keys, got {rngs.shape}.')
  return rngs


def _shell(rng: PRNGKey, d: int, low: float, high: float) -> Array:
  """[d]: uniform direction on the sphere, radius uniform in [low, high]."""
  direction_rng, radius_rng = jax.random.split(rng)
  direction = jax.random.normal(direction_rng, (d,))
  direction /= jnp.maximum(jnp.linalg.norm(direction), 1e-12)
  return direction * jax.random.uniform(radius_rng, (), minval=low, maxval=high)


def negative_latents(
    rngs: PRNGKey,
    z: Array,
    *,
    style: str,
    delta: float,
    radial_direction: str = 'inward',
    cube_scale: Optional[Array] = None,
    radius: Optional[Array] = None,
) -> Array:
  """Latents of synthetic negatives, one per row of `z`.

  Styles (d = latent size):
    'inward' / 'outward' (the paper): direction uniform on the sphere, radius
      uniform in [r - delta, r] / [r, r + delta] with r = sqrt(d) (the
      paper) or the given `radius` (e.g. where the encoder puts normals).
      (The radius, not the volume, is uniform; z is ignored.)
    'radial' (official code, its 'inward'/'outward'): z * alpha or z / alpha
      with alpha ~ U[0, delta] (the official `atyp_ratio`), floored at 1e-6.
    'cube' (official code's 'sipple'): uniform in [0, s]^d with s = min |z|
      over every entry of z (the whole batch's encodings), as
      `torch.rand(n, d) * torch.min(torch.abs(netE(imgs)))`. Sipple (2020)
      itself samples a cube centred at the origin; the official version is
      the positive orthant of a tiny cube, i.e. latents near 0.
    'none', 'rotate': z unchanged ('rotate' negatives are images:
      `turned_images`).

  Args:
    rngs: [B] typed keys, one per row (or one key, split into B).
    z: [B, d] encodings E(x) of the rows.
    style: one of NEGATIVE_STYLES.
    delta: shell width ('inward'/'outward') or alpha's upper bound
      ('radial').
    radial_direction: 'inward' or 'outward', for style 'radial'.
    cube_scale: 'cube' only: the scale s; default min |z| over z. Under pmap
      pass the global minimum (`lax.pmin`) so devices agree.
    radius: 'inward' / 'outward' only: the shell's reference radius r
      (default sqrt(d)). An inward shell is floored at radius 0.

  Returns:
    z_neg [B, d].

  Raises:
    ValueError: unknown style or radial direction.
  """
  if style not in NEGATIVE_STYLES:
    raise ValueError(
        f'Unknown negative sampling style {style!r}; choose one of'
        f' {NEGATIVE_STYLES}.'
    )
  if style == 'radial' and radial_direction not in RADIAL_DIRECTIONS:
    raise ValueError(
        f'Unknown radial_direction {radial_direction!r}; choose one of'
        f' {RADIAL_DIRECTIONS}.'
    )
  if style in ('none',) + IMAGE_STYLES:
    return z
  batch, d = z.shape
  rngs = _row_keys(rngs, batch)
  r = math.sqrt(d) if radius is None else radius

  if style == 'inward':
    draw = lambda rng, _: _shell(rng, d, jnp.maximum(r - delta, 0.0), r)
  elif style == 'outward':
    draw = lambda rng, _: _shell(rng, d, r, r + delta)
  elif style == 'radial':

    def draw(rng, z_row):
      alpha = jax.random.uniform(rng, (), minval=0.0, maxval=delta)
      alpha = jnp.maximum(alpha, _ALPHA_FLOOR)
      return z_row * alpha if radial_direction == 'inward' else z_row / alpha

  else:  # cube
    scale = jnp.min(jnp.abs(z)) if cube_scale is None else cube_scale
    draw = lambda rng, _: jax.random.uniform(rng, (d,)) * scale
  return jax.vmap(draw)(rngs, z).astype(z.dtype)


def turned_images(rngs: PRNGKey, x: Array, turns: str = 'all') -> Array:
  """Each row of x [B, H, W, C] turned by 90, 180 or 270 degrees.

  The turn of a row is drawn from its own key, uniform over the three
  ('all') or over 90 and 270 ('quarter'); 180 degrees only when H != W.
  Not in the paper: the 'rotate' negatives of `sampling.style` (a normal
  image turned keeps its pixels but not the layout of its class; cf. the
  rotation pretext task of GEOM, Golan and El-Yaniv 2018, and the shifted
  negatives of CSI, Tack et al. 2020).
  """
  batch = x.shape[0]
  rngs = _row_keys(rngs, batch)
  if turns not in TURNS:
    raise ValueError(f'Unknown turns {turns!r}; choose one of {TURNS}.')
  ks = QUARTER_TURNS[turns] if x.shape[1] == x.shape[2] else (2,)
  turned = [jnp.rot90(x, k, axes=(1, 2)) for k in ks]
  pick = jax.vmap(lambda k: jax.random.randint(k, (), 0, len(turned)))(rngs)
  out = turned[0]
  for i, candidate in enumerate(turned[1:], start=1):
    out = jnp.where((pick == i)[:, None, None, None], candidate, out)
  return out


def simplex_weights(rngs: PRNGKey, m: int) -> Array:
  """Mixing weights of simplex interpolation (eq. 4), one row per key.

  m = 3 (the paper and official code): a1, a2 ~ U[0, 0.5], a3 = 1 - a1 - a2
  (so a3 in [0, 1]). Other m: a flat Dirichlet(1, ..., 1) draw, the uniform
  distribution on the simplex (the paper only asks for a_i >= 0, sum 1).

  Args:
    rngs: [B] typed keys.
    m: number of encodings mixed.

  Returns:
    [B, m] non-negative weights summing to 1 per row.
  """
  if m < 1:
    raise ValueError(f'num_inter must be >= 1, got {m}.')

  def draw(rng):
    if m == 3:
      a12 = jax.random.uniform(rng, (2,), minval=0.0, maxval=0.5)
      return jnp.concatenate([a12, 1.0 - jnp.sum(a12, keepdims=True)])
    return jax.random.dirichlet(rng, jnp.ones((m,)))

  return jax.vmap(draw)(rngs)


def num_negatives(batch: int, fraction: float) -> int:
  """round(fraction * batch), halves rounded up (the official code floors)."""
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'sampling.fraction must be in [0, 1], got {fraction}.')
  return int(math.floor(fraction * batch + 0.5))


def negative_mask(global_rows: Array, batch: int, fraction: float) -> Array:
  """Marks num_negatives(batch, fraction) rows of a global batch, evenly.

  Row r is negative iff floor((r + 1) n / B) > floor(r n / B): exactly n of
  rows 0..B-1, spread over the batch, so each device can compute its own
  rows' flags from their global indices. (The official code draws the rows
  at random, with replacement; batches are shuffled, so fixed positions lose
  nothing.)

  Args:
    global_rows: int numpy array of global row indices in [0, batch).
    batch: global batch size B.
    fraction: fraction of the batch to mark.

  Returns:
    bool array shaped like `global_rows`.
  """
  n = num_negatives(batch, fraction)
  # numpy: the rows are static (chosen at trace time), never traced.
  rows = np.asarray(global_rows)
  return (rows + 1) * n // batch > rows * n // batch
