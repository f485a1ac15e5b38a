"""Tests for ama_jax.training.losses: values by hand on tiny arrays, signs, masks."""
from absl.testing import absltest
from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from ama_jax.training import losses

_REAL = jnp.array([1.0, 2.0, 3.0])
_FAKE = jnp.array([0.5, 1.0, 4.0])
_WEIGHTS = jnp.array([1.0, -5.0, 1.0])  # Row 1 is a negative, lambda_neg 5.


class AdversarialLossTest(parameterized.TestCase):

  def test_critic_loss_by_hand(self):
    # w (fake - real) = [-0.5, 5, 1].
    loss = losses.critic_loss(real_logits=_REAL, fake_logits=_FAKE,
                              weights=_WEIGHTS)
    self.assertAlmostEqual(float(loss), 5.5 / 3, places=6)

  def test_critic_loss_mask_and_denominator(self):
    kw = dict(real_logits=_REAL, fake_logits=_FAKE, weights=_WEIGHTS,
              mask=jnp.array([True, False, True]))
    self.assertAlmostEqual(float(losses.critic_loss(**kw)), 0.5 / 2,
                           places=6)
    self.assertAlmostEqual(
        float(losses.critic_loss(**kw, denominator=4.0)), 0.5 / 4, places=6)

  def test_critic_loss_signs(self):
    grad_real, grad_fake = jax.grad(
        lambda r, f: losses.critic_loss(real_logits=r, fake_logits=f,
                                        weights=_WEIGHTS), argnums=(0, 1))(
                                            _REAL, _FAKE)
    # Normal rows: the critic raises D(x, x) and lowers D(x, xhat); a
    # negative row is mirrored and weighted by lambda_neg.
    np.testing.assert_allclose(grad_real, -_WEIGHTS / 3, rtol=1e-6)
    np.testing.assert_allclose(grad_fake, _WEIGHTS / 3, rtol=1e-6)

  def test_ae_adversarial_loss_by_hand_and_sign(self):
    loss, grad = jax.value_and_grad(
        lambda f: losses.ae_adversarial_loss(fake_logits=f,
                                             weights=_WEIGHTS))(_FAKE)
    # -w fake = [-0.5, 5, -4].
    self.assertAlmostEqual(float(loss), 0.5 / 3, places=6)
    np.testing.assert_allclose(grad, -_WEIGHTS / 3, rtol=1e-6)
    masked = losses.ae_adversarial_loss(
        fake_logits=_FAKE, weights=_WEIGHTS, mask=jnp.array([0, 1, 1]),
        denominator=5.0)
    self.assertAlmostEqual(float(masked), 1.0 / 5, places=6)

  def test_zero_weight_removes_its_row_exactly(self):
    fake = _FAKE.at[1].set(jnp.inf)
    weights = _WEIGHTS.at[1].set(0.0)
    loss, grad = jax.value_and_grad(
        lambda f: losses.critic_loss(real_logits=_REAL, fake_logits=f,
                                     weights=weights))(fake)
    self.assertAlmostEqual(float(loss), 0.5 / 3, places=6)
    self.assertEqual(float(grad[1]), 0.0)
    ae_loss = losses.ae_adversarial_loss(fake_logits=fake, weights=weights)
    self.assertAlmostEqual(float(ae_loss), -4.5 / 3, places=6)

  def test_masked_out_row_is_ignored_even_if_not_finite(self):
    loss = losses.critic_loss(
        real_logits=_REAL.at[2].set(jnp.nan), fake_logits=_FAKE,
        weights=_WEIGHTS, mask=jnp.array([1, 1, 0]))
    self.assertAlmostEqual(float(loss), 4.5 / 2, places=6)

  def test_empty_mask_gives_zero(self):
    loss = losses.critic_loss(real_logits=_REAL, fake_logits=_FAKE,
                              weights=_WEIGHTS, mask=jnp.zeros(3, bool))
    self.assertEqual(float(loss), 0.0)


class InterpolationLossTest(absltest.TestCase):

  def test_interpolation_losses_by_hand(self):
    # 2 interpolants x m = 3 anchors; row 1 is not a valid interpolant.
    anchor_real = jnp.array([[1.0, 2.0, 3.0], [9.0, 9.0, 9.0]])
    inter = jnp.array([[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
    mask = jnp.array([True, False])
    critic = losses.interpolation_critic_loss(
        anchor_real_logits=anchor_real, inter_logits=inter, mask=mask)
    self.assertAlmostEqual(float(critic), (-1 - 2 + 0) / 3, places=6)
    ae = losses.interpolation_ae_loss(inter_logits=inter, mask=mask)
    self.assertAlmostEqual(float(ae), -1.0, places=6)
    ae_all = losses.interpolation_ae_loss(inter_logits=inter)
    self.assertAlmostEqual(float(ae_all), -(3 + 3) / 6, places=6)

  def test_interpolation_signs(self):
    inter = jnp.array([0.5, -0.5])
    g_critic = jax.grad(lambda i: losses.interpolation_critic_loss(
        anchor_real_logits=jnp.zeros(2), inter_logits=i))(inter)
    g_ae = jax.grad(
        lambda i: losses.interpolation_ae_loss(inter_logits=i))(inter)
    # The critic lowers D(x_k, xinter); E and G raise it.
    np.testing.assert_allclose(g_critic, [0.5, 0.5])
    np.testing.assert_allclose(g_ae, [-0.5, -0.5])


class LatentNormTest(absltest.TestCase):

  def test_latent_norm_by_hand(self):
    z = jnp.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    self.assertAlmostEqual(float(losses.latent_norm(z)), 2.0, places=6)
    self.assertAlmostEqual(float(losses.latent_norm(z, squared=True)),
                           26 / 3, places=5)
    masked = losses.latent_norm(z, mask=jnp.array([True, False, True]))
    self.assertAlmostEqual(float(masked), 3.0, places=6)

  def test_latent_norm_gradient_is_finite_at_zero(self):
    z = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    grad = jax.grad(losses.latent_norm)(z)
    np.testing.assert_allclose(grad, [[0.3, 0.4], [0.0, 0.0]], rtol=1e-6)


class GradientPenaltyTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    keys = jax.random.split(jax.random.key(0), 3)
    self.x = jax.random.normal(keys[0], (2, 3, 3, 2))
    self.x_rec = jax.random.normal(keys[1], (2, 3, 3, 2))
    self.alpha = jax.random.uniform(keys[2], (2,))
    # A fixed direction in the stacked input space [3, 3, 4], unit norm.
    w = jax.random.normal(jax.random.key(1), (3, 3, 4))
    self.unit = w / jnp.linalg.norm(w)

  def _linear(self, w):
    return lambda h: jnp.sum(h * w, axis=(1, 2, 3))

  def test_per_sample_zero_for_unit_gradient_linear_critic(self):
    gp = losses.gradient_penalty(self._linear(self.unit), self.x,
                                 self.x_rec, self.alpha, style='per_sample')
    self.assertAlmostEqual(float(gp), 0.0, places=6)
    gp2 = losses.gradient_penalty(self._linear(3 * self.unit), self.x,
                                  self.x_rec, self.alpha, style='per_sample')
    self.assertAlmostEqual(float(gp2), 4.0, places=5)  # (3 - 1)^2

  def test_per_pixel_norm_is_over_channels(self):
    # Every pixel's channel vector has norm 2: per-pixel penalty (2 - 1)^2,
    # while the per-sample norm is 2 * sqrt(9 pixels) = 6.
    w = jnp.ones((3, 3, 4))  # ||(1, 1, 1, 1)|| = 2
    gp = losses.gradient_penalty(self._linear(w), self.x, self.x_rec,
                                 self.alpha, style='per_pixel')
    self.assertAlmostEqual(float(gp), 1.0, places=5)
    gp_sample = losses.gradient_penalty(self._linear(w), self.x, self.x_rec,
                                        self.alpha, style='per_sample')
    self.assertAlmostEqual(float(gp_sample), 25.0, places=4)

  def test_only_second_slot_is_interpolated(self):
    # D(h) = ||h||^2 / 2 has gradient h: the penalty reveals the input.
    critic_fn = lambda h: 0.5 * jnp.sum(h**2, axis=(1, 2, 3))
    gp = losses.gradient_penalty(critic_fn, self.x, self.x_rec, self.alpha,
                                 style='per_sample')
    a = np.asarray(self.alpha)[:, None, None, None]
    x, x_rec = np.asarray(self.x), np.asarray(self.x_rec)
    stacked = np.concatenate([x, a * x + (1 - a) * x_rec], axis=-1)
    norms = np.sqrt(np.sum(stacked**2, axis=(1, 2, 3)))
    self.assertAlmostEqual(float(gp), np.mean((norms - 1)**2), places=4)

  def test_penalty_trains_the_critic_only(self):
    def gp(scale, x_rec):
      return losses.gradient_penalty(
          lambda h: jnp.sum(scale * h**2, axis=(1, 2, 3)), self.x, x_rec,
          self.alpha, style='per_sample')

    g_scale, g_rec = jax.grad(gp, argnums=(0, 1))(0.5, self.x_rec)
    self.assertNotEqual(float(g_scale), 0.0)
    np.testing.assert_array_equal(g_rec, 0.0)

  def test_unknown_style_lists_choices(self):
    with self.assertRaisesRegex(ValueError, "'per_pixel', 'per_sample'"):
      losses.gradient_penalty(self._linear(self.unit), self.x, self.x_rec,
                              self.alpha, style='wgan')


if __name__ == '__main__':
  absltest.main()
