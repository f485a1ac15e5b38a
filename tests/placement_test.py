"""Tests of placement: the training set on the devices and each epoch's rows."""
from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from ama_jax.training import placement
from ama_jax.training import schedules
from ama_jax.training import train

_SHAPE = (28, 28, 1)


class EpochDataTest(absltest.TestCase):

  def test_each_device_gets_its_rows_of_every_global_batch_in_order(self):
    devices = jax.local_devices()
    self.assertLen(devices, 2)  # tests/conftest.py
    images = np.arange(13, dtype=np.float32)[:, None, None, None] * np.ones(
        (1, *_SHAPE), np.float32)
    labels = np.arange(13) % 2
    order = placement.epoch_order(jax.random.key(3), 0, 13)
    np.testing.assert_array_equal(np.sort(order), np.arange(13))
    config = default.get_config('runlocal')
    train_set = placement.put_train_set(images, labels, 2,
                                        schedules.make_schedule(config, 2, 4),
                                        devices)
    data = placement.epoch_data(train_set, order, 3, 2, devices)
    # The images stay on the devices; an epoch only adds its row indices.
    self.assertIs(data.images, train_set.images)
    host = jax.device_get(data)
    self.assertEqual(host.images.shape, (2, 13, *_SHAPE))  # All, per device.
    self.assertEqual(host.rows.shape, (2, 6))  # 12 of 13 used.
    take_batch = train._take_batch  # pylint: disable=protected-access
    take = jax.pmap(  # The step's own batch selection, on each device.
        lambda d, i: take_batch(d, i, 3)[:2],
        axis_name=placement.AXIS, in_axes=(0, None), devices=devices)
    for i in range(2):
      x, y = jax.device_get(take(data, jnp.int32(i)))
      for q in range(2):
        rows = order[i * 6 + q * 3:i * 6 + (q + 1) * 3]
        np.testing.assert_array_equal(host.rows[q, i * 3:(i + 1) * 3], rows)
        np.testing.assert_array_equal(x[q, :, 0, 0, 0], rows)
        np.testing.assert_array_equal(y[q], labels[rows])
    with self.assertRaisesRegex(ValueError, 'needs 12 training images'):
      placement.epoch_data(train_set, order[:11], 3, 2, devices)
    with self.assertRaisesRegex(ValueError, 'has 13 rows'):
      placement.epoch_data(train_set, np.arange(20)[::-1], 3, 2, devices)

  def test_pixel_images_sit_on_the_devices_as_uint8_and_come_back_exact(self):
    devices = jax.local_devices()
    pixels = np.random.default_rng(0).integers(0, 256, (8, *_SHAPE))
    images = pixels.astype(np.float32) / 127.5 - 1.0  # The pipeline's values.
    config = default.get_config('runlocal')
    schedule = schedules.make_schedule(config, 2, 4)
    train_set = placement.put_train_set(images, np.zeros(8, np.int32), 2,
                                        schedule, devices)
    self.assertEqual(train_set.images.dtype, np.uint8)
    back = jax.device_get(jax.jit(placement.pixels_to_float)(train_set.images))
    np.testing.assert_array_equal(back[0], images)  # Bit for bit.
    resized = images * 0.999  # Not pixel values: kept as float32.
    self.assertEqual(placement.put_train_set(
        resized, np.zeros(8, np.int32), 2, schedule,
        devices).images.dtype, np.float32)


if __name__ == '__main__':
  absltest.main()
