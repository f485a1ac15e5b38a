"""Tests for ama_jax.models: shapes, variables, spectral norm, the
convolution forms of `model.conv_impl`, `model.compute_dtype`."""
import functools
import re
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import chex
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


def _assert_trees_close(actual, expected, rtol=1e-4):
  """Equal up to float32 rounding accumulated through a whole network: rtol
  of each value or of the largest value in the tree (gradients of biases
  that a BatchNorm cancels are rounding noise around 0)."""
  scale = max((np.abs(np.asarray(e)).max()
               for e in jax.tree.leaves(expected)), default=0.0)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=rtol,
                                 atol=rtol * scale), actual, expected)


def _fake_variables(ae, critic, x, seed=0):
  """(AE variables, critic variables) of the models' shapes without their
  initializers (XLA:CPU takes ~20 s to compile those of the cifar models):
  kernels ~ N(0, 1 / fan_in), biases ~ N(0, 0.1), BatchNorm and spectral
  norm in their initial state, u random."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    shape = leaf.shape
    if name in ('scale', 'var') or name.endswith('/sigma'):
      return jnp.ones(shape, leaf.dtype)
    if name == 'mean':
      return jnp.zeros(shape, leaf.dtype)
    std = 1 / np.sqrt(np.prod(shape[:-1])) if len(shape) > 1 else 0.1
    return jnp.asarray(rng.normal(0, std, shape), leaf.dtype)

  shapes = jax.eval_shape(lambda: (ae.init(jax.random.key(0), x, False),
                                   critic.init(jax.random.key(0), x, x,
                                               False)))
  return jax.tree_util.tree_map_with_path(fill, shapes)


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

  # 16 output channels: 'cpu_forms' is the sub-pixel form; 4: dilated.
  @parameterized.product(features=(4, 16), impl=('xla', 'cpu_forms', 'auto'))
  def test_conv_transpose_layer_forms_agree_with_gradients(self, features,
                                                          impl):
    layer = lambda impl: models.ConvTranspose4x4(features, impl)
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 5))
    params = layer('xla').init(jax.random.key(1), x)
    self.assertEqual(params['params']['kernel'].shape, (4, 4, 5, features))
    kernel, bias = params['params']['kernel'], params['params']['bias']
    y_ref = models.conv_transpose_4x4_s2(x, kernel, 'dilated') + bias

    def value_and_grads(f):
      return jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(f(p, x))),
                                argnums=(0, 1))(params, x)

    _assert_close(layer(impl).apply(params, x), y_ref)
    jax.tree.map(_assert_close, value_and_grads(layer(impl).apply),
                 value_and_grads(layer('xla').apply))

  def test_conv_transpose_forms_agree_with_gradients(self):
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 5))
    kernel = jax.random.normal(jax.random.key(1), (4, 4, 5, 4)) / 8

    def value_and_grads(impl):
      f = lambda k, x: jnp.sum(jnp.sin(
          models.conv_transpose_4x4_s2(x, k, impl)))
      return jax.value_and_grad(f, argnums=(0, 1))(kernel, x)

    jax.tree.map(_assert_close, value_and_grads('subpixel'),
                 value_and_grads('dilated'))
    with self.assertRaisesRegex(ValueError, 'subpixel'):
      models.conv_transpose_4x4_s2(x, kernel, 'fft')

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

  def test_conv_layer_matches_nn_conv_variables_values_and_gradients(self):
    x = jax.random.normal(jax.random.key(0), (2, 14, 14, 16))
    kw = dict(kernel_init=models._TORCH_KERNEL_INIT,
              bias_init=nn.initializers.normal(1.0))
    ref = nn.Conv(8, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), **kw)
    params = ref.init(jax.random.key(1), x)

    def value_and_grads(apply):
      return jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(apply(p, x))),
                                argnums=(0, 1))(params, x)

    expected = value_and_grads(ref.apply)
    for impl in models.CONV_IMPLS:
      layer = models.Conv4x4S2(8, impl=impl, **kw)
      with self.subTest(impl):
        # Same names, shapes and (same keys) initial values as nn.Conv.
        jax.tree.map(np.testing.assert_array_equal,
                     layer.init(jax.random.key(1), x), params)
        _assert_close(layer.apply(params, x), ref.apply(params, x))
        jax.tree.map(_assert_close, value_and_grads(layer.apply), expected)
    with self.assertRaisesRegex(ValueError, 'im2col'):
      models.conv_4x4_s2(x, params['params']['kernel'], 'fft')

  def test_auto_conv_forms_are_cpu_forms_on_cpu_and_xla_on_accelerators(
      self):
    # The matmul forms are CPU measurements; accelerators keep XLA's own.
    self.assertEqual(models.conv_forms('auto'), 'cpu_forms')  # Tests: CPU.
    for backend in ('gpu', 'tpu'):
      with mock.patch.object(jax, 'default_backend', return_value=backend):
        self.assertEqual(models.conv_forms('auto'), 'xla', backend)
        for forced in ('xla', 'cpu_forms'):
          self.assertEqual(models.conv_forms(forced), forced)
    with self.assertRaisesRegex(ValueError, "'auto', 'xla', 'cpu_forms'"):
      models.conv_forms('lax')

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
  def test_conv_same_layer_forms_match_composition(self, resample, k, c_in):
    # Every `conv_impl` fuses the resampling into the conv (fewer
    # multiply-adds); 'literal' is the official code's conv(up(x)) /
    # pool(conv(x)). 16 channels take 'cpu_forms' to the 'rowgrad' path.
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
    _assert_close(layer('literal').apply(params, x), y)

    def value_and_grads(impl):
      return jax.value_and_grad(
          lambda p, x: jnp.sum(jnp.sin(layer(impl).apply(p, x))),
          argnums=(0, 1))(params, x)

    expected = value_and_grads('literal')
    for impl in models.CONV_IMPLS:
      with self.subTest(impl):
        jax.tree.map(_assert_close, value_and_grads(impl), expected)

  def test_upsample_conv_kernel_is_conv3_of_upsampling(self):
    x = jax.random.normal(jax.random.key(0), (2, 5, 4, 3))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 2))
    expected = models.conv_same(models._upsample2(x), kernel, 'lax')
    _assert_close(models.conv_transpose_4x4_s2(
        x, models.upsample_conv_kernel(kernel), 'dilated'), expected)
    _assert_close(models.upsample2_conv3x3(x, kernel), expected)

  def test_conv_same_rejects_bad_arguments(self):
    x = jnp.zeros((1, 4, 4, 2))
    with self.assertRaisesRegex(ValueError, 'odd square kernel'):
      models.conv_same(x, jnp.zeros((2, 2, 2, 3)), 'lax')
    with self.assertRaisesRegex(ValueError, "choose 'lax', 'rowgrad'"):
      models.conv_same(x, jnp.zeros((3, 3, 2, 3)), 'fft')
    with self.assertRaisesRegex(ValueError, "choose 'none', 'up' or 'pool'"):
      models.ConvSame(3, 3, resample='down').init(jax.random.key(0), x)
    with self.assertRaisesRegex(ValueError, "'cpu_forms', 'literal'"):
      models.ConvSame(3, 3, impl='rowgrad').init(jax.random.key(0), x)
    with self.assertRaisesRegex(ValueError, 'needs a 1x1 or 3x3 kernel'):
      models.ConvSame(3, 5, resample='up').init(jax.random.key(0), x)

  # Whole networks through `model.conv_impl`, every layer type in train mode
  # (new BatchNorm / spectral-norm statistics), and for mnist the gradient
  # penalty's second derivatives. mnist at width 16 takes deconv1 to the
  # sub-pixel form; the cifar critic's 16-channel 3x3 layers take 'rowgrad'.
  @parameterized.parameters(('mnist', 16), ('cifar', 8))
  def test_networks_agree_across_conv_impls(self, arch, width):
    x = _images(arch, 1, 0)

    def build(conv_impl):
      config = _config(arch, spectral_norm=arch == 'cifar')
      config.update(width=width, conv_impl=conv_impl)
      return models.create_models(config, x.shape[1:])

    ae_vars, critic_vars = _fake_variables(*build('xla'), x)

    def run(conv_impl):
      ae, critic = build(conv_impl)

      def loss(ae_params, critic_params):
        (x_rec, z), ae_new = ae.apply({**ae_vars, 'params': ae_params}, x,
                                      True, mutable=['batch_stats'])
        critic_params_vars = {**critic_vars, 'params': critic_params}
        (logits, features), critic_new = critic.apply(
            critic_params_vars, x, x_rec, True, mutable=['batch_stats'])
        value = (jnp.sum(jnp.sin(logits)) + jnp.sum(jnp.sin(features))
                 + jnp.sum(jnp.sin(3 * x_rec)) + jnp.sum(z**2))
        if arch == 'mnist':
          value += losses.gradient_penalty(
              lambda xy: critic.apply(critic_params_vars, xy, False,
                                      method=critic.stacked)[0],
              x, x_rec, jnp.full((_BATCH,), 0.3), style='per_sample')
        return value, (x_rec, z, logits, features, ae_new, critic_new)

      return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
          ae_vars['params'], critic_vars['params'])

    # ('auto' is 'cpu_forms' here: the same program.)
    (value, outputs), grads = run('xla')
    (value_c, outputs_c), grads_c = run('cpu_forms')
    # Each output, and each network's gradients, on its own scale.
    for actual, expected in zip((value_c, *outputs_c, *grads_c),
                                (value, *outputs, *grads)):
      _assert_trees_close(actual, expected)

  @parameterized.parameters('mnist', 'cifar')
  def test_bfloat16_model_keeps_float32_variables_and_outputs(self, arch):
    x, y = _images(arch, 3, 0), _images(arch, 3, 3)

    def build(dtype):
      config = _config(arch, spectral_norm=arch == 'cifar')
      config.compute_dtype = dtype
      return models.create_models(config, x.shape[1:])

    (ae32, critic32), (ae16, critic16) = build('float32'), build('bfloat16')
    # The bf16 model's variables are the float32 model's, all float32.
    shapes = lambda ae, critic: jax.eval_shape(
        lambda: (ae.init(jax.random.key(1), x, False),
                 critic.init(jax.random.key(2), x, y, False)))
    self.assertEqual(shapes(ae16, critic16), shapes(ae32, critic32))
    for leaf in jax.tree.leaves(shapes(ae16, critic16)):
      self.assertEqual(leaf.dtype, jnp.float32)
    ae_vars, critic_vars = _fake_variables(ae32, critic32, x)

    def outputs(ae, critic):
      (x_rec, z), ae_new = ae.apply(ae_vars, x, True, mutable=['batch_stats'])
      (logits, features), critic_new = critic.apply(
          critic_vars, x, x_rec, True, mutable=['batch_stats'])
      return (x_rec, z, logits, features), (ae_new, critic_new)

    jit_outputs = jax.jit(outputs, static_argnums=(0, 1))
    (out16, new16), (out32, new32) = (jit_outputs(ae16, critic16),
                                      jit_outputs(ae32, critic32))
    for leaf in jax.tree.leaves((out16, new16)):
      self.assertEqual(leaf.dtype, jnp.float32)
    # bf16 keeps 8 significant bits (~0.4% per rounding). Seen here: 0.2-2%
    # of an output's norm, up to 6% of its largest value in single elements
    # (the cifar generator: train-mode BatchNorm over a batch of 2).
    for a, b in zip(jax.tree.leaves((out16, new16)),
                    jax.tree.leaves((out32, new32))):
      a, b = np.asarray(a), np.asarray(b)
      self.assertLessEqual(np.linalg.norm(a - b), 0.05 * np.linalg.norm(b))
      self.assertLessEqual(np.abs(a - b).max(), 0.15 * np.abs(b).max())
    # Every convolution of the bf16 model's forward passes runs in bf16.
    text = str(jax.make_jaxpr(functools.partial(outputs, ae16, critic16))())
    convs = re.findall(r'(\w+)\[[\d,]*\] = conv_general_dilated', text)
    self.assertNotEmpty(convs)
    self.assertEqual(set(convs), {'bf16'})

  def test_create_models_rejects_unknown_conv_impl_and_dtype(self):
    config = _config('mnist')
    config.conv_impl = 'im2col'
    with self.assertRaisesRegex(ValueError, "'auto', 'xla', 'cpu_forms'"):
      models.create_models(config, (28, 28, 1))
    config.conv_impl = 'xla'
    config.compute_dtype = 'float16'
    with self.assertRaisesRegex(ValueError, "'bfloat16', 'float32'"):
      models.create_models(config, (28, 28, 1))

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
