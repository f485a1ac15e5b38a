r"""TFDS builder over the local MNIST / Fashion-MNIST IDX files.

TFDS's built-in `mnist` and `fashion_mnist` builders download from the web and
check the checksums of the original `.gz` archives, which the offline copies
fetched by `scripts/fetch_data.py` do not match (the IDX bytes are canonical,
the archives are not).  This builder reads the four uncompressed IDX files of
`<raw_dir>/<name>/` instead and writes an `array_record` copy that
`tfds.data_source` reads, without TensorFlow:

  builder = idx_images.prepare('mnist')  # Once; later calls are no-ops.
  train = tfds.data_source('idx_images/mnist', split='train',
                           data_dir=idx_images.DEFAULT_DATA_DIR)

Records keep the files' order (`disable_shuffling=True`), so record `i` of a
split is image `i` of its IDX file.
"""
import os
import pathlib
from typing import Iterator, Optional, Union

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

PathLike = Union[str, os.PathLike]

REPO_DIR = pathlib.Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_DIR / 'data' / 'tfds'  # Prepared TFDS copies.
DEFAULT_RAW_DIR = REPO_DIR / 'data' / 'raw'  # <raw_dir>/<name>/<IDX files>.
# How to get the IDX files; error messages quote it.
FETCH_COMMAND = '`bash scripts/setup.sh` (or `python scripts/fetch_data.py`)'

# Split name -> (images file, labels file), as published.
SPLIT_FILES = {
    'train': ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte'),
    'test': ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'),
}
CLASS_NAMES = {
    'mnist': tuple(str(i) for i in range(10)),
    # TFDS's `fashion_mnist` names, in label order.
    'fashion_mnist': ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
                      'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'),
}
IMAGE_SHAPE = (28, 28, 1)

# IDX type codes (third byte of the magic number) -> numpy dtype, big-endian.
_IDX_DTYPES = {
    0x08: np.dtype('u1'),
    0x09: np.dtype('i1'),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}


def read_idx(path: PathLike, ndim: Optional[int] = None) -> np.ndarray:
  """Reads one uncompressed IDX file into a numpy array.

  The format: two zero bytes, a type code, the number of dimensions, one
  big-endian uint32 per dimension, then the data in C order.

  Args:
    path: the file, e.g. `.../train-images-idx3-ubyte`.
    ndim: expected number of dimensions (3 for images, 1 for labels); None
      accepts any.

  Returns:
    The array, in native byte order.

  Raises:
    ValueError: the file is not a well-formed IDX file (bad magic number,
      unexpected number of dimensions, or a size that disagrees with the
      header).
  """
  data = pathlib.Path(path).read_bytes()
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f'{path} is not an IDX file: it must start with two zero '
                     f'bytes, got {data[:4]!r}. Re-fetch it with '
                     f'{FETCH_COMMAND}.')
  type_code, file_ndim = data[2], data[3]
  if type_code not in _IDX_DTYPES:
    raise ValueError(f'{path}: unknown IDX type code {type_code:#04x}; valid: '
                     f'{sorted(hex(c) for c in _IDX_DTYPES)}.')
  if ndim is not None and file_ndim != ndim:
    raise ValueError(f'{path}: expected an IDX file with {ndim} dimensions, '
                     f'the header says {file_ndim}.')
  header_size = 4 + 4 * file_ndim
  if len(data) < header_size:
    raise ValueError(f'{path}: truncated IDX header ({len(data)} bytes, '
                     f'{header_size} needed).')
  shape = tuple(
      int(d) for d in np.frombuffer(data, '>u4', file_ndim, offset=4))
  dtype = _IDX_DTYPES[type_code]
  expected = header_size + int(np.prod(shape)) * dtype.itemsize
  if len(data) != expected:
    raise ValueError(f'{path}: {len(data)} bytes, but an IDX file of shape '
                     f'{shape} and dtype {dtype} has {expected}; the file '
                     f'is truncated or corrupt. Re-fetch it with '
                     f'{FETCH_COMMAND}.')
  array = np.frombuffer(data, dtype, offset=header_size).reshape(shape)
  return array.astype(dtype.newbyteorder('='))


def read_split(directory: PathLike,
               split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split of an MNIST-format dataset from its IDX files.

  Args:
    directory: folder holding the four IDX files (`<raw_dir>/<name>`).
    split: 'train' or 'test'.

  Returns:
    images: [N, 28, 28, 1] uint8; labels: [N] int64.

  Raises:
    ValueError: unknown split, malformed files, or files that disagree.
  """
  if split not in SPLIT_FILES:
    raise ValueError(f'Unknown split {split!r}; valid: {list(SPLIT_FILES)}.')
  images_file, labels_file = (pathlib.Path(directory) / f
                              for f in SPLIT_FILES[split])
  images = read_idx(images_file, ndim=3)
  labels = read_idx(labels_file, ndim=1)
  if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE[:2]:
    raise ValueError(f'{images_file}: expected uint8 images of shape '
                     f'{IMAGE_SHAPE[:2]}, got {images.dtype} '
                     f'{images.shape[1:]}.')
  if len(images) != len(labels):
    raise ValueError(f'{images_file} holds {len(images)} images but '
                     f'{labels_file} holds {len(labels)} labels.')
  return images[..., None], labels.astype(np.int64)


def has_raw_files(directory: PathLike) -> bool:
  """Whether `directory` holds all four IDX files of an MNIST-format set."""
  directory = pathlib.Path(directory)
  return all((directory / f).is_file()
             for files in SPLIT_FILES.values() for f in files)


class IdxImages(tfds.core.GeneratorBasedBuilder):
  """MNIST-format datasets read from local, uncompressed IDX files."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name='mnist', description='MNIST handwritten digits.'),
      tfds.core.BuilderConfig(
          name='fashion_mnist',
          description='Fashion-MNIST (Zalando article images).'),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Pass DownloadConfig(manual_dir=<raw_dir>/<config name>) with the four '
      'uncompressed IDX files ({train,t10k}-{images-idx3,labels-idx1}-ubyte); '
      f'{FETCH_COMMAND} fetches them into data/raw/.')

  # TFDS looks beside `code_path` for a checksums file; this builder has none.
  # None also skips TFDS 4.9.10's `importlib_resources` import there, a
  # package it only declares for Python < 3.9.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.builder_config.description,
        features=tfds.features.FeaturesDict({
            # Tensor, not Image: Image needs TensorFlow to encode PNGs.
            'image': tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
            'label': tfds.features.ClassLabel(
                names=CLASS_NAMES[self.builder_config.name]),
        }),
        supervised_keys=('image', 'label'),
        # Record i of a split stays image i of its IDX file.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    directory = dl_manager.manual_dir
    if not has_raw_files(directory):
      raise FileNotFoundError(
          f'IDX files of {self.builder_config.name} not found in {directory}. '
          f'{self.MANUAL_DOWNLOAD_INSTRUCTIONS}')
    return {split: self._generate_examples(directory, split)
            for split in SPLIT_FILES}

  def _generate_examples(self, directory: PathLike,
                         split: str) -> Iterator[tuple[int, dict]]:
    images, labels = read_split(directory, split)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': image, 'label': int(label)}


def prepare(name: str,
            data_dir: Optional[PathLike] = None,
            raw_dir: Optional[PathLike] = None) -> tfds.core.DatasetBuilder:
  """Prepares `idx_images/<name>` as array_record (a no-op when done before).

  Args:
    name: 'mnist' or 'fashion_mnist'.
    data_dir: TFDS data_dir; None: `<repo>/data/tfds`.
    raw_dir: folder holding `<name>/` with the IDX files; None:
      `<repo>/data/raw`.

  Returns:
    The prepared builder (`builder.as_data_source(split)` reads it).

  Raises:
    ValueError: unknown name.
    FileNotFoundError: the IDX files are missing.
  """
  if name not in CLASS_NAMES:
    raise ValueError(f'idx_images has no config {name!r}; valid: '
                     f'{list(CLASS_NAMES)}.')
  data_dir = pathlib.Path(data_dir or DEFAULT_DATA_DIR)
  manual_dir = pathlib.Path(raw_dir or DEFAULT_RAW_DIR) / name
  builder = tfds.builder(f'idx_images/{name}', data_dir=data_dir,
                         file_format='array_record')
  if builder.is_prepared():
    return builder
  if not has_raw_files(manual_dir):
    raise FileNotFoundError(
        f'IDX files of {name} not found in {manual_dir}: run '
        f'{FETCH_COMMAND} to fetch them.')
  logging.info('Preparing idx_images/%s from %s into %s.', name, manual_dir,
               data_dir)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(
            manual_dir=str(manual_dir), try_download_gcs=False))
  except OSError:
    # Two processes preparing the same data_dir: TFDS writes to a temporary
    # folder and renames it, and the second rename fails. Use the winner's.
    builder = tfds.builder(f'idx_images/{name}', data_dir=data_dir,
                           file_format='array_record')
    if not builder.is_prepared():
      raise
  return builder
