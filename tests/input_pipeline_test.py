"""Tests for input_pipeline: protocol splits on the real MNIST/Fashion-MNIST
files, the cifar10/svhn_cropped path under `tfds.testing.mock_data`, errors."""
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from ama_jax.data import data_common
from ama_jax.data import input_pipeline
from ama_jax.data import tfds_source
from ama_jax.data import idx_images
from configs import default

MNIST_TEST_PER_CLASS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_TRAIN_3 = 6131  # Train images of digit 3.


def data_config(**overrides) -> ml_collections.ConfigDict:
  config = default.get_config().data
  config.update(overrides)
  return config


def pairs(split: input_pipeline.Split) -> set[tuple[int, int]]:
  return set(zip(split.sources.tolist(), split.indices.tolist()))


class SplitChecks(parameterized.TestCase):
  """Checks every protocol must pass."""

  def assert_well_formed(self, data: input_pipeline.ProtocolData):
    for name in ('train', 'val', 'test'):
      split = getattr(data, name)
      n = len(split.labels)
      self.assertEqual(split.images.shape, (n,) + data.image_shape, name)
      self.assertEqual(split.images.dtype, np.float32)
      self.assertGreaterEqual(split.images.min(), -1.0)
      self.assertLessEqual(split.images.max(), 1.0)
      for field, dtype in (('labels', np.int32), ('is_anomaly', np.bool_),
                           ('classes', np.int32), ('sources', np.int32),
                           ('indices', np.int64)):
        array = getattr(split, field)
        self.assertEqual(array.shape, (n,), f'{name}.{field}')
        self.assertEqual(array.dtype, dtype, f'{name}.{field}')
      self.assertContainsSubset(set(split.labels.tolist()), {0, 1})
      # labels and is_anomaly disagree only for corruption (label 0).
      self.assertTrue(np.all(split.is_anomaly[split.labels == 1]))
      self.assertLen(pairs(split), n, f'{name} repeats an image')
      self.assertEqual(
          data.counts[name],
          {'total': n, 'normal': int((~split.is_anomaly).sum()),
           'anomaly': int(split.labels.sum()),
           'corrupted': int((split.is_anomaly & (split.labels == 0)).sum())})
    # train and val index the same TFDS split: never the same image.
    self.assertEmpty(pairs(data.train) & pairs(data.val))


class RealDataTest(SplitChecks):
  """Real files, each TFDS split read once per class (memoized load_raw)."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cache = {}
    load_raw = tfds_source.load_raw

    def cached_load_raw(name, split, config):
      if (name, split) not in cache:
        cache[name, split] = load_raw(name, split, config)
      return cache[name, split]

    patcher = mock.patch.object(tfds_source, 'load_raw', cached_load_raw)
    patcher.start()
    cls.addClassCleanup(patcher.stop)

  def test_one_class_mnist(self):
    data = input_pipeline.load_protocol(
        data_config(protocol='one_class', dataset='mnist', normal_classes=(3,),
                    num_val_normal=100, num_val_anomaly=10), seed=0)
    self.assert_well_formed(data)
    self.assertEqual(data.image_shape, (28, 28, 1))
    self.assertLen(data.train, MNIST_TRAIN_3 - 100)
    np.testing.assert_array_equal(data.train.classes, 3)
    np.testing.assert_array_equal(data.train.labels, 0)
    self.assertEqual(data.counts['val'], {'total': 110, 'normal': 100,
                                          'anomaly': 10, 'corrupted': 0})
    np.testing.assert_array_equal(data.val.classes == 3, data.val.labels == 0)
    # Test: the whole test split, every class but 3 anomalous.
    np.testing.assert_array_equal(data.test.indices, np.arange(10000))
    np.testing.assert_array_equal(data.test.labels, data.test.classes != 3)
    self.assertEqual(data.counts['test']['anomaly'],
                     10000 - MNIST_TEST_PER_CLASS[3])
    np.testing.assert_array_equal(data.train.sources, 0)
    # Pixels span the whole range and are the scaled IDX bytes.
    self.assertEqual((data.test.images.min(), data.test.images.max()),
                     (-1.0, 1.0))
    raw_images, _ = idx_images.read_split(
        idx_images.DEFAULT_RAW_DIR / 'mnist', 'test')
    np.testing.assert_allclose(data.test.images[:5],
                               raw_images[:5] / 127.5 - 1.0, atol=1e-6)

  def test_more_validation_anomalies_leave_train_and_val_normals_be(self):
    # The tuned one-class recipe validates on 1000 anomalies, the paper on
    # 10: the training set and the validation normals are the same.
    small, large = (input_pipeline.load_protocol(data_config(
        protocol='one_class', dataset='mnist', normal_classes=(3,),
        num_val_normal=100, num_val_anomaly=n), seed=0) for n in (10, 1000))
    np.testing.assert_array_equal(small.train.indices, large.train.indices)
    np.testing.assert_array_equal(small.train.images, large.train.images)
    normal = lambda split: split.indices[split.labels == 0]
    np.testing.assert_array_equal(normal(small.val), normal(large.val))
    self.assertEqual(large.counts['val']['anomaly'], 1000)
    self.assertEqual(len(set(large.val.classes[large.val.labels == 1])), 9)

  def test_one_class_fashion_mnist_by_names(self):
    data = input_pipeline.load_protocol(
        data_config(protocol='one_class', dataset='fashion_mnist',
                    normal_classes=('trouser', 'T-SHIRT'), num_val_normal=100,
                    num_val_anomaly=10), seed=0)
    self.assert_well_formed(data)
    self.assertLen(data.train, 12000 - 100)
    self.assertEqual(set(data.train.classes.tolist()), {0, 1})
    self.assertEqual(data.counts['test']['anomaly'], 8000)
    anomalies = data.val.classes[data.val.labels == 1]
    self.assertLen(anomalies, 10)
    self.assertFalse(np.isin(anomalies, (0, 1)).any())

  def test_ood_fashion_mnist_vs_mnist(self):
    data = input_pipeline.load_protocol(data_config(), seed=0)  # Paper's.
    self.assert_well_formed(data)
    self.assertEqual(data.counts, {
        'train': {'total': 59500, 'normal': 59500, 'anomaly': 0,
                  'corrupted': 0},
        'val': {'total': 550, 'normal': 500, 'anomaly': 50, 'corrupted': 0},
        'test': {'total': 11000, 'normal': 10000, 'anomaly': 1000,
                 'corrupted': 0}})
    for split in (data.train, data.val, data.test):
      # Normal dataset <=> label 0, whatever its class.
      np.testing.assert_array_equal(split.sources, split.labels)
    np.testing.assert_array_equal(data.test.indices[:10000], np.arange(10000))
    self.assertEqual(set(data.test.classes[:10000].tolist()), set(range(10)))

  @parameterized.named_parameters(('one_class', 'one_class'), ('ood', 'ood'))
  def test_semi_supervised_and_corruption(self, protocol):
    data = input_pipeline.load_protocol(
        data_config(protocol=protocol, dataset='fashion_mnist',
                    normal_classes=(2,), num_val_normal=100,
                    num_val_anomaly=10, max_train=1000, max_test=300,
                    semi_supervised_ratio=0.1, corruption_ratio=0.05), seed=3)
    self.assert_well_formed(data)
    self.assertEqual(data.counts['train'], {'total': 1150, 'normal': 1000,
                                            'anomaly': 100, 'corrupted': 50})
    train = data.train
    labelled = train.labels == 1
    corrupted = train.is_anomaly & (train.labels == 0)
    drawn = [pairs(data.val), set(zip(train.sources[labelled].tolist(),
                                      train.indices[labelled].tolist())),
             set(zip(train.sources[corrupted].tolist(),
                     train.indices[corrupted].tolist()))]
    self.assertEqual([len(d) for d in drawn], [110, 100, 50])
    self.assertLen(set.union(*drawn), 260)  # All disjoint.
    if protocol == 'ood':  # Anomalies come from the MNIST train split.
      np.testing.assert_array_equal(train.sources, train.is_anomaly)
    else:
      np.testing.assert_array_equal(train.classes != 2, train.is_anomaly)

  def test_caps_keep_both_test_labels(self):
    data = input_pipeline.load_protocol(
        data_config(max_train=300, max_test=50), seed=0)
    self.assert_well_formed(data)
    self.assertLen(data.train, 300)
    self.assertLen(data.test, 50)
    self.assertEqual(data.counts['test']['anomaly'], 5)  # Ratio kept: 1/11.
    self.assertLen(data.val, 550)  # Caps leave validation alone.

  def test_seed_decides_every_split(self):
    config = data_config(protocol='one_class', dataset='mnist',
                         normal_classes=(7,), num_val_normal=100,
                         num_val_anomaly=10, max_train=500, max_test=200,
                         semi_supervised_ratio=0.02)
    first, again, other = (input_pipeline.load_protocol(config, seed=s)
                           for s in (1, 1, 2))
    for name in ('train', 'val', 'test'):
      np.testing.assert_array_equal(getattr(first, name).indices,
                                    getattr(again, name).indices)
      np.testing.assert_array_equal(getattr(first, name).images,
                                    getattr(again, name).images)
      self.assertFalse(np.array_equal(getattr(first, name).indices,
                                      getattr(other, name).indices), name)

  def test_validation_larger_than_data_raises(self):
    config = data_config(protocol='one_class', dataset='mnist',
                         normal_classes=(3,), num_val_normal=MNIST_TRAIN_3)
    with self.assertRaisesRegex(ValueError,
                                'num_val_normal=6131 is too large.*holds 6131 '
                                r'normal.*at most 6130 available'):
      input_pipeline.load_protocol(config, seed=0)

  def test_too_many_anomalies_raises(self):
    config = data_config(protocol='one_class', dataset='mnist',
                         normal_classes=(3,), num_val_anomaly=60000)
    with self.assertRaisesRegex(ValueError, 'Not enough anomalies.*only 53869 '
                                'are available in the mnist train split'):
      input_pipeline.load_protocol(config, seed=0)


class MockDataTest(SplitChecks):
  """cifar10 / svhn_cropped (no offline copy) under tfds.testing.mock_data."""

  def setUp(self):
    super().setUp()
    self.enter_context(tfds.testing.mock_data(num_examples=200))
    # No prepared copy, no archive: the download path (mocked), as on a
    # machine with network access.
    self.enter_context(mock.patch.object(tfds_source, 'unreachable',
                                         return_value=None))

  def test_one_class_cifar10(self):
    data = input_pipeline.load_protocol(
        data_config(protocol='one_class', dataset='cifar10',
                    normal_classes=('Ship',), num_val_normal=5,
                    num_val_anomaly=5, semi_supervised_ratio=0.2), seed=0)
    self.assert_well_formed(data)
    self.assertEqual(data.image_shape, (32, 32, 3))
    normals = data.train.labels == 0
    np.testing.assert_array_equal(data.train.classes[normals], 8)
    self.assertLen(data.test, 200)  # Mock ignores splits: 200 per split.
    np.testing.assert_array_equal(data.test.labels, data.test.classes != 8)

  def test_ood_cifar10_vs_svhn(self):
    data = input_pipeline.load_protocol(
        data_config(dataset='cifar10', ood_dataset='svhn_cropped',
                    num_val_normal=20, num_val_anomaly=10,
                    num_test_anomaly=30), seed=0)
    self.assert_well_formed(data)
    self.assertEqual(data.counts['train']['total'], 180)
    self.assertEqual(data.counts['val'], {'total': 30, 'normal': 20,
                                          'anomaly': 10, 'corrupted': 0})
    self.assertEqual(data.counts['test'], {'total': 230, 'normal': 200,
                                           'anomaly': 30, 'corrupted': 0})
    np.testing.assert_array_equal(data.test.sources, data.test.labels)

  def test_mismatched_shapes_need_image_size(self):
    config = data_config(dataset='cifar10', ood_dataset='mnist',
                         num_val_normal=20, num_val_anomaly=10,
                         num_test_anomaly=30)
    with self.assertRaisesRegex(
        ValueError, r'Images differ in size \(HxW\): 32x32 in cifar10; 28x28 '
        r'in mnist; set data.image_size \(with data.resize: '
        r'bilinear\|nearest\|crop\|pad\)'):
      input_pipeline.load_protocol(config, seed=0)
    config.image_size = 32
    with self.assertRaisesRegex(
        ValueError, r'Images differ in channels: 3 in cifar10; 1 in mnist; '
        'set data.channels'):
      input_pipeline.load_protocol(config, seed=0)

  def test_model_input_size_is_checked(self):
    config = data_config(dataset='cifar10', ood_dataset='svhn_cropped',
                         num_val_normal=20, num_val_anomaly=10,
                         num_test_anomaly=30)
    with self.assertRaisesRegex(
        ValueError, r'the images are 32x32 \(HxW\), which is not the '
        r"model's input size 28x28 \(model.arch\); set data.image_size=28"):
      input_pipeline.load_protocol(config, seed=0, input_size=(28, 28))

  def test_image_size_pads_and_repeats_grey(self):
    data = input_pipeline.load_protocol(
        data_config(dataset='cifar10', ood_dataset='mnist', num_val_normal=20,
                    num_val_anomaly=10, num_test_anomaly=30,
                    image_size=32, channels=3, resize='pad'), seed=0,
        input_size=(32, 32))
    self.assert_well_formed(data)
    digits = data.test.images[data.test.sources == 1]
    self.assertEqual(digits.shape, (30, 32, 32, 3))
    np.testing.assert_array_equal(digits[:, :2], -1.0)  # Zero-pixel frame.
    np.testing.assert_array_equal(digits[:, :, -2:], -1.0)
    np.testing.assert_array_equal(digits[..., 0], digits[..., 2])

  def test_image_size_resizes_colour_to_grey(self):
    data = input_pipeline.load_protocol(
        data_config(dataset='cifar10', ood_dataset='mnist', num_val_normal=20,
                    num_val_anomaly=10, num_test_anomaly=30,
                    image_size=28, channels=1), seed=0)
    self.assert_well_formed(data)
    self.assertEqual(data.train.images.shape[1:], (28, 28, 1))

  def test_any_tfds_image_dataset_by_name(self):
    data = input_pipeline.load_protocol(
        data_config(protocol='one_class', dataset='tfds:kmnist',
                    normal_classes=('o',), num_val_normal=5,
                    num_val_anomaly=5), seed=0, input_size=(28, 28))
    self.assert_well_formed(data)
    self.assertEqual(data.image_shape, (28, 28, 1))
    np.testing.assert_array_equal(data.train.classes, 0)  # 'o' is class 0.

  def test_tfds_dataset_of_varying_sizes_needs_image_size(self):
    config = data_config(protocol='one_class', dataset='cats_vs_dogs',
                         normal_classes=('cat',), num_val_normal=5,
                         num_val_anomaly=5)
    with self.assertRaisesRegex(
        ValueError, r'cats_vs_dogs images have no fixed size \(HxW\) \(TFDS '
        r'shape \?x\?\); set data.image_size'):
      input_pipeline.load_protocol(config, seed=0)
    # Mock images are as small as 1 pixel: framed, not upscaled.
    config.update(dict(image_size=32, resize='pad'))
    data = input_pipeline.load_protocol(config, seed=0, input_size=(32, 32))
    self.assert_well_formed(data)
    self.assertEqual(data.image_shape, (32, 32, 3))

  def test_tfds_dataset_without_a_label_feature(self):
    config = data_config(protocol='one_class', dataset='celeb_a_hq')
    with self.assertRaisesRegex(
        ValueError, r'needs classes.*has none \(its features have no '
        r'ClassLabel \(image: Image\(1024, 1024, 3\)'):
      input_pipeline.load_protocol(config, seed=0)

  def test_tfds_dataset_without_an_image_feature(self):
    config = data_config(protocol='one_class', dataset='imdb_reviews')
    with self.assertRaisesRegex(
        ValueError, "data.dataset='imdb_reviews' has no image feature.*its "
        r'features: text: Text\(\), label: ClassLabel\(\)'):
      input_pipeline.load_protocol(config, seed=0)


class ErrorsTest(parameterized.TestCase):
  """Bad settings fail before any data is read."""

  @parameterized.named_parameters(
      ('dataset', dict(dataset='imagenet'),
       "Unknown dataset data.dataset='imagenet': not a built-in dataset "
       r'\(mnist, fashion_mnist, cifar10, svhn_cropped\), not a TFDS dataset '
       'and not an existing path. Give folder:PATH'),
      ('ood_dataset', dict(ood_dataset='svhn'),
       "Unknown dataset data.ood_dataset='svhn': not a built-in"),
      ('same_datasets', dict(ood_dataset='fashion_mnist'),
       "ood_dataset='fashion_mnist' must differ"),
      ('protocol', dict(protocol='two_class'),
       r"Unknown data.protocol='two_class'; valid: \['one_class', 'ood'\]"),
      ('class_index', dict(protocol='one_class', normal_classes=(10,)),
       r'Class index 10 is out of range for fashion_mnist: valid names: '
       r"\['T-shirt/top'.*\(or indices 0..9\)"),
      ('class_name', dict(protocol='one_class', dataset='cifar10',
                          normal_classes=('banana',)),
       r"Unknown class 'banana' of cifar10; valid names: \['airplane'"),
      ('all_classes',
       dict(protocol='one_class', normal_classes=tuple(range(10))),
       'must name at least one and at most 9'),
      ('semi_one', dict(semi_supervised_ratio=1.0),
       r'data.semi_supervised_ratio=1.0 must be in \[0, 1\)'),
      ('corruption_negative', dict(corruption_ratio=-0.1),
       r'data.corruption_ratio=-0.1 must be in \[0, 1\)'),
      ('num_val', dict(num_val_normal=-1),
       'data.num_val_normal=-1 must be an integer >= 0'),
      ('image_size', dict(image_size=-3),
       r'data.image_size=-3 must be a positive integer'),
      ('channels', dict(channels=2), r'data.channels=2 must be 1 \(grey\), 3'),
      ('resize', dict(resize='cubic'),
       r"Unknown data.resize='cubic'; valid: \['bilinear', 'nearest', "
       r"'crop', 'pad'\]"),
      ('test_fraction', dict(test_fraction=0.0),
       r'data.test_fraction=0.0 must be in \(0, 1\)'),
      ('empty_dataset', dict(dataset=''), "data.dataset='' must name"),
      ('max_test', dict(max_test=1),
       'data.max_test=1 must be an integer >= 2 or None'),
  )
  def test_bad_setting_raises(self, overrides, message):
    with self.assertRaisesRegex(ValueError, message):
      input_pipeline.load_protocol(data_config(**overrides), seed=0)

  def test_contract_names_are_reachable_here(self):
    # Defined with the sources (data_common), part of this module's contract.
    self.assertIs(input_pipeline.DataError, data_common.DataError)
    self.assertIs(input_pipeline.DataUnavailableError,
                  data_common.DataUnavailableError)
    self.assertIs(input_pipeline.DATASETS, data_common.DATASETS)
    self.assertIs(input_pipeline.class_index, data_common.class_index)
    self.assertEqual(input_pipeline.class_index('fashion_mnist', 't-shirt'), 0)


if __name__ == '__main__':
  absltest.main()
