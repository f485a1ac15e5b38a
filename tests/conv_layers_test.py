"""Tests for ama_jax.models.conv_kernels and conv_layers: each convolution
form and layer module against the literal `lax.conv_general_dilated`
composition (or PyTorch's scatter definition), values and gradients, and the
`model.conv_impl` choice of forms."""
import functools
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ama_jax.models import conv_kernels
from ama_jax.models import conv_layers


def _assert_close(actual, expected):
  """Equal up to float32 rounding: rtol 1e-5 of each value or of the max."""
  expected = np.asarray(expected)
  np.testing.assert_allclose(actual, expected, rtol=1e-5,
                             atol=1e-5 * np.abs(expected).max())


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


class ConvLayersTest(parameterized.TestCase):

  @parameterized.parameters('dilated', 'subpixel')
  def test_conv_transpose_forms_match_pytorch_scatter(self, impl):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 4, 3)).astype(np.float32)
    kernel = rng.normal(size=(4, 4, 3, 2)).astype(np.float32)
    y = conv_kernels.conv_transpose_4x4_s2(jnp.asarray(x),
                                          jnp.asarray(kernel), impl)
    self.assertEqual(y.shape, (2, 10, 8, 2))
    np.testing.assert_allclose(y, _numpy_conv_transpose(x, kernel),
                               rtol=1e-5, atol=1e-5)

  # 16 output channels: 'cpu_forms' is the sub-pixel form; 4: dilated.
  @parameterized.product(features=(4, 16), impl=('xla', 'cpu_forms', 'auto'))
  def test_conv_transpose_layer_impls_match_dilated_form_with_gradients(
      self, features, impl):
    layer = lambda impl: conv_layers.ConvTranspose4x4(features, impl)
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 5))
    params = layer('xla').init(jax.random.key(1), x)
    self.assertEqual(params['params']['kernel'].shape, (4, 4, 5, features))
    kernel, bias = params['params']['kernel'], params['params']['bias']
    y_ref = conv_kernels.conv_transpose_4x4_s2(x, kernel, 'dilated') + bias

    def value_and_grads(f):
      return jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(f(p, x))),
                                argnums=(0, 1))(params, x)

    _assert_close(layer(impl).apply(params, x), y_ref)
    jax.tree.map(_assert_close, value_and_grads(layer(impl).apply),
                 value_and_grads(layer('xla').apply))

  def test_conv_transpose_subpixel_matches_dilated_with_gradients(self):
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, 5))
    kernel = jax.random.normal(jax.random.key(1), (4, 4, 5, 4)) / 8

    def value_and_grads(impl):
      f = lambda k, x: jnp.sum(jnp.sin(
          conv_kernels.conv_transpose_4x4_s2(x, k, impl)))
      return jax.value_and_grad(f, argnums=(0, 1))(kernel, x)

    jax.tree.map(_assert_close, value_and_grads('subpixel'),
                 value_and_grads('dilated'))

  # The mnist encoder/critic layer shapes (28 -> 14 with 1 or 2 channels,
  # 14 -> 7 with 64), an odd size (7 -> 3) and a non-square one.
  @parameterized.parameters(((3, 28, 28, 1), 8), ((3, 28, 28, 2), 64),
                            ((3, 14, 14, 64), 128), ((2, 7, 7, 5), 3),
                            ((2, 9, 6, 3), 4))
  def test_conv_4x4_s2_forms_match_lax_conv_with_gradients(self, shape,
                                                         c_out):
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
        f = functools.partial(conv_kernels.conv_4x4_s2, impl=impl)
        _assert_close(f(x, kernel), y_ref)
        jax.tree.map(_assert_close, value_and_grads(f), expected)

  # The gradient penalty differentiates the critic's input gradient (for
  # 'rowgrad', its custom backward pass).
  @parameterized.parameters((conv_kernels.conv_4x4_s2, 4, 'im2col'),
                            (conv_kernels.conv_same, 3, 'rowgrad'),
                            (conv_kernels.conv_same, 3, 'im2col'),
                            (conv_kernels.conv_same, 3, 'col2im'))
  def test_matmul_forms_match_lax_second_derivatives(self, conv, k, impl):
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

    jax.tree.map(_assert_close, derivatives(conv_kernels._patch_matmul),
                 derivatives(jnp.dot))

  def test_conv4x4s2_matches_nn_conv_variables_values_and_gradients(self):
    x = jax.random.normal(jax.random.key(0), (2, 14, 14, 16))
    kw = dict(kernel_init=conv_layers.TORCH_KERNEL_INIT,
              bias_init=nn.initializers.normal(1.0))
    ref = nn.Conv(8, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), **kw)
    params = ref.init(jax.random.key(1), x)

    def value_and_grads(apply):
      return jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(apply(p, x))),
                                argnums=(0, 1))(params, x)

    expected = value_and_grads(ref.apply)
    for impl in conv_layers.CONV_IMPLS:
      layer = conv_layers.Conv4x4S2(8, impl=impl, **kw)
      with self.subTest(impl):
        # Same names, shapes and (same keys) initial values as nn.Conv.
        jax.tree.map(np.testing.assert_array_equal,
                     layer.init(jax.random.key(1), x), params)
        _assert_close(layer.apply(params, x), ref.apply(params, x))
        jax.tree.map(_assert_close, value_and_grads(layer.apply), expected)

  def test_auto_conv_forms_are_cpu_forms_on_cpu_and_xla_on_accelerators(
      self):
    # The matmul forms are CPU measurements; accelerators keep XLA's own.
    # Tests run on CPU.
    self.assertEqual(conv_layers.conv_forms('auto'), 'cpu_forms')
    for backend in ('gpu', 'tpu'):
      with mock.patch.object(jax, 'default_backend', return_value=backend):
        self.assertEqual(conv_layers.conv_forms('auto'), 'xla', backend)
        for forced in ('xla', 'cpu_forms'):
          self.assertEqual(conv_layers.conv_forms(forced), forced)
    with self.assertRaisesRegex(ValueError, "'auto', 'xla', 'cpu_forms'"):
      conv_layers.conv_forms('lax')

  # k x k stride-1 'SAME' convolutions of the cifar ResNets: the heavy
  # 128/256-channel shapes at test size, 1x1 shortcuts, a non-square input.
  @parameterized.parameters(((2, 8, 8, 16), 3, 16), ((2, 6, 10, 5), 3, 7),
                            ((2, 8, 8, 16), 1, 12), ((1, 5, 5, 3), 5, 4),
                            ((2, 6, 10, 6), 3, 16), ((2, 8, 6, 24), 3, 3))
  def test_conv_same_impls_match_lax_conv_with_gradients(self, shape, k,
                                                         c_out):
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], shape)
    kernel = jax.random.normal(keys[1], (k, k, shape[-1], c_out)) / (
        k * np.sqrt(shape[-1]))
    g = jax.random.normal(keys[2], (*shape[:3], c_out))

    def value_and_grads(impl):
      return jax.value_and_grad(
          lambda x, w: jnp.sum(g * jnp.sin(conv_kernels.conv_same(x, w, impl))),
          argnums=(0, 1))(x, kernel)

    expected = value_and_grads('lax')
    for impl in (('rowgrad', 'dot') if k == 1 else
                 ('rowgrad', 'im2col', 'col2im')):
      with self.subTest(impl):
        jax.tree.map(_assert_close, value_and_grads(impl), expected)

  # The unfused 3x3 layer takes 'im2col' (4 -> 16), 'rowgrad' (16 -> 16) or
  # 'col2im' (16 -> 3) on CPU.
  @parameterized.product(resample=('none', 'up', 'pool'), k=(1, 3),
                         c_in=(4, 16), c_out=(16, 3))
  def test_conv_same_layer_impls_match_literal_composition(self, resample,
                                                           k, c_in, c_out):
    # Every `conv_impl` fuses the resampling into the conv (fewer
    # multiply-adds); 'literal' is the official code's conv(up(x)) /
    # pool(conv(x)).
    x = jax.random.normal(jax.random.key(0), (2, 6, 8, c_in))
    kw = dict(kernel_init=nn.initializers.xavier_uniform(),
              bias_init=nn.initializers.normal(1.0))
    ref = nn.Conv(c_out, (k, k), padding='SAME', **kw)
    params = ref.init(jax.random.key(1), x)
    layer = lambda impl: conv_layers.ConvSame(c_out, k, resample=resample,
                                              impl=impl, **kw)
    # Same names, shapes and (same keys) initial values as nn.Conv.
    jax.tree.map(np.testing.assert_array_equal,
                 layer('auto').init(jax.random.key(1), x), params)
    y = ref.apply(params, conv_kernels.upsample2(x) if resample == 'up' else x)
    if resample == 'pool':
      y = conv_kernels.avg_pool2(y)
    _assert_close(layer('literal').apply(params, x), y)

    def value_and_grads(impl):
      return jax.value_and_grad(
          lambda p, x: jnp.sum(jnp.sin(layer(impl).apply(p, x))),
          argnums=(0, 1))(params, x)

    expected = value_and_grads('literal')
    for impl in conv_layers.CONV_IMPLS:
      with self.subTest(impl):
        jax.tree.map(_assert_close, value_and_grads(impl), expected)

  @parameterized.parameters((6, 128, 'im2col'), (3, 128, 'im2col'),
                            (256, 3, 'col2im'), (128, 128, 'rowgrad'),
                            (16, 16, 'rowgrad'), (8, 8, 'im2col'))
  def test_cpu_form_of_unfused_layers_by_channels(self, c_in, c_out, form):
    self.assertEqual(conv_layers._conv_same_form(c_in, c_out), form)

  def test_upsample_forms_equal_conv3_of_upsampling(self):
    x = jax.random.normal(jax.random.key(0), (2, 5, 4, 3))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 2))
    expected = conv_kernels.conv_same(conv_kernels.upsample2(x), kernel, 'lax')
    _assert_close(conv_kernels.conv_transpose_4x4_s2(
        x, conv_kernels.upsample_conv_kernel(kernel), 'dilated'), expected)
    _assert_close(conv_kernels.upsample2_conv3x3(x, kernel), expected)

  def test_forms_and_layers_reject_unknown_impls_and_bad_kernels(self):
    x = jnp.zeros((1, 4, 4, 2))
    with self.assertRaisesRegex(ValueError, 'subpixel'):
      conv_kernels.conv_transpose_4x4_s2(x, jnp.zeros((4, 4, 2, 3)), 'fft')
    with self.assertRaisesRegex(ValueError, 'im2col'):
      conv_kernels.conv_4x4_s2(x, jnp.zeros((4, 4, 2, 3)), 'fft')
    with self.assertRaisesRegex(ValueError, 'odd square kernel'):
      conv_kernels.conv_same(x, jnp.zeros((2, 2, 2, 3)), 'lax')
    with self.assertRaisesRegex(ValueError,
                                "choose 'lax', 'rowgrad', 'im2col'"):
      conv_kernels.conv_same(x, jnp.zeros((3, 3, 2, 3)), 'fft')
    with self.assertRaisesRegex(ValueError, "choose 'none', 'up' or 'pool'"):
      conv_layers.ConvSame(3, 3, resample='down').init(jax.random.key(0), x)
    with self.assertRaisesRegex(ValueError, "'cpu_forms', 'literal'"):
      conv_layers.ConvSame(3, 3, impl='rowgrad').init(jax.random.key(0), x)
    with self.assertRaisesRegex(ValueError, 'needs a 1x1 or 3x3 kernel'):
      conv_layers.ConvSame(3, 5, resample='up').init(jax.random.key(0), x)


if __name__ == '__main__':
  absltest.main()
