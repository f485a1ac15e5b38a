"""Tests of `split_arrays`: whole splits kept as numpy beside their records."""
import os
import pathlib
import types

from absl.testing import absltest
import ml_collections
import numpy as np

from ama_jax.data import tfds_source
from ama_jax.data import idx_images
from ama_jax.data import split_arrays


class Decoder:
  """A split's `decode` that counts its calls."""

  def __init__(self, n=5, shape=(4, 4, 1), seed=0):
    rng = np.random.default_rng(seed)
    self.images = rng.integers(0, 256, (n, *shape), np.uint8)
    self.labels = rng.integers(0, 10, n).astype(np.int64)
    self.calls = 0

  def __call__(self):
    self.calls += 1
    return self.images.copy(), self.labels.copy()


class Builder:
  """What `split_arrays.read` uses of a prepared builder."""

  def __init__(self, data_dir, lengths=None):
    self.data_dir = data_dir
    self.info = types.SimpleNamespace(splits={
        k: types.SimpleNamespace(num_examples=n)
        for k, n in (lengths or {}).items()})


class SplitArraysTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = pathlib.Path(self.create_tempdir().full_path)
    (self.dir / 'dataset_info.json').write_text('{"splits": [5]}')

  def read(self, decode, split='train', lengths=None):
    images, labels = split_arrays.read(Builder(self.dir, lengths), split,
                                       decode)
    np.testing.assert_array_equal(images, decode.images)
    np.testing.assert_array_equal(labels, decode.labels)
    self.assertEqual((images.dtype, labels.dtype), (np.uint8, np.int64))
    return images, labels

  def test_decoded_once_then_read_from_the_file(self):
    decode = Decoder()
    self.read(decode)
    self.assertTrue(split_arrays.path(self.dir, 'train').is_file())
    images, _ = self.read(decode)
    self.assertEqual(decode.calls, 1)
    images[0] = 0  # The caller may change what it got.
    self.read(decode)
    self.assertEqual(decode.calls, 1)
    # Splits are kept apart.
    other = Decoder(seed=1)
    self.read(other, split='test')
    self.assertEqual(other.calls, 1)
    # Nothing but the two files (no temporary one left behind).
    self.assertEqual(sorted(p.name for p in (self.dir / 'arrays').iterdir()),
                     ['test.npz', 'train.npz'])

  def test_another_preparation_is_decoded_again(self):
    self.read(Decoder())
    (self.dir / 'dataset_info.json').write_text('{"splits": [6]}')
    decode = Decoder(n=6, seed=2)
    self.read(decode)
    self.assertEqual(decode.calls, 1)
    self.read(decode)  # Saved again, for the new preparation.
    self.assertEqual(decode.calls, 1)

  def test_another_length_is_decoded_again(self):
    self.read(Decoder())
    decode = Decoder(n=7, seed=3)
    self.read(decode, lengths={'train': 7})
    self.assertEqual(decode.calls, 1)

  def test_damaged_file_is_decoded_and_written_again(self):
    decode = Decoder()
    self.read(decode)
    file = split_arrays.path(self.dir, 'train')
    file.write_bytes(file.read_bytes()[:100])  # A truncated zip.
    with self.assertLogs(level='WARNING') as logs:
      self.read(decode)
    self.assertIn('Ignoring', logs.output[0])
    self.assertEqual(decode.calls, 2)
    self.read(decode)
    self.assertEqual(decode.calls, 2)

  def test_unwritable_folder_only_costs_the_speed_up(self):
    if os.geteuid() == 0:
      # root writes anywhere: a file where the folder should be instead.
      (self.dir / split_arrays.FOLDER).write_text('not a folder')
    else:
      self.dir.chmod(0o555)
      self.addCleanup(self.dir.chmod, 0o755)
    decode = Decoder()
    with self.assertLogs(level='WARNING') as logs:
      self.read(decode)
    self.assertIn('Could not keep', logs.output[0])
    self.read(decode)
    self.assertEqual(decode.calls, 2)

  def test_unprepared_folder_or_odd_split_is_never_saved(self):
    decode = Decoder()
    self.read(decode, split='train[:50%]')
    self.assertFalse((self.dir / split_arrays.FOLDER).exists())
    (self.dir / 'dataset_info.json').unlink()
    self.read(decode)
    self.assertFalse((self.dir / split_arrays.FOLDER).exists())
    self.assertEqual(decode.calls, 2)

  def test_images_of_several_shapes_are_not_saved(self):
    images = [np.zeros((2, 2, 1), np.uint8), np.zeros((3, 3, 1), np.uint8)]
    got = split_arrays.read(Builder(self.dir), 'train',
                            lambda: (images, np.zeros(2, np.int64)))
    self.assertIs(got[0], images)
    self.assertFalse((self.dir / split_arrays.FOLDER).exists())


class RealMnistTest(absltest.TestCase):

  def test_saved_split_equals_the_idx_files(self):
    config = ml_collections.ConfigDict({'data_dir': None, 'raw_dir': None})
    builder_dir = idx_images.prepare('mnist').data_dir
    # Decoded from the records (and saved), then read from the saved file.
    split_arrays.path(builder_dir, 'test').unlink(missing_ok=True)
    first = tfds_source.load_raw('mnist', 'test', config)
    self.assertTrue(split_arrays.path(builder_dir, 'test').is_file())
    again = tfds_source.load_raw('mnist', 'test', config)
    images, labels = idx_images.read_split(
        idx_images.DEFAULT_RAW_DIR / 'mnist', 'test')
    for got in (first, again):
      np.testing.assert_array_equal(got[0], images)
      np.testing.assert_array_equal(got[1], labels)


if __name__ == '__main__':
  absltest.main()
