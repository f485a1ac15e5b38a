"""CIFAR-10 / SVHN from the files their authors publish, and the offline path.

Tiny files in the real formats: cifar-10-python.tar.gz (pickled batches,
bytes keys, [N, 3072] channel-planar rows), cifar-10-binary.tar.gz
(label byte + 3072 pixels per record) and SVHN's cropped-digit .mat files
(MATLAB v5, X [32, 32, 3, N], y [N, 1] with 10 for the digit 0).
"""
import io
import pathlib
import pickle
import socket
import subprocess
import sys
import tarfile
import time
from unittest import mock

from absl.testing import absltest
from absl.testing import parameterized
import ml_collections
import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from ama_jax.data import input_pipeline
from ama_jax.data import tfds_source
from ama_jax.data import archives
from configs import cifar_svhn
from configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]
PER_BATCH, TEST = 12, 20


def _images(n: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3),
                                              dtype=np.uint8)


def _planar(images: np.ndarray) -> np.ndarray:
  """[N, 32, 32, 3] -> the published [N, 3072] rows (R, G, B planes)."""
  return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def write_cifar10(directory: pathlib.Path, binary: bool
                  ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """A tiny CIFAR-10 archive; returns {split: (images, labels)}."""
  directory.mkdir(parents=True, exist_ok=True)
  batches = [f'data_batch_{i}' for i in range(1, 6)] + ['test_batch']
  arrays = {b: (_images(TEST if b == 'test_batch' else PER_BATCH, i),
                np.random.default_rng(10 + i).integers(
                    0, 10, TEST if b == 'test_batch' else PER_BATCH))
            for i, b in enumerate(batches)}
  kind = 'bin' if binary else 'py'
  path = directory / f'cifar-10-{"binary" if binary else "python"}.tar.gz'
  with tarfile.open(path, 'w:gz') as tar:
    for name, (x, y) in arrays.items():
      if binary:
        records = np.concatenate([y[:, None].astype(np.uint8), _planar(x)], 1)
        _add(tar, f'cifar-10-batches-bin/{name}.bin', records.tobytes())
      else:  # As Python 2's cPickle wrote them: bytes keys, a list of labels.
        batch = {b'batch_label': name.encode(), b'labels': y.tolist(),
                 b'data': _planar(x),
                 b'filenames': [b'x.png'] * len(y)}
        _add(tar, f'cifar-10-batches-py/{name}', pickle.dumps(batch, 2))
    meta = (b'\n'.join(n.encode() for n in archives.CIFAR10_CLASSES)
            if binary else pickle.dumps({b'label_names': [
                n.encode() for n in archives.CIFAR10_CLASSES]}, 2))
    _add(tar, f'cifar-10-batches-{kind}/batches.meta' + (
        '.txt' if binary else ''), meta)
  train = [arrays[b] for b in batches[:5]]
  return {'train': (np.concatenate([x for x, _ in train]),
                    np.concatenate([y for _, y in train])),
          'test': arrays['test_batch']}


def write_svhn(directory: pathlib.Path
               ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  directory.mkdir(parents=True, exist_ok=True)
  out = {}
  for split, n, seed in (('train', 40, 7), ('test', 25, 8)):
    x = _images(n, seed)
    y = np.random.default_rng(seed).integers(1, 11, n)  # 10 is digit 0.
    scipy.io.savemat(directory / f'{split}_32x32.mat',
                     {'X': x.transpose(1, 2, 3, 0), 'y': y[:, None]})
    out[split] = (x, y % 10)
  return out


class ArchivesTest(parameterized.TestCase):

  @parameterized.named_parameters(('python', False), ('binary', True))
  def test_cifar10_reader_matches_the_published_layout(self, binary):
    root = pathlib.Path(self.create_tempdir().full_path)
    expected = write_cifar10(root, binary)
    files = archives.find('cifar10', root)
    for split in ('train', 'test'):
      images, labels = archives.read('cifar10', files, split)
      np.testing.assert_array_equal(images, expected[split][0])
      np.testing.assert_array_equal(labels, expected[split][1])

  def test_svhn_reader_maps_10_to_0(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    expected = write_svhn(root)
    files = archives.find('svhn_cropped', root)
    images, labels = archives.read('svhn_cropped', files, 'test')
    np.testing.assert_array_equal(images, expected['test'][0])
    np.testing.assert_array_equal(labels, expected['test'][1])
    self.assertTrue(set(labels.tolist()) <= set(range(10)))

  def test_pickle_with_foreign_objects_is_refused(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    with tarfile.open(root / 'cifar-10-python.tar.gz', 'w:gz') as tar:
      for i in range(1, 6):
        _add(tar, f'cifar-10-batches-py/data_batch_{i}',
             pickle.dumps({b'data': socket.socket}, 2))
    with self.assertRaisesRegex(archives.ArchiveError,
                                'refusing to load socket.socket'):
      archives.read('cifar10', archives.find('cifar10', root), 'train')

  def test_cifar_svhn_protocol_from_archives_without_network(self):
    raw = pathlib.Path(self.create_tempdir().full_path)
    cifar = write_cifar10(raw / 'cifar10', binary=False)
    write_svhn(raw / 'svhn_cropped')
    config = cifar_svhn.get_config('runlocal')
    config.data.update(dict(raw_dir=str(raw), download=False,
                            data_dir=self.create_tempdir().full_path,
                            num_val_normal=10, num_val_anomaly=5,
                            num_test_anomaly=8, max_test=None))
    data = input_pipeline.load_protocol(config.data, seed=0,
                                        input_size=(32, 32))
    self.assertEqual(data.counts['train']['total'], 5 * PER_BATCH - 10)
    self.assertEqual(data.counts['test'], {'total': TEST + 8, 'normal': TEST,
                                           'anomaly': 8, 'corrupted': 0})
    np.testing.assert_array_equal(
        data.test.images[:TEST], cifar['test'][0] / np.float32(127.5) - 1)


class PreparedTfdsTest(parameterized.TestCase):
  """A TFDS data_dir where `cifar10` was prepared (as `tfds.load` does)."""

  @parameterized.named_parameters(('tfrecord', 'tfrecord'),
                                  ('array_record', 'array_record'))
  def test_prepared_data_dir_is_read_without_network(self, file_format):
    tmp = pathlib.Path(self.create_tempdir().full_path)
    expected = write_cifar10(tmp / 'archive', binary=True)
    with tarfile.open(tmp / 'archive' / 'cifar-10-binary.tar.gz') as tar:
      tar.extractall(tmp / 'extracted', filter='data')
    data_dir = tmp / 'tfds'
    # TFDS's own cifar10 builder, fed the tiny archive instead of the web.
    with mock.patch.object(tfds.download.DownloadManager,
                           'download_and_extract',
                           return_value=str(tmp / 'extracted')):
      tfds.builder('cifar10', data_dir=data_dir,
                   file_format=file_format).download_and_prepare()
    config = default.get_config().data
    config.update(dict(protocol='one_class', dataset='cifar10',
                       normal_classes=('ship',), num_val_normal=1,
                       num_val_anomaly=3, data_dir=str(data_dir),
                       raw_dir=str(tmp / 'no_raw'), download=False))
    with mock.patch.object(socket, 'create_connection',
                           side_effect=AssertionError('no network')):
      data = input_pipeline.load_protocol(config, seed=0)
    # TFDS's builder shuffled the records: compare as sets of rows.
    pixels = np.round((data.test.images + 1) * 127.5).astype(np.uint8)
    got = sorted(zip((p.tobytes() for p in pixels),
                     data.test.classes.tolist()))
    want = sorted(zip((p.tobytes() for p in expected['test'][0]),
                      expected['test'][1].tolist()))
    self.assertEqual(got, want)


class OfflineTest(parameterized.TestCase):

  def _config(self) -> ml_collections.ConfigDict:
    config = cifar_svhn.get_config()
    config.data.data_dir = self.create_tempdir().full_path
    config.data.raw_dir = self.create_tempdir().full_path
    return config

  def test_unreachable_host_fails_within_seconds(self):
    config = self._config()
    no_network = mock.patch.object(
        socket, 'create_connection',
        side_effect=OSError(101, 'Network is unreachable'))
    start = time.time()
    with no_network, self.assertRaisesRegex(
        input_pipeline.DataUnavailableError,
        r'cifar10 is not available offline and cannot be downloaded '
        r'\(www.cs.toronto.edu:443 is unreachable \(Network is unreachable\)'
        r'\): no prepared TFDS copy in .*/cifar10 and no archive in '
        r'.*/cifar10. Copy cifar-10-python.tar.gz or cifar-10-binary.tar.gz'):
      input_pipeline.load_protocol(config.data, seed=0)
    self.assertLess(time.time() - start, 10)

  def test_probe_gives_up_after_its_timeout(self):
    def slow(*args, **kwargs):
      time.sleep(5)
    with mock.patch.object(socket, 'create_connection', side_effect=slow):
      start = time.time()
      reason = tfds_source.unreachable(['https://example.org/x'],
                                       timeout=0.2)
    self.assertLess(time.time() - start, 2)
    self.assertEqual(reason, 'example.org:443 did not answer within 0.2 s')

  def test_probe_goes_through_the_proxy(self):
    calls = []
    with mock.patch.dict('os.environ', {'https_proxy': 'http://proxy:3128'}), \
        mock.patch.object(socket, 'create_connection',
                          side_effect=lambda addr, timeout: calls.append(addr)
                          or mock.MagicMock()):
      self.assertIsNone(tfds_source.unreachable(['https://a.org/x']))
    self.assertEqual(calls, [('proxy', 3128)])

  def test_headline_command_fails_in_one_line(self):
    workdir = self.create_tempdir().full_path
    start = time.time()
    proc = subprocess.run(
        [sys.executable, '-m', 'ama_jax.main', '--config=configs/cifar_svhn.py',
         f'--workdir={workdir}', '--config.data.download=False',
         f'--config.data.data_dir={self.create_tempdir().full_path}',
         f'--config.data.raw_dir={self.create_tempdir().full_path}'],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    elapsed = time.time() - start
    self.assertEqual(proc.returncode, 1, proc.stderr[-3000:])
    self.assertNotIn('Traceback', proc.stderr)
    self.assertRegex(
        proc.stderr.strip().splitlines()[-1],
        r'^error: cifar10 is not available offline and data.download is off: '
        r'no prepared TFDS copy in .* Copy cifar-10-python.tar.gz')
    # Imports and start-up only (tens of seconds on a busy 2-core machine),
    # never TFDS's minutes of download retries.
    self.assertLess(elapsed, 120)


if __name__ == '__main__':
  absltest.main()
