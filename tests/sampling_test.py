"""Tests for ama_jax.training.sampling: negative latents, simplex weights, masks."""
import math

from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ama_jax.training import sampling

_B, _D, _DELTA = 64, 8, 0.5


def _z(seed=0, batch=_B):
  return jax.random.normal(jax.random.key(seed), (batch, _D))


def _keys(batch=_B, seed=1):
  return jax.random.split(jax.random.key(seed), batch)


class NegativeLatentsTest(parameterized.TestCase):

  @parameterized.parameters(
      ('inward', math.sqrt(_D) - _DELTA, math.sqrt(_D)),
      ('outward', math.sqrt(_D), math.sqrt(_D) + _DELTA))
  def test_shell_radii_lie_in_the_configured_shell(self, style, low, high):
    z_neg = sampling.negative_latents(_keys(), _z(), style=style,
                                      delta=_DELTA)
    self.assertEqual(z_neg.shape, (_B, _D))
    radii = np.linalg.norm(np.asarray(z_neg), axis=1)
    self.assertTrue(np.all(radii >= low - 1e-5), radii.min())
    self.assertTrue(np.all(radii <= high + 1e-5), radii.max())
    self.assertGreater(radii.max() - radii.min(), _DELTA / 2)  # Spread.
    # The paper's shell ignores the encodings.
    np.testing.assert_array_equal(
        z_neg, sampling.negative_latents(_keys(), _z(seed=5), style=style,
                                         delta=_DELTA))

  def test_radial_inward_scales_each_row_by_alpha(self):
    z = _z()
    z_neg = sampling.negative_latents(_keys(), z, style='radial',
                                      delta=_DELTA,
                                      radial_direction='inward')
    ratio = np.asarray(z_neg / z)  # alpha, the same for a whole row.
    np.testing.assert_allclose(ratio, ratio[:, :1].repeat(_D, 1), rtol=1e-5)
    self.assertTrue(np.all((ratio >= 0) & (ratio <= _DELTA)))

  def test_radial_outward_divides_each_row_by_alpha(self):
    z = _z()
    z_neg = sampling.negative_latents(_keys(), z, style='radial',
                                      delta=_DELTA,
                                      radial_direction='outward')
    alpha = np.asarray(z / z_neg)
    np.testing.assert_allclose(alpha, alpha[:, :1].repeat(_D, 1), rtol=1e-5)
    self.assertTrue(np.all((alpha >= 1e-6) & (alpha <= _DELTA)))
    self.assertTrue(np.all(np.isfinite(np.asarray(z_neg))))

  def test_cube_is_uniform_below_the_smallest_latent_entry(self):
    z = _z()
    scale = float(jnp.min(jnp.abs(z)))
    z_neg = np.asarray(sampling.negative_latents(_keys(), z, style='cube',
                                                 delta=_DELTA))
    self.assertTrue(np.all((z_neg >= 0) & (z_neg <= scale)))
    self.assertGreater(z_neg.max(), scale / 2)
    given = sampling.negative_latents(_keys(), z, style='cube', delta=_DELTA,
                                      cube_scale=2.0)
    np.testing.assert_allclose(given, z_neg * 2.0 / scale, rtol=1e-5)

  def test_none_returns_z(self):
    z = _z()
    np.testing.assert_array_equal(
        sampling.negative_latents(_keys(), z, style='none', delta=_DELTA), z)

  @parameterized.parameters('inward', 'outward', 'radial', 'cube')
  def test_each_row_depends_only_on_its_key(self, style):
    z, keys = _z(), _keys()
    kw = dict(style=style, delta=_DELTA, cube_scale=0.3)
    full = sampling.negative_latents(keys, z, **kw)
    part = sampling.negative_latents(keys[5:9], z[5:9], **kw)
    np.testing.assert_array_equal(full[5:9], part)
    np.testing.assert_array_equal(
        full, sampling.negative_latents(keys, z, **kw))
    self.assertFalse(np.array_equal(
        full, sampling.negative_latents(_keys(seed=2), z, **kw)))

  def test_single_key_is_split_per_row(self):
    key = jax.random.key(3)
    np.testing.assert_array_equal(
        sampling.negative_latents(key, _z(), style='inward', delta=_DELTA),
        sampling.negative_latents(jax.random.split(key, _B), _z(),
                                  style='inward', delta=_DELTA))

  def test_unknown_style_and_direction_list_choices(self):
    with self.assertRaisesRegex(ValueError, "'inward', 'outward', 'radial'"):
      sampling.negative_latents(_keys(), _z(), style='sphere', delta=_DELTA)
    with self.assertRaisesRegex(ValueError, "'inward', 'outward'"):
      sampling.negative_latents(_keys(), _z(), style='radial', delta=_DELTA,
                                radial_direction='up')


class TurnedImagesTest(absltest.TestCase):

  def test_each_row_is_a_quarter_half_or_three_quarter_turn_of_itself(self):
    x = jax.random.uniform(jax.random.key(0), (_B, 6, 6, 2))
    out = np.asarray(sampling.turned_images(_keys(), x))
    seen = set()
    for row, turned in zip(np.asarray(x), out):
      k = [i for i in (1, 2, 3)
           if np.array_equal(np.rot90(row, i, axes=(0, 1)), turned)]
      self.assertLen(k, 1)
      seen.add(k[0])
    self.assertEqual(seen, {1, 2, 3})
    np.testing.assert_array_equal(
        out[5:9], sampling.turned_images(_keys()[5:9], x[5:9]))
    self.assertFalse(np.array_equal(
        out, sampling.turned_images(_keys(seed=2), x)))

  def test_quarter_turns_leave_out_the_half_turn(self):
    x = jax.random.uniform(jax.random.key(0), (_B, 6, 6, 1))
    out = np.asarray(sampling.turned_images(_keys(), x, 'quarter'))
    seen = {i for row, turned in zip(np.asarray(x), out) for i in (1, 2, 3)
            if np.array_equal(np.rot90(row, i, axes=(0, 1)), turned)}
    self.assertEqual(seen, {1, 3})
    with self.assertRaisesRegex(ValueError, "'all', 'quarter'"):
      sampling.turned_images(_keys(), x, 'half')

  def test_non_square_images_turn_by_half_only(self):
    x = jax.random.uniform(jax.random.key(0), (8, 4, 6, 1))
    np.testing.assert_array_equal(
        sampling.turned_images(_keys(8), x), np.rot90(x, 2, axes=(1, 2)))

  def test_negative_latents_leave_z_for_image_styles(self):
    z = _z()
    np.testing.assert_array_equal(
        sampling.negative_latents(_keys(), z, style='rotate', delta=_DELTA),
        z)


class SimplexWeightsTest(absltest.TestCase):

  def test_three_weights_follow_the_paper(self):
    a = np.asarray(sampling.simplex_weights(_keys(), 3))
    self.assertEqual(a.shape, (_B, 3))
    np.testing.assert_allclose(a.sum(1), 1.0, rtol=1e-6)
    self.assertTrue(np.all((a[:, :2] >= 0) & (a[:, :2] <= 0.5)))
    self.assertTrue(np.all(a[:, 2] >= 0))

  def test_other_sizes_are_on_the_simplex(self):
    for m in (1, 2, 5):
      a = np.asarray(sampling.simplex_weights(_keys(), m))
      self.assertEqual(a.shape, (_B, m))
      np.testing.assert_allclose(a.sum(1), 1.0, rtol=1e-5)
      self.assertTrue(np.all(a >= 0))

  def test_rows_depend_only_on_their_key(self):
    keys = _keys()
    np.testing.assert_array_equal(
        sampling.simplex_weights(keys, 3)[3:6],
        sampling.simplex_weights(keys[3:6], 3))


class NegativeMaskTest(parameterized.TestCase):

  @parameterized.parameters((256, 0.1, 26), (10, 0.25, 3), (16, 0.0, 0),
                            (16, 1.0, 16), (7, 0.1, 1))
  def test_num_negatives_rounds(self, batch, fraction, expected):
    self.assertEqual(sampling.num_negatives(batch, fraction), expected)

  def test_num_negatives_rejects_bad_fraction(self):
    with self.assertRaisesRegex(ValueError, r'\[0, 1\]'):
      sampling.num_negatives(16, 1.5)

  @parameterized.parameters((256, 0.1), (16, 0.25), (7, 0.1), (10, 1.0),
                            (12, 0.0))
  def test_marks_exactly_n_rows_spread_evenly(self, batch, fraction):
    n = sampling.num_negatives(batch, fraction)
    mask = np.asarray(sampling.negative_mask(np.arange(batch), batch,
                                             fraction))
    self.assertEqual(mask.sum(), n)
    if n > 1:
      gaps = np.diff(np.flatnonzero(mask))
      self.assertLessEqual(gaps.max() - gaps.min(), 1)

  def test_devices_agree_with_one_device(self):
    rows = np.arange(16)
    whole = sampling.negative_mask(rows, 16, 0.25)
    halves = [sampling.negative_mask(r, 16, 0.25) for r in (rows[:8],
                                                            rows[8:])]
    np.testing.assert_array_equal(whole, np.concatenate(halves))


if __name__ == '__main__':
  absltest.main()
