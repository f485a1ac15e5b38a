"""Tests for ama_jax.models.nets: shapes, variables, spectral norm, whole
networks across `model.conv_impl` and `model.compute_dtype`, create_models.

The convolution forms themselves are tested in conv_layers_test."""
import functools
import re

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ama_jax.training import losses
from ama_jax.models import nets

_HW = {'mnist': 28, 'cifar': 32}
_BATCH = 2


def _config(arch, spectral_norm=False):
  return ml_collections.ConfigDict(
      dict(arch=arch, latent_dim=8, width=8, spectral_norm=spectral_norm)
  )


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
  ae, _ = nets.create_models(_config(arch), x.shape[1:])
  outputs, variables = ae.init_with_output(jax.random.key(1), x, False)
  return ae, variables, x, outputs


@functools.lru_cache(maxsize=None)
def _critic(arch, channels, spectral_norm=False):
  """(model, variables, x, (logits, features)) of D(x, y), built once."""
  x = _images(arch, channels, 0)
  _, critic = nets.create_models(_config(arch, spectral_norm), x.shape[1:])
  y = _images(arch, channels, 3)
  outputs, variables = critic.init_with_output(jax.random.key(2), x, y, False)
  return critic, variables, x, outputs


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
      return nets.create_models(config, x.shape[1:])

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
      return nets.create_models(config, x.shape[1:])

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
      nets.create_models(config, (28, 28, 1))
    config.conv_impl = 'xla'
    config.compute_dtype = 'float16'
    with self.assertRaisesRegex(ValueError, "'bfloat16', 'float32'"):
      nets.create_models(config, (28, 28, 1))

  def test_create_models_passes_axis_name_to_batch_norm(self):
    ae, _ = nets.create_models(_config('cifar'), (32, 32, 3), 'batch')
    self.assertEqual(ae.encoder.axis_name, 'batch')
    self.assertEqual(ae.generator.axis_name, 'batch')

  def test_inference_models_take_xla_convolutions_for_mnist_only(self):
    # Forward-only mnist models take XLA's convolutions when 'auto' (faster
    # forward on CPU, the same everywhere else); an explicit choice stays,
    # and cifar and the training models keep 'auto'. The forms agree in
    # values (test_networks_agree_across_conv_impls).
    def impls(arch, conv_impl, inference):
      config = _config(arch)
      config.conv_impl = conv_impl
      ae, critic = nets.create_models(
          config, nets.input_size(arch) + (1,), inference=inference)
      return {m.conv_impl for m in (ae.encoder, ae.generator, critic.network)
              if hasattr(m, 'conv_impl')}

    self.assertEqual(impls('mnist', 'auto', True), {'xla'})
    self.assertEqual(impls('mnist', 'auto', False), {'auto'})
    self.assertEqual(impls('mnist', 'cpu_forms', True), {'cpu_forms'})
    self.assertEqual(impls('cifar', 'auto', True), {'auto'})

  def test_create_models_rejects_unknown_arch(self):
    with self.assertRaisesRegex(ValueError, r"'cifar', 'mnist'"):
      nets.create_models(_config('resnet'), (28, 28, 1))

  @parameterized.parameters(('mnist', (32, 32, 3)), ('cifar', (28, 28, 1)),
                            ('mnist', (28, 28)))
  def test_create_models_rejects_wrong_image_shape(self, arch, shape):
    with self.assertRaisesRegex(ValueError, 'mnist: 28x28xC, cifar: 32x32xC'):
      nets.create_models(_config(arch), shape)


if __name__ == '__main__':
  absltest.main()
