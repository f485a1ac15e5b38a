r"""Readers for the CIFAR-10 and SVHN files their authors publish.

For machines without network access: copy the files you already have into
`<raw_dir>/<name>/` (`data.raw_dir`, default `<repo>/data/raw`) and the input
pipeline prepares them once through `local_images` (array_record, no
TensorFlow needed):

* `cifar10/`: `cifar-10-python.tar.gz` (the pickled "python version") or
  `cifar-10-binary.tar.gz` (the "binary version", what TFDS downloads), or
  either one extracted (`cifar-10-batches-py/`, `cifar-10-batches-bin/`).
* `svhn_cropped/`: `train_32x32.mat` and `test_32x32.mat` (the "cropped
  digits" format 2, MATLAB v5 files read with scipy; label 10 is digit 0,
  as in TFDS's `svhn_cropped`).

The python version is a pickle: it is read with an unpickler that only
builds dicts, lists, strings, bytes and numpy arrays (anything else in the
file is an error), so a tampered archive cannot run code.
"""
import io
import os
import pathlib
import pickle
import tarfile
from typing import Any, Optional, Union

import numpy as np

PathLike = Union[str, os.PathLike]

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog',
                   'frog', 'horse', 'ship', 'truck')
FASHION_MNIST_CLASSES = ('t-shirt', 'trouser', 'pullover', 'dress', 'coat',
                         'sandal', 'shirt', 'sneaker', 'bag', 'ankle boot')
SVHN_CLASSES = tuple(str(i) for i in range(10))
CLASS_NAMES = {'cifar10': CIFAR10_CLASSES, 'svhn_cropped': SVHN_CLASSES}
# What `find` looks for, in order of preference.
FILES = {
    'cifar10': ('cifar-10-python.tar.gz', 'cifar-10-binary.tar.gz',
                'cifar-10-batches-py', 'cifar-10-batches-bin'),
    'svhn_cropped': ('train_32x32.mat', 'test_32x32.mat'),
}
_CIFAR_TRAIN = tuple(f'data_batch_{i}' for i in range(1, 6))
_CIFAR_TEST = ('test_batch',)
_CIFAR_RECORD = 1 + 32 * 32 * 3  # Binary version: label byte + pixels.
# Globals a CIFAR-10 python batch may reference (numpy arrays, pickled by
# numpy 1 or 2).
_SAFE_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'),
    ('numpy', 'ndarray'),
    ('numpy', 'dtype'),
    ('numpy.core.multiarray', 'scalar'),
    ('numpy._core.multiarray', 'scalar'),
    ('copy_reg', '_reconstructor'),
    ('copyreg', '_reconstructor'),
    ('__builtin__', 'object'),
    ('builtins', 'object'),
    # Bytes in protocol-2 pickles written by Python 3 (a str -> bytes call).
    ('_codecs', 'encode'),
}


class ArchiveError(ValueError):
  """A missing or malformed archive; the message names the file and fix."""


class _SafeUnpickler(pickle.Unpickler):

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in _SAFE_GLOBALS:
      raise pickle.UnpicklingError(
          f'refusing to load {module}.{name} (only numpy arrays are '
          'expected in a CIFAR-10 batch)')
    return super().find_class(module, name)


def find(name: str, directory: PathLike) -> Optional[list[pathlib.Path]]:
  """The files of `name` in `directory` (None if they are not all there)."""
  directory = pathlib.Path(directory)
  if name == 'cifar10':
    found = [directory / f for f in FILES[name] if (directory / f).exists()]
    return found[:1] or None
  if name == 'svhn_cropped':
    paths = [directory / f for f in FILES[name]]
    return paths if all(p.is_file() for p in paths) else None
  raise ArchiveError(f'No archive reader for {name!r}; valid: '
                     f'{list(FILES)}.')


def _cifar_members(path: pathlib.Path) -> dict[str, bytes]:
  """Base name -> bytes of every regular file of a tar.gz or folder."""
  if path.is_dir():
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
  try:
    with tarfile.open(path, 'r:*') as tar:
      return {pathlib.PurePosixPath(m.name).name: tar.extractfile(m).read()
              for m in tar.getmembers() if m.isfile()}
  except (OSError, tarfile.TarError, EOFError) as e:
    raise ArchiveError(f'Cannot read {path} as a tar.gz archive ({e}); '
                       'replace it with the original download.') from e


def _cifar_python_batch(data: bytes, where: str
                        ) -> tuple[np.ndarray, np.ndarray]:
  try:
    batch = _SafeUnpickler(io.BytesIO(data), encoding='bytes').load()
    pixels = np.asarray(batch[b'data'], np.uint8)
    labels = np.asarray(batch[b'labels'], np.int64)
  except (pickle.UnpicklingError, KeyError, TypeError, ValueError,
          EOFError) as e:
    raise ArchiveError(f'{where} is not a CIFAR-10 python batch ({e}).') from e
  if pixels.ndim != 2 or pixels.shape[1] != 3072 or len(pixels) != len(
      labels):
    raise ArchiveError(f'{where}: expected data [N, 3072] and N labels, got '
                       f'{pixels.shape} and {labels.shape}.')
  return pixels, labels


def _cifar_binary_batch(data: bytes, where: str
                        ) -> tuple[np.ndarray, np.ndarray]:
  if len(data) % _CIFAR_RECORD:
    raise ArchiveError(f'{where}: {len(data)} bytes is not a whole number of '
                       f'{_CIFAR_RECORD}-byte CIFAR-10 records.')
  records = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD)
  return records[:, 1:], records[:, 0].astype(np.int64)


def read_cifar10(path: PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
  """One split of CIFAR-10: (uint8 [N, 32, 32, 3], int64 [N]), file order.

  Args:
    path: cifar-10-{python,binary}.tar.gz or an extracted batches folder.
    split: 'train' (data_batch_1..5) or 'test' (test_batch).
  """
  path = pathlib.Path(path)
  if split not in ('train', 'test'):
    raise ArchiveError(f"Unknown split {split!r}; valid: ['train', 'test'].")
  members = _cifar_members(path)
  binary = 'bin' in path.name
  names = _CIFAR_TRAIN if split == 'train' else _CIFAR_TEST
  parts = []
  for name in names:
    key = name + '.bin' if binary else name
    if key not in members:
      expected = ', '.join(n + ('.bin' if binary else '')
                           for n in _CIFAR_TRAIN + _CIFAR_TEST)
      raise ArchiveError(f'{path} lacks {key}; expected the CIFAR-10 '
                         f'{"binary" if binary else "python"} version '
                         f'({expected}).')
    reader = _cifar_binary_batch if binary else _cifar_python_batch
    parts.append(reader(members[key], f'{path}:{key}'))
  pixels = np.concatenate([p for p, _ in parts])
  labels = np.concatenate([l for _, l in parts])
  if labels.size and (labels.min() < 0 or labels.max() > 9):
    raise ArchiveError(f'{path}: labels must be 0..9, got {labels.min()}..'
                       f'{labels.max()}.')
  # Rows hold the red, green and blue planes of 32 x 32 pixels in turn.
  images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels


def read_svhn(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
  """One SVHN cropped-digits .mat: (uint8 [N, 32, 32, 3], int64 [N] 0..9)."""
  import scipy.io  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path)
  try:
    mat = scipy.io.loadmat(path)
    x, y = mat['X'], np.asarray(mat['y']).reshape(-1)
  except (OSError, ValueError, KeyError, TypeError, NotImplementedError) as e:
    raise ArchiveError(f'Cannot read {path} as an SVHN .mat file with arrays '
                       f'X and y ({type(e).__name__}: {e}).') from e
  if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
    raise ArchiveError(f'{path}: expected X [32, 32, 3, N] and y [N], got '
                       f'{x.shape} and {y.shape}.')
  labels = y.astype(np.int64) % 10  # 10 is the digit 0.
  images = np.ascontiguousarray(np.asarray(x, np.uint8).transpose(3, 0, 1, 2))
  return images, labels


def read(name: str, files: list[pathlib.Path], split: str
         ) -> tuple[np.ndarray, np.ndarray]:
  """One split of `name` from the files `find` returned."""
  if name == 'cifar10':
    return read_cifar10(files[0], split)
  return read_svhn(files[0] if split == 'train' else files[1])
