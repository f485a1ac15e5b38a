"""Folders and arrays of the user's own images through `input_pipeline`.

Real images: PNG folders written from the real MNIST / Fashion-MNIST IDX
files (`bash scripts/setup.sh` fetched them), in every supported layout.
"""
import pathlib
import shutil
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import ml_collections
import numpy as np
from PIL import Image

from ama_jax.data import input_pipeline
from ama_jax.data import idx_images
from ama_jax.data import image_files
from ama_jax.data import image_folder
from configs import default
from configs import folder as folder_config

RAW_DIR = idx_images.DEFAULT_RAW_DIR


def data_config(**overrides) -> ml_collections.ConfigDict:
  config = default.get_config().data
  config.update(overrides)
  return config


class OwnDataTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = pathlib.Path(tempfile.mkdtemp(prefix='own_data_test_'))
    cls.addClassCleanup(shutil.rmtree, cls.root, ignore_errors=True)
    cls.x, cls.y = idx_images.read_split(RAW_DIR / 'mnist', 'train')
    cls.xt, cls.yt = idx_images.read_split(RAW_DIR / 'mnist', 'test')
    cls.fx, _ = idx_images.read_split(RAW_DIR / 'fashion_mnist', 'test')
    cls.x, cls.y = cls.x[:400], cls.y[:400]
    cls.xt, cls.yt = cls.xt[:150], cls.yt[:150]
    # Class subfolders with the user's own test set.
    cls.classes = cls.root / 'classes'
    image_folder.write_pngs(cls.classes / 'train', cls.x, cls.y)
    image_folder.write_pngs(cls.classes / 'test', cls.xt, cls.yt)
    # The same images as an array (same order, same test split).
    cls.npz = cls.root / 'mnist.npz'
    np.savez(cls.npz, x_train=cls.x[..., 0], y_train=cls.y,
             x_test=cls.xt[..., 0], y_test=cls.yt)
    # normal/ (digits 7) + anomaly/ (Fashion-MNIST), no test/.
    cls.normal_anomaly = cls.root / 'normal_anomaly'
    sevens = cls.x[cls.y == 7]
    image_folder.write_pngs(cls.normal_anomaly / 'normal', sevens)
    image_folder.write_pngs(cls.normal_anomaly / 'anomaly', cls.fx[:30],
                            names=[f'f{i:03d}' for i in range(30)])
    # Normals only, mixed sizes and colour (a user's camera folder).
    cls.mixed = cls.root / 'mixed' / 'normal'
    cls.mixed.mkdir(parents=True)
    for i, image in enumerate(sevens[:60]):
      pil = Image.fromarray(image[..., 0])
      if i % 3 == 1:
        pil = pil.resize((40, 36)).convert('RGB')
      elif i % 3 == 2:
        pil = pil.resize((56, 56))
      pil.save(cls.mixed / f'{i:03d}.{"jpg" if i % 3 == 1 else "png"}')
    cls.data_dir = str(cls.root / 'tfds')

  def load(self, **overrides) -> input_pipeline.ProtocolData:
    config = data_config(data_dir=self.data_dir, **overrides)
    return input_pipeline.load_protocol(config, seed=0, input_size=(28, 28))

  def assert_disjoint(self, data):
    for a, b in (('train', 'val'),):
      left = set(zip(getattr(data, a).sources.tolist(),
                     getattr(data, a).indices.tolist()))
      right = set(zip(getattr(data, b).sources.tolist(),
                      getattr(data, b).indices.tolist()))
      self.assertEmpty(left & right)

  def test_class_subfolders_with_own_test_set(self):
    data = self.load(protocol='one_class', dataset=f'folder:{self.classes}',
                     normal_classes=(3,), num_val_normal=10,
                     num_val_anomaly=5)
    self.assertEqual(data.image_shape, (28, 28, 1))
    n3 = int((self.y == 3).sum())
    self.assertEqual(data.counts['train']['total'], n3 - 10)
    self.assertEqual(data.counts['val'], {'total': 15, 'normal': 10,
                                          'anomaly': 5, 'corrupted': 0})
    # The user's test/ folder, whole, in file order: the IDX test images.
    np.testing.assert_array_equal(data.test.indices, np.arange(150))
    np.testing.assert_array_equal(data.test.labels, self.yt != 3)
    np.testing.assert_array_equal(data.test.images,
                                  self.xt / np.float32(127.5) - 1)
    self.assert_disjoint(data)

  def test_folder_and_array_give_the_same_splits(self):
    common = dict(protocol='one_class', normal_classes=(3,),
                  num_val_normal=10, num_val_anomaly=5)
    folder = self.load(dataset=f'folder:{self.classes}', **common)
    array = self.load(dataset=f'array:{self.npz}', **common)
    for name in ('train', 'val', 'test'):
      for field in ('images', 'labels', 'classes', 'indices'):
        np.testing.assert_array_equal(getattr(getattr(folder, name), field),
                                      getattr(getattr(array, name), field))

  def test_prepared_copy_is_reused_and_renewed_when_files_change(self):
    root = pathlib.Path(self.create_tempdir().full_path) / 'data'
    image_folder.write_pngs(root / 'normal', self.x[:20])
    data_dir = self.create_tempdir().full_path
    config = dict(protocol='one_class', dataset=f'folder:{root}',
                  normal_classes=('normal',), num_val_normal=2,
                  num_val_anomaly=0, data_dir=data_dir)
    input_pipeline.load_protocol(data_config(**config), seed=0)
    copies = list(pathlib.Path(data_dir, 'local_images').iterdir())
    input_pipeline.load_protocol(data_config(**config), seed=0)
    self.assertEqual(list(pathlib.Path(data_dir, 'local_images').iterdir()),
                     copies)
    image_folder.write_pngs(root / 'normal', self.x[20:21], names=['new'])
    data = input_pipeline.load_protocol(data_config(**config), seed=0)
    self.assertLen(list(pathlib.Path(data_dir, 'local_images').iterdir()), 2)
    self.assertEqual(sum(c['total'] for c in data.counts.values()), 21)

  def test_normal_and_anomaly_folders_with_seeded_test_hold_out(self):
    config = dict(protocol='one_class', dataset=f'folder:{self.normal_anomaly}',
                  normal_classes=('normal',), num_val_normal=5,
                  num_val_anomaly=4, semi_supervised_ratio=0.05)
    data = self.load(**config)
    sevens = int((self.y == 7).sum())
    held_normal, held_anomaly = round(0.2 * sevens), round(0.2 * 30)
    self.assertEqual(data.counts['test'], {
        'total': held_normal + held_anomaly, 'normal': held_normal,
        'anomaly': held_anomaly, 'corrupted': 0})
    self.assertEqual(data.counts['val']['anomaly'], 4)
    semi = round(0.05 * (sevens - held_normal - 5))
    self.assertEqual(data.counts['train']['anomaly'], semi)
    # Test rows never reach train or validation.
    test = set(data.test.indices.tolist())
    self.assertEmpty(test & set(data.train.indices.tolist()))
    self.assertEmpty(test & set(data.val.indices.tolist()))
    again, other = self.load(**config), input_pipeline.load_protocol(
        data_config(data_dir=self.data_dir, **config), seed=1)
    np.testing.assert_array_equal(data.test.indices, again.test.indices)
    self.assertFalse(np.array_equal(data.test.indices, other.test.indices))

  def test_normals_only_mixed_sizes_and_colour(self):
    root = self.mixed.parent
    config = dict(protocol='one_class', dataset=f'folder:{root}',
                  normal_classes=('normal',), num_val_normal=5,
                  num_val_anomaly=10)
    with self.assertRaisesRegex(
        ValueError, r'Images differ in size \(HxW\): 28x28 in folder .* '
        r'\(\d+ images\); 36x40 in .*; set data.image_size'):
      self.load(**config)
    with self.assertRaisesRegex(
        ValueError, r'Images differ in channels: 1 in .*\(\d+ images\); 3 '
        r'in .*\(\d+ images\); set data.channels'):
      self.load(image_size=28, **config)
    data = self.load(image_size=28, channels=1, **config)
    self.assertEqual(data.image_shape, (28, 28, 1))
    self.assertEqual(data.counts['val'], {'total': 5, 'normal': 5,
                                          'anomaly': 0, 'corrupted': 0})
    self.assertEqual(data.counts['test']['anomaly'], 0)
    # A 28x28 PNG is kept exactly; the others went through image_files.fit.
    row = int(np.flatnonzero(data.train.indices == 0)[0])
    np.testing.assert_array_equal(data.train.images[row, ..., 0],
                                  self.x[self.y == 7][0, ..., 0]
                                  / np.float32(127.5) - 1)

  def test_flat_folder_of_normals_with_an_ood_folder(self):
    normals = pathlib.Path(self.create_tempdir().full_path)
    anomalies = pathlib.Path(self.create_tempdir().full_path)
    image_folder.write_pngs(normals, self.x[:100])
    image_folder.write_pngs(anomalies, self.fx[:50])
    config = dict(protocol='ood', dataset=f'folder:{normals}',
                  ood_dataset=f'folder:{anomalies}', num_val_normal=10,
                  num_val_anomaly=5, num_test_anomaly=None)
    data = self.load(**config)
    self.assertEqual(data.counts['test'], {'total': 30, 'normal': 20,
                                           'anomaly': 10, 'corrupted': 0})
    self.assertEqual(data.counts['val'], {'total': 15, 'normal': 10,
                                          'anomaly': 5, 'corrupted': 0})
    with self.assertRaisesRegex(ValueError, r"one_class' needs classes, but "
                                'data.dataset=.* has none'):
      self.load(**{**config, 'protocol': 'one_class'})

  def test_array_with_labels_and_hold_out(self):
    npy = pathlib.Path(self.create_tempdir().full_path) / 'x.npy'
    labels = npy.with_name('y.npy')
    np.save(npy, self.x)
    np.save(labels, np.array(['even', 'odd'])[self.y % 2])
    data = self.load(protocol='one_class', dataset=f'array:{npy},labels='
                     f'{labels}', normal_classes=('odd',), num_val_normal=10,
                     num_val_anomaly=5)
    self.assertEqual(data.counts['test']['total'], 80)  # 20% of 400.
    np.testing.assert_array_equal(data.train.classes, 1)
    np.testing.assert_array_equal(self.y[data.train.indices] % 2, 1)

  def test_configs_folder_documents_the_whole_path(self):
    config = folder_config.get_config('3,runlocal')
    self.assertEqual(config.data.normal_classes, (3,))
    config.data.dataset = f'folder:{self.classes}'
    config.data.data_dir = self.data_dir
    data = input_pipeline.load_protocol(config.data, seed=0,
                                        input_size=(28, 28))
    self.assertEqual(set(data.train.classes.tolist()), {3})

  @parameterized.named_parameters(
      ('empty_folder', 'empty', {}, r'holds no images \(supported: \.png, '
       r'\.jpg, \.jpeg, \.bmp\)'),
      ('missing_folder', 'missing', {},
       r'missing is not a folder \(it does not exist\)'),
      ('unreadable_file', 'corrupt', {},
       r'Cannot read image .*bad\.png.*Remove or replace the file'),
      ('truncated_file', 'truncated', dict(image_size=28, channels=1),
       r'Cannot read image .*cut\.png'),
      ('unknown_class', 'classes', dict(normal_classes=('cat',)),
       r"Unknown class 'cat' of folder .*valid names: \['0', '1'"),
      ('too_small', 'tiny', dict(image_size=28, channels=1),
       r'tiny/normal/a\.png is too small: 10x12 \(HxW\) would be upscaled '
       r"more than 2x to 28x28.*data.resize='pad'"),
      ('wrong_size', 'big', {}, r'the images are 64x64 \(HxW\), which is not '
       r"the model's input size 28x28 \(model.arch\); set "
       'data.image_size=28'),
      ('mixed_files_and_folders', 'mixed_layout', {},
       r'holds both images .* and subfolders'),
      ('transparent', 'alpha', {}, 'transparent pixels'),
      ('sixteen_bit', 'deep', {}, r'16-bit or float.*convert it to 8-bit'),
  )
  def test_folder_errors(self, case, overrides, message):
    root = pathlib.Path(self.create_tempdir().full_path) / case
    normal = root / 'normal'
    if case == 'classes':
      root = self.classes
    elif case != 'missing':
      normal.mkdir(parents=True)
    if case == 'empty':
      (normal / 'notes.txt').write_text('no images here')
      root = normal
    elif case == 'corrupt':
      Image.fromarray(self.x[0, ..., 0]).save(normal / 'good.png')
      (normal / 'bad.png').write_bytes(b'\x89PNG\r\n\x1a\n not an image')
    elif case == 'truncated':
      Image.fromarray(self.x[0, ..., 0]).save(normal / 'good.png')
      data = (normal / 'good.png').read_bytes()
      (normal / 'cut.png').write_bytes(data[:len(data) // 2])
    elif case == 'tiny':
      Image.fromarray(np.zeros((10, 12), np.uint8)).save(normal / 'a.png')
    elif case == 'big':
      Image.fromarray(np.zeros((64, 64), np.uint8)).save(normal / 'a.png')
    elif case == 'mixed_layout':
      Image.fromarray(self.x[0, ..., 0]).save(root / 'loose.png')
    elif case == 'alpha':
      rgba = np.zeros((28, 28, 4), np.uint8)
      Image.fromarray(rgba).save(normal / 'a.png')
    elif case == 'deep':
      Image.fromarray(np.zeros((28, 28), np.uint16)).save(normal / 'a.png')
    config = dict(protocol='one_class', dataset=f'folder:{root}',
                  normal_classes=('normal',), num_val_normal=0,
                  num_val_anomaly=0)
    config.update(overrides)
    with self.assertRaisesRegex(input_pipeline.DataError, message):
      self.load(**config)


class ImageFilesTest(parameterized.TestCase):

  def test_fit_resizes_pads_crops_and_converts_channels(self):
    grey = np.arange(40 * 30, dtype=np.int64).reshape(40, 30, 1) % 256
    grey = grey.astype(np.uint8)
    for resize in image_files.RESIZE_METHODS:
      out = image_files.fit(grey, (28, 28, 3), resize)
      self.assertEqual(out.shape, (28, 28, 3))
      np.testing.assert_array_equal(out[..., 0], out[..., 2])
    small = np.full((20, 20, 1), 200, np.uint8)
    framed = image_files.fit(small, (28, 28, 1), 'pad')
    np.testing.assert_array_equal(framed[4:24, 4:24], small)
    self.assertEqual(framed.sum(), small.sum())
    rgb_grey = np.repeat(small, 3, axis=-1)
    np.testing.assert_array_equal(image_files.fit(rgb_grey, (20, 20, 1)),
                                  small)  # Luma of a grey RGB image.


if __name__ == '__main__':
  absltest.main()
