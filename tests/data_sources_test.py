"""Tests for the sources: `tfds_source.load_raw` on the real IDX files, its
errors, the class names of the built-in datasets and the conversion settings
(`data_common`). Sources inside a protocol: input_pipeline_test.py,
own_data_test.py (folders, arrays), archives_test.py (archives, offline)."""
from unittest import mock

from absl.testing import absltest
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from ama_jax.data import data_common
from ama_jax.data import tfds_source
from ama_jax.data import idx_images
from configs import default


def data_config(**overrides) -> ml_collections.ConfigDict:
  config = default.get_config().data
  config.update(overrides)
  return config


class LoadRawTest(absltest.TestCase):

  def test_load_raw_returns_the_idx_arrays(self):
    images, labels = tfds_source.load_raw('fashion_mnist', 'test',
                                          data_config())
    raw_images, raw_labels = idx_images.read_split(
        idx_images.DEFAULT_RAW_DIR / 'fashion_mnist', 'test')
    self.assertEqual(images.dtype, np.uint8)
    np.testing.assert_array_equal(images, raw_images)
    np.testing.assert_array_equal(labels, raw_labels)

  def test_unknown_split_raises(self):
    with self.assertRaisesRegex(ValueError, "Unknown split 'validation'"):
      tfds_source.load_raw('mnist', 'validation', data_config())

  def test_missing_offline_files_name_the_fetch_command(self):
    config = data_config(raw_dir=self.create_tempdir().full_path,
                         data_dir=self.create_tempdir().full_path)
    # Hosts answer, but the download itself fails.
    reachable = mock.patch.object(tfds_source, 'unreachable',
                                  return_value=None)
    no_network = mock.patch.object(
        tfds.core.DatasetBuilder, 'download_and_prepare',
        side_effect=ConnectionError('offline'))
    with reachable, no_network, self.assertRaisesRegex(
        data_common.DataUnavailableError,
        r'Could not load mnist: .*ConnectionError: offline.*'
        r'missing from .*: run `bash scripts/setup\.sh`'):
      tfds_source.load_raw('mnist', 'train', config)


class NamesTest(absltest.TestCase):

  def test_class_names_and_aliases(self):
    self.assertEqual(data_common.class_index('fashion_mnist', 't-shirt'), 0)
    self.assertEqual(data_common.class_index('fashion_mnist', 'ANKLE BOOT'),
                     9)
    self.assertEqual(data_common.class_index('cifar10', 'truck'), 9)
    self.assertEqual(data_common.class_index('mnist', '7'), 7)
    self.assertEqual(data_common.class_index('svhn_cropped', 4), 4)

  def test_old_image_shape_field_still_reads(self):
    # Configs saved in checkpoints before data.image_size existed.
    conv = data_common.conversion({'image_shape': (32, 32, 3)})
    self.assertEqual(conv, data_common.Conversion((32, 32), 3, 'pad'))


if __name__ == '__main__':
  absltest.main()
