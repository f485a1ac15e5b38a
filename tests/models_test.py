"""Tests for ama_jax.models: shapes, variables, spectral norm, deconv."""
import functools
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ama_jax import losses
from ama_jax import models

_HW = {'mnist': 28, 'cifar': 32}
_BATCH = 2


def _config(arch, spectral_norm=False):
  return ml_collections.ConfigDict(
      dict(arch=arch, latent_dim=8, width=8, spectral_norm=spectral_norm)
  )


def _assert_close(actual, expected):
  """Equal up to float32 rounding: rtol 1e-5 of each value or of the max."""
  expected = np.asarray(expected)
  np.testing.assert_allclose(actual, expected, rtol=1e-5,
                             atol=1e-5 * np.abs(expected).max())


def _images(arch, channels, seed):
  hw = _HW[arch]
  return jax.random.uniform(
      jax.random.key(seed), (_BATCH, hw, hw, channels), minval=-1, maxval=1
  )


@functools.lru_cache(maxsize=None)
def _autoencoder(arch, channels):
  """(model, variables, x, (x_rec, z)) in eval mode, built once."""
  x = _images(arch, channels, 0)
  ae, _ = models.create_models(_config(arch), x.shape[1:])
  outputs, variables = ae.init_with_output(jax.random.key(1), x, False)
  return ae, variables, x, outputs


@functools.lru_cache(maxsize=None)
def _critic(arch, channels, spectral_norm=False):
  """(model, variables, x, (logits, features)) of D(x, y), built once."""
  x = _images(arch, channels, 0)
  _, critic = models.create_models(_config(arch, spectral_norm), x.shape[1:])
  y = _images(arch, channels, 3)
  outputs, variables = critic.init_with_output(jax.random.key(2), x, y, False)
  return critic, variables, x, outputs


def _numpy_conv_transpose(x, kernel):
  """Scatter form of torch ConvTranspose2d(k=4, s=2, p=1), NHWC / HWIO."""
  b, h, w, _ = x.shape
  y = np.zeros((b, 2 * h + 2, 2 * w + 2, kernel.shape[-1]))
  for i in range(h):
    for j in range(w):
      for ky in range(4):
        for kx in range(4):
          # Output row 2i - 1 + ky, stored shifted by +1.
          y[:, 2 * i + ky, 2 * j + kx] += x[:, i, j] @ kernel[ky, kx]
  return y[:, 1 : 2 * h + 1, 1 : 2 * w + 1]


class ModelsTest(parameterized.TestCase):

  @parameterized.product(arch=('mnist', 'cifar'), channels=(1, 3))
  def test_output_shapes_and_param_keys(self, arch, channels):
    _, ae_vars, x, (x_rec, z) = _autoencoder(arch, channels)
    _, critic_vars, _, (logits, features) = _critic(arch, channels)
    self.assertEqual(x_rec.shape, x.shape)
    self.assertEqual(z.shape, (_BATCH, 8))
    self.assertLessEqual(float(jnp.max(jnp.abs(x_rec))), 1.0)  # tanh
    self.assertEqual(logits.shape, (_BATCH,))
    # mnist: Dense(16 w); cifar: critic width 2 w, sum-pooled.
    feature_dim = 16 * 8 if arch == 'mnist' else 2 * 8
    self.assertEqual(features.shape, (_BATCH, feature_dim))
    self.assertEqual(set(ae_vars['params']), {'encoder', 'generator'})
    self.assertEqual(set(critic_vars), {'params'})  # No SN: no stats.
    # BatchNorm only in the cifar encoder/generator.
    self.assertEqual('batch_stats' in ae_vars, arch == 'cifar')

  @parameterized.product(arch=('mnist', 'cifar'), spectral_norm=(False, True))
  def test_features_feed_the_last_dense_layer(self, arch, spectral_norm):
    _, variables, _, (logits, features) = _critic(arch, 1, spectral_norm)
    out = variables['params']['network']['out']
    kernel = out['kernel']  # [F, 1]
    if spectral_norm:
      # One power iteration on a [F, 1] matrix gives sigma = ||kernel||.
      kernel = kernel / jnp.linalg.norm(kernel)
    expected = features @ kernel[:, 0] + out.get('bias', 0.0)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    self.assertEqual('bias' in out, arch == 'mnist')  # Official: no bias.

  def test_stacked_pair_and_gradient_penalty_on_the_critic(self):
    critic, v, x, (logits, features) = _critic('mnist', 1, True)
    y = _images('mnist', 1, 3)
    xy = jnp.concatenate([x, y], axis=-1)
    # Eval mode needs nothing mutable and reproduces the init outputs.
    stacked_logits, stacked_features = critic.apply(
        v, xy, False, method=critic.stacked)
    np.testing.assert_allclose(stacked_logits, logits, atol=1e-6)
    np.testing.assert_allclose(stacked_features, features, atol=1e-6)

    def penalty(params):
      critic_fn = lambda h: critic.apply(
          {**v, 'params': params}, h, False, method=critic.stacked)[0]
      return losses.gradient_penalty(critic_fn, x, y, jnp.full((2,), 0.5),
                                     style='per_pixel')

    grads = jax.grad(penalty)(v['params'])
    self.assertTrue(all(bool(jnp.all(jnp.isfinite(g)))
                        for g in jax.tree.leaves(grads)))
    self.assertGreater(float(jnp.abs(grads['network']['conv1']['kernel'])
                             .sum()), 0.0)

  def test_encode_decode_methods_compose_to_call(self):
    ae, v, x, (x_rec, z) = _autoencoder('mnist', 1)
    np.testing.assert_allclose(ae.apply(v, x, False, method=ae.encode), z,
                               atol=1e-6)
    np.testing.assert_allclose(ae.apply(v, z, False, method=ae.decode),
                               x_rec, atol=1e-6)

  def test_batch_norm_stats_move_only_in_train_mode(self):
    ae, v, x, _ = _autoencoder('cifar', 3)
    _, eval_vars = ae.apply(v, x, False, mutable=['batch_stats'])
    _, train_vars = ae.apply(v, x, True, mutable=['batch_stats'])
    changed = jax.tree.map(
        lambda a, c: bool(jnp.any(a != c)),
        v['batch_stats'], train_vars['batch_stats'])
    jax.tree.map(np.testing.assert_array_equal, v['batch_stats'],
                 eval_vars['batch_stats'])
    self.assertTrue(all(jax.tree.leaves(changed)))

  @parameterized.parameters('mnist', 'cifar')
  def test_spectral_stats_move_only_in_train_mode(self, arch):
    critic, v, x, _ = _critic(arch, 1, True)
    _, eval_vars = critic.apply(v, x, x, False, mutable=['batch_stats'])
    _, train_vars = critic.apply(v, x, x, True, mutable=['batch_stats'])
    jax.tree.map(np.testing.assert_array_equal, v['batch_stats'],
                 eval_vars['batch_stats'])
    changed = jax.tree.map(lambda a, c: bool(jnp.any(a != c)),
                           v['batch_stats'], train_vars['batch_stats'])
    self.assertTrue(any(jax.tree.leaves(changed)))

  @parameterized.parameters('mnist', 'cifar')
  def test_spectral_norm_normalizes_top_singular_value(self, arch):
    critic, v, x, _ = _critic(arch, 1, True)

    @jax.jit
    def update(stats):
      _, new = critic.apply({'params': v['params'], 'batch_stats': stats},
                            x, x, True, mutable=['batch_stats'])
      return new['batch_stats']

    stats = v['batch_stats']
    # The rank-2 [2, 16] cifar shortcut kernel has a small singular gap;
    # 50 single-step power iterations converge for every kernel here.
    for _ in range(50):
      stats = update(stats)
    # Each wrapper `<name>_sn` holds `<name>/kernel/sigma`; the kernel sits
    # beside it in params at `<name>/kernel`.
    flat_stats = jax.tree_util.tree_flatten_with_path(stats)[0]
    sigmas = {tuple(k.key for k in path): s for path, s in flat_stats
              if path[-1].key.endswith('/sigma')}
    self.assertLen(sigmas, 4 if arch == 'mnist' else 11)
    for path, sigma in sigmas.items():
      name = path[-1].split('/')[0]
      kernel = v['params']
      for key in path[:-2] + (name,):
        kernel = kernel[key]
      kernel = kernel['kernel']
      top = np.linalg.svd(np.reshape(kernel, (-1, kernel.shape[-1])),
                          compute_uv=False)[0]
      self.assertAlmostEqual(top / float(sigma), 1.0, delta=1e-2, msg=path)

  @parameterized.parameters('dilated', 'subpixel')
  def test_conv_transpose_matches_pytorch_semantics(self, impl):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    kernel = rng.normal(size=(4, 4, 3, 2)).astype(np.float32)
    y = models.conv_transpose_4x4_s2(jnp.asarray(x), jnp.asarray(kernel),
                                     impl)
    self.assertEqual(y.shape, (2, 10, 8, 2))
    np.testing.assert_allclose(y, _numpy_conv_transpose(x, kernel),
                               rtol=1e-5, atol=1e-5)

  def test_conv_transpose_impls_agree_with_gradients(self):
    layer = lambda impl: models.ConvTranspose4x4(4, impl)
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 5))
    params = layer('dilated').init(jax.random.key(1), x)
    self.assertEqual(params['params']['kernel'].shape, (4, 4, 5, 4))

    def value_and_grads(impl):
      f = lambda p, x: jnp.sum(jnp.sin(layer(impl).apply(p, x)))
      return jax.value_and_grad(f, argnums=(0, 1))(params, x)

    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5),
        value_and_grads('dilated'), value_and_grads('subpixel'))
    with self.assertRaisesRegex(ValueError, 'subpixel'):
      models.conv_transpose_4x4_s2(x, params['params']['kernel'], 'fft')

  # The mnist encoder/critic layer shapes (28 -> 14 with 1 or 2 channels,
  # 14 -> 7 with 64), an odd size (7 -> 3) and a non-square one.
  @parameterized.parameters(((3, 28, 28, 1), 8), ((3, 28, 28, 2), 64),
                            ((3, 14, 14, 64), 128), ((2, 7, 7, 5), 3),
                            ((2, 9, 6, 3), 4))
  def test_conv_impls_match_lax_conv_with_gradients(self, shape, c_out):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], shape)
    # Unit-scale outputs, so that float32 rounding stays ~1e-6.
    kernel = jax.random.normal(keys[1], (4, 4, shape[-1], c_out)) / (
        4 * np.sqrt(shape[-1]))
    reference = lambda x, k: jax.lax.conv_general_dilated(
        x, k, (2, 2), ((1, 1), (1, 1)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y_ref = reference(x, kernel)
    self.assertEqual(y_ref.shape, (shape[0], shape[1] // 2, shape[2] // 2,
                                   c_out))
    g = jax.random.normal(keys[2], y_ref.shape)

    def value_and_grads(f):
      return jax.value_and_grad(
          lambda x, k: jnp.sum(g * jnp.sin(f(x, k))), argnums=(0, 1))(
              x, kernel)

    expected = value_and_grads(reference)
    for impl in ('lax', 'im2col'):
      with self.subTest(impl):
        f = functools.partial(models.conv_4x4_s2, impl=impl)
        _assert_close(f(x, kernel), y_ref)
        jax.tree.map(_assert_close, value_and_grads(f), expected)

  # The gradient penalty differentiates the critic's input gradient (for
  # 'rowgrad', its custom backward pass).
  @parameterized.parameters(
      (models.conv_4x4_s2, 4, 'im2col'), (models.conv_same, 3, 'rowgrad'))
  def test_conv_impls_agree_on_second_derivatives(self, conv, k, impl):
    x = jax.random.normal(jax.random.key(0), (2, 14, 14, 16))
    kernel = jax.random.normal(jax.random.key(1), (k, k, 16, 8)) / (2 * k)

    def penalty_grad(impl):
      def penalty(w):
        dx = jax.grad(lambda x: jnp.sum(jnp.tanh(conv(x, w, impl))))(x)
        return jnp.sum(dx**2)
      return jax.grad(penalty)(kernel)

    _assert_close(penalty_grad(impl), penalty_grad('lax'))

  # Both operand orders of the CPU kernel gradient (narrow and wide
  # outputs), first and second derivatives (the gradient penalty).
  @parameterized.parameters((24, 5), (5, 24))
  def test_patch_matmul_matches_dot_with_derivatives(self, n, o):
    keys = jax.random.split(jax.random.key(0), 3)
    p = jax.random.normal(keys[0], (3, 4, 5, n))
    k = jax.random.normal(keys[1], (n, o)) / np.sqrt(n)
    g = jax.random.normal(keys[2], (3, 4, 5, o))

    def derivatives(matmul):
      def loss(p, k):
        return jnp.sum(g * jnp.sin(matmul(p, k)))

      def penalty(k):  # Squared input gradient, differentiated in k.
        return jnp.sum(jax.grad(loss)(p, k) ** 2)

      return (jax.value_and_grad(loss, argnums=(0, 1))(p, k),
              jax.grad(penalty)(k))

    jax.tree.map(_assert_close, derivatives(models._patch_matmul),
                 derivatives(jnp.dot))

  def test_conv_layer_matches_nn_conv_variables_and_values(self):
    x = jax.random.normal(jax.random.key(0), (2, 14, 14, 16))
    kw = dict(kernel_init=models._TORCH_KERNEL_INIT,
              bias_init=nn.initializers.normal(1.0))
    ref = nn.Conv(8, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), **kw)
    params = ref.init(jax.random.key(1), x)
    for impl in ('auto', 'lax', 'im2col'):
      layer = models.Conv4x4S2(8, impl=impl, **kw)
      with self.subTest(impl):
        # Same names, shapes and (same keys) initial values as nn.Conv.
        jax.tree.map(np.testing.assert_array_equal,
                     layer.init(jax.random.key(1), x), params)
        _assert_close(layer.apply(params, x), ref.apply(params, x))
    with self.assertRaisesRegex(ValueError, 'im2col'):
      models.conv_4x4_s2(x, params['params']['kernel'], 'fft')

  def test_auto_conv_impl_is_im2col_on_cpu_and_lax_on_accelerators(self):
    # im2col is a CPU measurement; accelerators keep their conv kernels.
    self.assertEqual(models._auto_conv_impl(), 'im2col')  # Tests run on CPU.
    for backend in ('gpu', 'tpu'):
      with mock.patch.object(jax, 'default_backend', return_value=backend):
        self.assertEqual(models._auto_conv_impl(), 'lax', backend)

  # k x k stride-1 'SAME' convolutions of the cifar ResNets: the heavy
  # 128/256-channel shapes at test size, 1x1 shortcuts, a non-square input.
  @parameterized.parameters(((2, 8, 8, 16), 3, 16), ((2, 6, 10, 5), 3, 7),
                            ((2, 8, 8, 16), 1, 12), ((1, 5, 5, 3), 5, 4))
  def test_conv_same_impls_match_lax_conv_with_gradients(self, shape, k,
                                                         c_out):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], shape)
    kernel = jax.random.normal(keys[1], (k, k, shape[-1], c_out)) / (
        k * np.sqrt(shape[-1]))
    g = jax.random.normal(keys[2], (*shape[:3], c_out))

    def value_and_grads(impl):
      return jax.value_and_grad(
          lambda x, w: jnp.sum(g * jnp.sin(models.conv_same(x, w, impl))),
          argnums=(0, 1))(x, kernel)

    expected = value_and_grads('lax')
    for impl in ('rowgrad', 'dot') if k == 1 else ('rowgrad',):
      with self.subTest(impl):
        jax.tree.map(_assert_close, value_and_grads(impl), expected)

  @parameterized.product(resample=('none', 'up', 'pool'), k=(1, 3),
                         c_in=(4, 16))
  def test_conv_same_layer_fused_forms_match_composition(self, resample, k,
                                                         c_in):
    # 'auto' fuses the resampling into the conv (fewer multiply-adds);
    # 'lax' is the literal conv(up(x)) / pool(conv(x)) of the official code.
    x = jax.random.normal(jax.random.key(0), (2, 6, 8, c_in))
    kw = dict(kernel_init=models._xavier(1.0),
              bias_init=nn.initializers.normal(1.0))
    ref = nn.Conv(16, (k, k), padding='SAME', **kw)
    params = ref.init(jax.random.key(1), x)
    layer = lambda impl: models.ConvSame(16, k, resample=resample, impl=impl,
                                         **kw)
    # Same names, shapes and (same keys) initial values as nn.Conv.
    jax.tree.map(np.testing.assert_array_equal,
                 layer('auto').init(jax.random.key(1), x), params)
    y = ref.apply(params, models._upsample2(x) if resample == 'up' else x)
    if resample == 'pool':
      y = models._avg_pool2(y)
    _assert_close(layer('lax').apply(params, x), y)

    def value_and_grads(impl):
      return jax.value_and_grad(
          lambda p, x: jnp.sum(jnp.sin(layer(impl).apply(p, x))),
          argnums=(0, 1))(params, x)

    jax.tree.map(_assert_close, value_and_grads('auto'),
                 value_and_grads('lax'))

  def test_conv_same_rejects_bad_arguments(self):
    x = jnp.zeros((1, 4, 4, 2))
    with self.assertRaisesRegex(ValueError, 'odd square kernel'):
      models.conv_same(x, jnp.zeros((2, 2, 2, 3)), 'lax')
    with self.assertRaisesRegex(ValueError, "choose 'lax', 'rowgrad'"):
      models.conv_same(x, jnp.zeros((3, 3, 2, 3)), 'fft')
    with self.assertRaisesRegex(ValueError, "choose 'none', 'up' or 'pool'"):
      models.ConvSame(3, 3, resample='down').init(jax.random.key(0), x)
    with self.assertRaisesRegex(ValueError, "choose 'auto' or 'lax'"):
      models.ConvSame(3, 3, impl='rowgrad').init(jax.random.key(0), x)
    with self.assertRaisesRegex(ValueError, 'needs a 1x1 or 3x3 kernel'):
      models.ConvSame(3, 5, resample='up').init(jax.random.key(0), x)

  def test_create_models_passes_axis_name_to_batch_norm(self):
    ae, _ = models.create_models(_config('cifar'), (32, 32, 3), 'batch')
    self.assertEqual(ae.encoder.axis_name, 'batch')
    self.assertEqual(ae.generator.axis_name, 'batch')

  def test_create_models_rejects_unknown_arch(self):
    with self.assertRaisesRegex(ValueError, r"'cifar', 'mnist'"):
      models.create_models(_config('resnet'), (28, 28, 1))

  @parameterized.parameters(('mnist', (32, 32, 3)), ('cifar', (28, 28, 1)),
                            ('mnist', (28, 28)))
  def test_create_models_rejects_wrong_image_shape(self, arch, shape):
    with self.assertRaisesRegex(ValueError, 'mnist: 28x28xC, cifar: 32x32xC'):
      models.create_models(_config(arch), shape)


if __name__ == '__main__':
  absltest.main()
