"""Tests for the IDX reader and the `idx_images` TFDS builder (real files)."""
import pathlib
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
import tensorflow_datasets as tfds

from ama_jax.data import idx_images

RAW_DIR = idx_images.DEFAULT_RAW_DIR
LABEL_COUNTS = {
    ('mnist', 'train'): [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851,
                         5949],
    ('mnist', 'test'): [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    ('fashion_mnist', 'train'): [6000] * 10,
    ('fashion_mnist', 'test'): [1000] * 10,
}


def _idx_bytes(type_code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
  header = bytes([0, 0, type_code, len(shape)])
  return header + np.asarray(shape, '>u4').tobytes() + payload


def _frombuffer(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """The published layout read directly: 16- and 8-byte headers."""
  images_file, labels_file = idx_images.SPLIT_FILES[split]
  images = np.frombuffer((RAW_DIR / name / images_file).read_bytes(), np.uint8,
                         offset=16).reshape(-1, 28, 28, 1)
  labels = np.frombuffer((RAW_DIR / name / labels_file).read_bytes(), np.uint8,
                         offset=8)
  return images, labels


class ReadIdxTest(parameterized.TestCase):

  def write(self, data: bytes) -> pathlib.Path:
    path = pathlib.Path(self.create_tempdir().full_path) / 'file-idx'
    path.write_bytes(data)
    return path

  def test_reads_big_endian_int32_with_shape(self):
    values = np.arange(6, dtype=np.int32).reshape(2, 3) - 3
    path = self.write(_idx_bytes(0x0C, (2, 3), values.astype('>i4').tobytes()))
    got = idx_images.read_idx(path, ndim=2)
    np.testing.assert_array_equal(got, values)
    self.assertTrue(got.dtype.isnative)

  def test_real_labels_equal_frombuffer(self):
    labels = idx_images.read_idx(RAW_DIR / 'mnist' / 't10k-labels-idx1-ubyte',
                                 ndim=1)
    np.testing.assert_array_equal(labels, _frombuffer('mnist', 'test')[1])

  @parameterized.named_parameters(
      ('bad_magic', b'\x01\x00\x08\x01' + b'\x00' * 8, 'two zero bytes'),
      ('too_short', b'\x00\x00', 'two zero bytes'),
      ('type_code', _idx_bytes(0x07, (2,), b'ab'), 'unknown IDX type code'),
      ('ndim', _idx_bytes(0x08, (2, 1), b'ab'), 'expected an IDX file with 1'),
      ('header', b'\x00\x00\x08\x01\x00', 'truncated IDX header'),
      ('truncated', _idx_bytes(0x08, (3,), b'ab'), 'truncated or corrupt'),
      ('too_long', _idx_bytes(0x08, (1,), b'ab'), 'truncated or corrupt'),
  )
  def test_malformed_file_raises(self, data, message):
    with self.assertRaisesRegex(ValueError, message):
      idx_images.read_idx(self.write(data), ndim=1)

  def test_read_split_rejects_count_mismatch(self):
    directory = pathlib.Path(self.create_tempdir().full_path)
    images_file, labels_file = idx_images.SPLIT_FILES['test']
    (directory / images_file).write_bytes(
        _idx_bytes(0x08, (2, 28, 28), bytes(2 * 28 * 28)))
    (directory / labels_file).write_bytes(_idx_bytes(0x08, (3,), b'\0\1\2'))
    with self.assertRaisesRegex(ValueError, 'holds 2 images but .* 3 labels'):
      idx_images.read_split(directory, 'test')

  def test_read_split_rejects_unknown_split(self):
    with self.assertRaisesRegex(ValueError, "Unknown split 'val'"):
      idx_images.read_split(RAW_DIR / 'mnist', 'val')


class IdxImagesBuilderTest(parameterized.TestCase):
  """Prepares both configs once into a temporary data_dir (~10 s)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = tempfile.mkdtemp(prefix='idx_images_test_')
    cls.addClassCleanup(shutil.rmtree, cls.data_dir, ignore_errors=True)
    cls.builders = {name: idx_images.prepare(name, data_dir=cls.data_dir)
                    for name in idx_images.CLASS_NAMES}

  @parameterized.product(name=('mnist', 'fashion_mnist'),
                         split=('train', 'test'))
  def test_records_equal_idx_files(self, name, split):
    source = tfds.data_source(f'idx_images/{name}', split=split,
                              data_dir=self.data_dir, download=False)
    examples = source.__getitems__(list(range(len(source))))
    images = np.stack([ex['image'] for ex in examples])
    labels = np.array([ex['label'] for ex in examples])

    self.assertEqual(images.dtype, np.uint8)
    self.assertEqual(images.shape[1:], (28, 28, 1))
    raw_images, raw_labels = idx_images.read_split(RAW_DIR / name, split)
    np.testing.assert_array_equal(images, raw_images)
    np.testing.assert_array_equal(labels, raw_labels)
    direct_images, direct_labels = _frombuffer(name, split)
    np.testing.assert_array_equal(images, direct_images)
    np.testing.assert_array_equal(labels, direct_labels)
    self.assertEqual(np.bincount(labels, minlength=10).tolist(),
                     LABEL_COUNTS[(name, split)])

  def test_info_keeps_order_and_class_names(self):
    info = self.builders['fashion_mnist'].info
    self.assertTrue(info.disable_shuffling)
    self.assertEqual(info.features['label'].names[0], 'T-shirt/top')
    self.assertEqual(info.features['label'].num_classes, 10)
    self.assertEqual(info.splits['train'].num_examples, 60000)
    self.assertEqual(info.splits['test'].num_examples, 10000)

  def test_prepare_again_reuses_the_copy(self):
    builder = idx_images.prepare('mnist', data_dir=self.data_dir,
                                 raw_dir='/nonexistent')  # Raw not needed.
    self.assertTrue(builder.is_prepared())

  def test_missing_raw_files_name_the_fetch_command(self):
    with self.assertRaisesRegex(FileNotFoundError, r'bash scripts/setup\.sh'):
      idx_images.prepare('mnist', data_dir=self.create_tempdir().full_path,
                         raw_dir=self.create_tempdir().full_path)

  def test_unknown_config_raises(self):
    with self.assertRaisesRegex(ValueError, "no config 'cifar10'"):
      idx_images.prepare('cifar10', data_dir=self.data_dir)


if __name__ == '__main__':
  absltest.main()
