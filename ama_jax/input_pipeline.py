r"""Datasets -> the paper's anomaly-detection splits, as numpy arrays.

The datasets are small enough to hold in memory (the paper's are at most 73k
images of 28x28 or 32x32), so each split is read whole into numpy (through
`tfds.data_source` where TFDS is the source) and the protocol splits are
built on the host with seeded generators.

Protocols (paper, "Experiments"; `configs/default.py` documents every field):

* `one_class`: `data.normal_classes` of `data.dataset` are normal, its other
  classes are anomalies. train: normal images of the train split less the
  validation normals; val: `num_val_normal` normals + `num_val_anomaly`
  anomalies from the train split; test: the whole test split.
* `ood`: every image of `data.dataset` is normal, `data.ood_dataset` supplies
  the anomalies: val anomalies from its train split, `num_test_anomaly` test
  anomalies drawn from its test split and added to the whole normal test split.

Semi-supervision (`semi_supervised_ratio`) adds labelled anomalies to train;
corruption (`corruption_ratio`) adds anomalies labelled normal. All anomalies
drawn for val, semi-supervision and corruption are distinct images.

Datasets (`data.dataset`, `data.ood_dataset`):

* `mnist`, `fashion_mnist`: the local IDX files (`ama_jax.datasets.
  idx_images`) when `bash scripts/setup.sh` fetched them, else TFDS.
* `cifar10`, `svhn_cropped`: a prepared TFDS copy in `data.data_dir`, else the
  published archives in `<data.raw_dir>/<name>/` (`ama_jax.datasets.
  archives`), else a TFDS download.
* any other TFDS image dataset by name (`tfds:NAME` or `NAME`): its image
  feature and (for one-class) its ClassLabel feature; class names from its
  `info`.
* `folder:PATH`: a folder of PNG/JPEG/BMP images
  (`ama_jax.datasets.image_folder` describes the layouts), decoded and
  brought to the model's shape once into a TFDS copy
  (`ama_jax.datasets.local_images`).
* `array:PATH[,labels=PATH]`: a `.npy` (memory-mapped) or `.npz` array of
  images, with optional labels (see `_ArraySource`).

A dataset without a test split of its own (a folder without `test/`, an
array without test arrays, a TFDS dataset without a `test` split) gets a
deterministic, class-stratified test hold-out of `data.test_fraction` of its
images, drawn from the seed.

Nothing is downloaded when the data is not there and cannot be had: a TFDS
download is attempted only with `data.download` on and after its hosts
answered within `DOWNLOAD_TIMEOUT_S`; otherwise a `DataUnavailableError`
says, within seconds, where to put the files.

Images of every source are brought to one shape (H, W, C) by
`data.image_size`, `data.channels` and `data.resize`
(`ama_jax.datasets.image_files.fit`); without them, sources whose shapes
differ from each other or from the model's input (`input_size`) are an
error that names these fields. A validation split without anomalies is
allowed (a folder of normal images only): model selection then keeps the
last state (`scoring.model_selection`).
"""
import concurrent.futures
import dataclasses
import functools
import os
import pathlib
import re
import socket
import urllib.parse
from typing import Any, Optional, Sequence, Union

from absl import logging
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from ama_jax import errors
from ama_jax.datasets import archives
from ama_jax.datasets import idx_images
from ama_jax.datasets import image_files
from ama_jax.datasets import image_folder
from ama_jax.datasets import local_images

# Built-in TFDS names -> class names in label order.
DATASETS: dict[str, tuple[str, ...]] = {
    'mnist': idx_images.CLASS_NAMES['mnist'],
    'fashion_mnist': idx_images.CLASS_NAMES['fashion_mnist'],
    'cifar10': archives.CIFAR10_CLASSES,
    'svhn_cropped': archives.SVHN_CLASSES,
}
_NATIVE_SHAPES = {'mnist': (28, 28, 1), 'fashion_mnist': (28, 28, 1),
                  'cifar10': (32, 32, 3), 'svhn_cropped': (32, 32, 3)}
# Extra accepted spellings, compared after `_canonical`.
_CLASS_ALIASES = {
    'fashion_mnist': {'tshirt': 0, 'top': 0, 'boot': 9},
    'cifar10': {'plane': 0, 'aeroplane': 0, 'car': 1},
}
PROTOCOLS = ('one_class', 'ood')
SPLITS = ('train', 'test')
RESIZE_METHODS = image_files.RESIZE_METHODS
NORMAL_SOURCE, ANOMALY_SOURCE = 0, 1
FETCH_COMMAND = idx_images.FETCH_COMMAND
DOWNLOAD_TIMEOUT_S = 3.0  # Per host: name lookup, then a TCP connection.
SPEC_PREFIXES = ('folder:', 'array:', 'tfds:')
# Independent random streams, one per purpose, so that e.g. changing a ratio
# leaves the validation split unchanged. Append new purposes at the end.
_PURPOSES = ('val', 'anomalies', 'max_train', 'test_anomalies', 'max_test',
             'holdout_normal', 'holdout_anomaly')
_ALL = image_folder.ALL  # The split of a source without train/test splits.


class DataError(errors.DataError):
  """A dataset cannot be found, read or split as the config asks.

  The message names the field or file, the problem and the fix. An
  `errors.DataError` (a UserError and a ValueError): the command-line
  programs print it as one line.
  """


class DataUnavailableError(DataError, FileNotFoundError):
  """A dataset is neither on disk nor obtainable (no network, no download)."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a protocol; row i of every array describes image i.

  Attributes:
    images: [N, H, W, C] float32 in [-1, 1].
    labels: [N] int32: 0 normal, 1 anomaly -- what training/metrics see.
    is_anomaly: [N] bool ground truth (differs from labels only for
      corruption).
    classes: [N] int32 source class label in its own dataset.
    sources: [N] int32: 0 = normal dataset, 1 = anomaly dataset (OOD).
    indices: [N] int64 index of the image in its source split (train and
      val index the `train` split, test the `test` split; for a dataset
      with a test hold-out, both index all of its images, e.g. the files of
      a folder in order).
  """
  images: np.ndarray
  labels: np.ndarray
  is_anomaly: np.ndarray
  classes: np.ndarray
  sources: np.ndarray
  indices: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class ProtocolData:
  """The train, validation and test splits of one experiment.

  Attributes:
    train: training rows, grouped (normals, labelled anomalies, corrupting
      anomalies): shuffle before batching.
    val: validation rows (normals, then anomalies).
    test: test rows, in source order (normal dataset first for OOD).
    counts: {'train'|'val'|'test': {'total', 'normal', 'anomaly',
      'corrupted'}} as ints; `corrupted` = anomalies labelled normal.
    image_shape: (H, W, C) of every image.
  """
  train: Split
  val: Split
  test: Split
  counts: dict[str, dict[str, int]]
  image_shape: tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class _Rows:
  """Which images a split holds and their labels, before reading pixels."""
  sources: np.ndarray
  indices: np.ndarray
  labels: np.ndarray
  is_anomaly: np.ndarray

  @classmethod
  def make(cls, source: int, indices: np.ndarray, labels: Any,
           is_anomaly: Any) -> '_Rows':
    n = len(indices)
    return cls(np.full(n, source, np.int32), np.asarray(indices, np.int64),
               np.broadcast_to(labels, n).astype(np.int32),
               np.broadcast_to(is_anomaly, n).astype(bool))

  @classmethod
  def concat(cls, parts: Sequence['_Rows']) -> '_Rows':
    return cls(*(np.concatenate([getattr(p, f.name) for p in parts])
                 for f in dataclasses.fields(cls)))

  def take(self, keep: np.ndarray) -> '_Rows':
    return _Rows(*(getattr(self, f.name)[keep]
                   for f in dataclasses.fields(self)))


# --- Names and checks. ---


def _check_dataset(name: Any, field: str = 'data.dataset') -> str:
  """A built-in dataset name (for `class_index` and `load_raw`)."""
  if name not in DATASETS:
    raise DataError(f'Unknown dataset {field}={name!r}; built-in names: '
                    f'{", ".join(DATASETS)}.')
  return name


def _canonical(name: str) -> str:
  return re.sub(r'[^a-z0-9]', '', str(name).lower())


def _class_index(names: Sequence[str], value: Union[int, str], what: str,
                 aliases: Optional[dict[str, int]] = None,
                 by_name_first: bool = False) -> int:
  """A class given by index or (case-insensitive) name -> its index.

  `by_name_first`: an integer that is also a class name (a folder `3/`)
  means that class, not the index.
  """
  lookup = {_canonical(n): i for i, n in enumerate(names)}
  lookup.update(aliases or {})
  valid = (f'valid names: {list(names)} (or indices 0..{len(names) - 1})'
           if names else 'it has no classes')
  is_int = isinstance(value, (int, np.integer)) and not isinstance(value,
                                                                    bool)
  if by_name_first and (is_int or isinstance(value, str)):
    key = _canonical(str(int(value)) if is_int else value)
    if key in lookup:
      return lookup[key]
  if is_int:
    index = int(value)
  elif isinstance(value, str) and value.strip().isdigit():
    index = int(value)
  elif isinstance(value, str):
    if _canonical(value) not in lookup:
      raise DataError(f'Unknown class {value!r} of {what}; {valid}.')
    return lookup[_canonical(value)]
  else:
    raise DataError(f'A class of {what} must be an index or a name, got '
                    f'{value!r}.')
  if not 0 <= index < len(names):
    raise DataError(f'Class index {index} is out of range for {what}: '
                    f'{valid}.')
  return index


def class_index(dataset: str, value: Union[int, str]) -> int:
  """Resolves a class of a built-in dataset given by index or name.

  Args:
    dataset: a built-in name, e.g. 'fashion_mnist'.
    value: an index (int or digit string) or a class name such as 'Trouser',
      't-shirt' or 'airplane'.

  Returns:
    The class index in [0, num_classes).

  Raises:
    DataError (a ValueError): unknown dataset, or a class out of range / not
      found.
  """
  names = DATASETS[_check_dataset(dataset)]
  return _class_index(names, value, dataset, _CLASS_ALIASES.get(dataset))


def _check_ratio(data_config: ml_collections.ConfigDict, field: str,
                 low_open: bool = False) -> float:
  value = data_config.get(field) or 0.0
  if (not isinstance(value, (int, float, np.number)) or isinstance(value, bool)
      or not 0.0 <= value < 1.0 or (low_open and value == 0.0)):
    interval = '(0, 1)' if low_open else '[0, 1)'
    raise DataError(f'data.{field}={value!r} must be in {interval}.')
  return float(value)


def _check_count(data_config: ml_collections.ConfigDict, field: str,
                 optional: bool = False, minimum: int = 0) -> Optional[int]:
  value = data_config.get(field)
  if value is None and optional:
    return None
  if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
      or value < minimum):
    raise DataError(f'data.{field}={value!r} must be an integer >= '
                    f'{minimum}{" or None" if optional else ""}.')
  return int(value)


def _shape_str(shape: Sequence[Any]) -> str:
  return 'x'.join('?' if d is None else str(int(d)) for d in shape)


# --- Conversion settings: data.image_size, data.channels, data.resize. ---


Conversion = image_files.Conversion


def conversion(data_config: Any) -> Conversion:
  """`image_files.conversion` of `config.data`, errors as DataError."""
  try:
    return image_files.conversion(data_config)
  except image_files.ImageError as e:
    raise DataError(str(e)) from e


def _fit_all(images: Union[np.ndarray, Sequence[np.ndarray]],
             shape: tuple[int, int, int], resize: str, what: str
             ) -> np.ndarray:
  """uint8 images (an array or a list of any shapes) -> [N, *shape]."""
  if isinstance(images, np.ndarray) and images.shape[1:] == shape:
    return images
  out = np.empty((len(images), *shape), np.uint8)
  for i, image in enumerate(images):
    try:
      out[i] = image_files.fit(np.asarray(image, np.uint8), shape, resize,
                               what=f'{what} image {i}')
    except image_files.ImageError as e:
      raise DataError(str(e)) from e
  return out


# --- Download check. ---


def _proxy_host() -> Optional[tuple[str, int]]:
  for name in ('https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY',
               'http_proxy', 'HTTP_PROXY'):
    value = os.environ.get(name)
    if value:
      parsed = urllib.parse.urlparse(value if '//' in value else
                                     f'http://{value}')
      if parsed.hostname:
        return parsed.hostname, parsed.port or 80
  return None


def _connect(host: str, port: int, timeout: float) -> None:
  """Name lookup and a TCP connection, or OSError."""
  with socket.create_connection((host, port), timeout=timeout):
    pass


def unreachable(urls: Sequence[str],
                timeout: float = DOWNLOAD_TIMEOUT_S) -> Optional[str]:
  """Why the hosts of `urls` cannot be reached (None when they all can).

  Through the proxy of the environment (https_proxy, ...) when one is set.
  Each host gets `timeout` seconds for its name lookup and connection
  together, so a machine without network answers within seconds, where
  TFDS's own download would retry for minutes.
  """
  targets = set()
  proxy = _proxy_host()
  for url in urls:
    parsed = urllib.parse.urlparse(url)
    if parsed.hostname:
      targets.add(proxy or (parsed.hostname,
                            parsed.port or (443 if parsed.scheme == 'https'
                                            else 80)))
  pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1,
                                                               len(targets)))
  try:
    futures = {target: pool.submit(_connect, *target, timeout)
               for target in sorted(targets)}
    for (host, port), future in futures.items():
      try:
        future.result(timeout=timeout + 0.5)
      except concurrent.futures.TimeoutError:
        return f'{host}:{port} did not answer within {timeout:g} s'
      except OSError as e:
        return f'{host}:{port} is unreachable ({e.strerror or e})'
  finally:
    pool.shutdown(wait=False, cancel_futures=True)
  return None


# --- Sources: where the images of data.dataset / data.ood_dataset come from.


@dataclasses.dataclass
class _Source:
  """A resolved dataset: its classes, shapes and a reader per split.

  Subclasses set the fields and implement `shapes` and `_read`.
  """
  field: str  # 'data.dataset' or 'data.ood_dataset'.
  spec: str  # The field's value.
  name: str  # For messages and logs.
  class_names: tuple[str, ...]  # () when the images carry no labels.
  splits: tuple[str, ...]  # ('train', 'test'), or (_ALL,) for a hold-out.

  aliases: Optional[dict[str, int]] = None
  by_name_first = False  # Class folders named by digits win over indices.

  def shapes(self, conv: Conversion) -> dict[tuple, int]:
    """Native (H, W, C) -> count; None entries: unknown (may vary)."""
    raise NotImplementedError

  def check_available(self) -> None:
    """Raises DataUnavailableError, within seconds, if it cannot be read."""

  def read(self, split: str, shape: tuple[int, int, int], conv: Conversion
           ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, *shape] images and int64 [N] classes of one split."""
    images, labels = self._read(split, shape, conv)
    if len(images) != len(labels):
      raise DataError(f'{self.name}/{split}: {len(images)} images but '
                      f'{len(labels)} labels.')
    return _fit_all(images, shape, conv.resize, f'{self.name}/{split}'), \
        np.asarray(labels, np.int64)

  def _read(self, split, shape, conv):
    raise NotImplementedError

  def class_index(self, value: Union[int, str]) -> int:
    try:
      return _class_index(self.class_names, value, self.name, self.aliases,
                          self.by_name_first)
    except DataError as e:
      if not isinstance(self, _FolderSource):
        raise
      raise DataError(f'{e} Name the normal class folder(s) in '
                      'data.normal_classes (configs/folder.py:<class>).'
                      ) from e


def _data_dir(data_config) -> pathlib.Path:
  return pathlib.Path(data_config.get('data_dir')
                      or idx_images.DEFAULT_DATA_DIR).expanduser()


def _raw_dir(data_config) -> pathlib.Path:
  return pathlib.Path(data_config.get('raw_dir')
                      or idx_images.DEFAULT_RAW_DIR).expanduser()


def _materialize(source: Sequence[Any], what: str, image_key: str = 'image',
                 label_key: Optional[str] = 'label'
                 ) -> tuple[Union[np.ndarray, list], np.ndarray]:
  """Every record of a data source: (uint8 images, int64 labels).

  Images come back as one array when they share a shape, else as a list.
  """
  # The length comes from the source itself, never from `info.splits`
  # (empty under `tfds.testing.mock_data`).
  keys = list(range(len(source)))
  if not keys:
    raise DataError(f'{what} is empty.')
  try:
    examples = source.__getitems__(keys)  # One batched read: ~1-2 s for 60k.
  except TypeError:  # `tfds.testing.mock_data` leaves it unbound.
    examples = [source[i] for i in keys]
  return _stack_examples(examples, image_key, label_key)


def _stack_examples(examples, image_key: str, label_key: Optional[str]
                    ) -> tuple[Union[np.ndarray, list], np.ndarray]:
  images, labels = [], []
  for ex in examples:
    image = np.asarray(ex[image_key], np.uint8)
    images.append(image[..., None] if image.ndim == 2 else image)
    # Labels are ints, or 0-d arrays under mock_data.
    labels.append(int(ex[label_key]) if label_key else 0)
  if len({im.shape for im in images}) == 1:
    images = np.stack(images)
  return images, np.asarray(labels, np.int64)


def load_raw(name: str, split: str, data_config: ml_collections.ConfigDict
             ) -> tuple[np.ndarray, np.ndarray]:
  """Reads one whole split of a built-in dataset into numpy.

  Args:
    name: 'mnist', 'fashion_mnist', 'cifar10' or 'svhn_cropped'.
    split: 'train' or 'test'.
    data_config: `config.data`; uses `data_dir` (TFDS data_dir, None:
      `<repo>/data/tfds`), `raw_dir` (offline IDX files and archives, None:
      `<repo>/data/raw`) and `download`.

  Returns:
    images: [N, H, W, C] uint8; labels: [N] int64 class labels, in order.

  Raises:
    DataError: unknown dataset or split.
    DataUnavailableError: (also a DataError) no local copy, and TFDS may not
      or cannot download it.
  """
  _check_dataset(name, 'name')
  if split not in SPLITS:
    raise DataError(f'Unknown split {split!r}; valid: {list(SPLITS)}.')
  source = _TfdsSource.open(name, data_config, 'data.dataset')
  images, labels = source.read_native(split)
  logging.info('%s/%s: %d images of shape %s.', name, split, len(images),
               images.shape[1:])
  return images, labels


@dataclasses.dataclass
class _TfdsSource(_Source):
  """A TFDS dataset: built-in names (with their offline copies) or any."""
  tfds_name: str = ''
  data_config: Any = dataclasses.field(default=None, repr=False)
  origin: str = ''  # 'idx', 'prepared', 'archive' or 'download'.
  builder: Any = None
  image_key: str = 'image'
  label_key: Optional[str] = 'label'
  feature_shape: tuple = ()
  archive_files: Optional[list] = None
  features: str = ''  # 'image: Image(...), label: ClassLabel(...)'.

  @classmethod
  def open(cls, name: str, data_config, field: str) -> '_TfdsSource':
    """Finds the dataset and where it will come from, without reading it.

    Raises:
      DataError: not a TFDS dataset, or no usable image/label feature.
      DataUnavailableError: no local copy and no download possible.
    """
    data_dir, raw_dir = _data_dir(data_config), _raw_dir(data_config)
    common = dict(field=field, spec=name, name=name,
                  splits=SPLITS, tfds_name=name, data_config=data_config,
                  aliases=_CLASS_ALIASES.get(name))
    if name in idx_images.CLASS_NAMES and idx_images.has_raw_files(
        raw_dir / name):
      return cls(class_names=DATASETS[name], origin='idx',
                 feature_shape=_NATIVE_SHAPES[name], **common)
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise DataError(
          f'Unknown dataset {field}={name!r}: not a built-in dataset '
          f'({", ".join(DATASETS)}), not a TFDS dataset and not an '
          'existing path. Give folder:PATH (a folder of images), '
          'array:PATH (.npy/.npz) or a TFDS name (tfds.list_builders()).'
      ) from e
    except Exception as e:  # Bad versions, configs or data_dir contents.
      raise DataError(f'{field}={name!r}: TFDS cannot open it '
                      f'({type(e).__name__}: '
                      f'{str(e).strip().splitlines()[0]}).') from e
    image_key, label_key, shape, class_names, listed = _tfds_features(
        builder, name, field)
    common.update(image_key=image_key, label_key=label_key, features=listed,
                  feature_shape=_NATIVE_SHAPES.get(name, shape),
                  # Built-ins keep their names (and aliases) whatever the
                  # copy's metadata says.
                  class_names=DATASETS.get(name, class_names))
    if builder.is_prepared():
      splits = tuple(builder.info.splits.keys())
      if 'train' not in splits:
        raise DataError(f'{name} in {data_dir} has no train split (splits: '
                        f'{list(splits)}).')
      common['splits'] = SPLITS if 'test' in splits else (_ALL,)
      return cls(origin='prepared', builder=builder, **common)
    if name in archives.FILES:
      files = archives.find(name, raw_dir / name)
      if files:
        return cls(origin='archive', archive_files=files, **common)
    return cls(origin='download', builder=builder, **common)

  def check_available(self) -> None:
    """Fails fast when the data would have to be downloaded and cannot."""
    if self.origin != 'download':
      return
    name, data_dir = self.tfds_name, _data_dir(self.data_config)
    raw_dir = _raw_dir(self.data_config)
    if not self.data_config.get('download', True):
      raise DataUnavailableError(
          f'{name} is not available offline and data.download is off: '
          f'{_offline_hint(name, data_dir, raw_dir)}')
    urls = list((getattr(self.builder, 'url_infos', None) or {}).keys())
    problem = unreachable(urls) if urls else None
    if problem:
      raise DataUnavailableError(
          f'{name} is not available offline and cannot be downloaded '
          f'({problem}): {_offline_hint(name, data_dir, raw_dir)}')

  def shapes(self, conv: Conversion) -> dict[tuple, int]:
    return {tuple(self.feature_shape): None}

  def read_native(self, split: str) -> tuple[Any, np.ndarray]:
    """One split in its own shapes: (uint8 images, int64 labels)."""
    name, data_dir = self.tfds_name, _data_dir(self.data_config)
    what = f'{name}/{split}'
    if self.origin == 'idx':
      raw_dir = _raw_dir(self.data_config)
      logging.info('%s: local IDX copy from %s, prepared in %s.', what,
                   raw_dir / name, data_dir)
      try:
        idx_images.prepare(name, data_dir=data_dir, raw_dir=raw_dir)
      except (OSError, ValueError) as e:
        raise DataUnavailableError(
            f'Cannot prepare {name} from {raw_dir / name}: '
            f'{str(e).splitlines()[0]} Re-fetch with {FETCH_COMMAND}.') from e
      source = tfds.data_source(f'idx_images/{name}', split=split,
                                data_dir=data_dir, download=False)
      return _materialize(source, what)
    if self.origin == 'archive':
      return self._read_archive(split)
    if self.origin == 'download':
      self.check_available()
      self._download()
    return self._read_builder(split)

  def _read(self, split, shape, conv):
    if self.tfds_name in DATASETS:  # Through `load_raw`, its public reader.
      return load_raw(self.tfds_name, split, self.data_config)
    return self.read_native(split)

  def _read_archive(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    name, files = self.tfds_name, self.archive_files
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = image_folder.hashlib.sha256(repr(stats).encode()).hexdigest()[:16]
    logging.info('%s/%s: archive %s, prepared in %s.', name, split,
                 ', '.join(f.name for f in files), _data_dir(self.data_config))

    def examples(s):
      try:
        images, labels = archives.read(name, files, s)
      except archives.ArchiveError as e:
        raise DataError(str(e)) from e
      yield from zip(images, labels.tolist())

    config = local_images.LocalConfig(
        name=f'{name}-{key}', image_shape=_NATIVE_SHAPES[name],
        class_names=DATASETS[name], splits=SPLITS, examples=examples,
        description=f'{name} from {files[0].parent}')
    builder = local_images.prepare(config, _data_dir(self.data_config))
    return local_images.read_split(builder, split)

  def _download(self) -> None:
    data_dir = _data_dir(self.data_config)
    logging.info('%s: downloading with TFDS into %s.', self.tfds_name,
                 data_dir)
    try:
      builder = tfds.builder(self.tfds_name, data_dir=data_dir,
                             file_format='array_record')
      # Build from the original sources: the prepared GCS copies are
      # tfrecord, which `tfds.data_source` cannot read.
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except Exception as e:  # Network, TensorFlow or checksum failures.
      hint = _offline_hint(self.tfds_name, data_dir,
                           _raw_dir(self.data_config))
      raise DataUnavailableError(
          f'Could not load {self.tfds_name}: TFDS failed to download or '
          f'prepare it into {data_dir} ({type(e).__name__}: '
          f'{str(e).strip()[:300]}). {hint}') from e
    self.builder = builder

  def _read_builder(self, split: str) -> tuple[Any, np.ndarray]:
    builder = self.builder or tfds.builder(
        self.tfds_name, data_dir=_data_dir(self.data_config),
        file_format='array_record')
    what = f'{self.tfds_name}/{split}'
    tfds_split = 'train' if split == _ALL else split
    if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD or (
        not builder.is_prepared()):  # Not prepared: mock_data.
      source = builder.as_data_source(tfds_split)
      return _materialize(source, what, self.image_key, self.label_key)
    # A copy prepared by `tfds.load` (tfrecord): read through TensorFlow.
    try:
      dataset = builder.as_dataset(split=tfds_split, shuffle_files=False)
      examples = list(tfds.as_numpy(dataset))
    except Exception as e:
      raise DataError(f'Cannot read {what} from {builder.data_dir} '
                      f'({builder.info.file_format.value} files; '
                      f'{type(e).__name__}: {e}).') from e
    if not examples:
      raise DataError(f'{what} is empty.')
    return _stack_examples(examples, self.image_key, self.label_key)


def _tfds_features(builder, name: str, field: str
                   ) -> tuple[str, Optional[str], tuple, tuple[str, ...],
                              str]:
  """(image key, label key or None, image shape, class names, listing)."""
  features = builder.info.features
  items = dict(features.items()) if hasattr(features, 'items') else {}

  def is_image(feature) -> bool:
    shape = tuple(getattr(feature, 'shape', ()) or ())
    dtype = getattr(feature, 'np_dtype', None)
    return (isinstance(feature, (tfds.features.Image, tfds.features.Tensor))
            and len(shape) in (2, 3) and dtype == np.uint8 and (
                len(shape) == 2 or shape[2] in (1, 3, None)))

  images = [k for k, f in items.items() if is_image(f)]
  labels = [k for k, f in items.items()
            if isinstance(f, tfds.features.ClassLabel)]
  listed = ', '.join(
      f'{k}: {type(f).__name__}{tuple(getattr(f, "shape", ()))}'
      for k, f in items.items())
  if not images:
    raise DataError(
        f'{field}={name!r} has no image feature (uint8 [H, W] or [H, W, 1 or '
        f'3]); its features: {listed or "none"}. Only image datasets can be '
        'used.')
  image_key = 'image' if 'image' in images else images[0]
  if len(images) > 1 and 'image' not in images:
    raise DataError(f'{field}={name!r} has several image features '
                    f'({images}) and none is called "image".')
  label_key = 'label' if 'label' in labels else (
      labels[0] if len(labels) == 1 else None)
  shape = tuple(items[image_key].shape)
  if len(shape) == 2:
    shape += (1,)
  names = tuple(items[label_key].names) if label_key else ()
  return image_key, label_key, shape, names, listed


def _offline_hint(name: str, data_dir: pathlib.Path,
                  raw_dir: pathlib.Path) -> str:
  """Where to put the data of `name`, as one sentence."""
  if name in idx_images.CLASS_NAMES:
    return (f'the IDX files of {name} are missing from {raw_dir / name}: run '
            f'{FETCH_COMMAND} to fetch them, or set data.data_dir to a TFDS '
            f'data_dir where {name} is prepared.')
  if name in archives.FILES:
    return (f'no prepared TFDS copy in {data_dir / name} and no archive in '
            f'{raw_dir / name}. Copy {" or ".join(archives.FILES[name][:2])}'
            f'{" (both)" if name == "svhn_cropped" else ""} into '
            f'{raw_dir / name}/ (or set data.raw_dir to the folder holding '
            f'{name}/), or set data.data_dir to a TFDS data_dir where {name} '
            'is prepared (README, "Your own data").')
  return (f'no prepared TFDS copy in {data_dir / name.split(":")[0]}; '
          f'prepare it with TFDS on a machine with network access and set '
          'data.data_dir to that data_dir, or give the images as '
          'folder:PATH or array:PATH.')


@dataclasses.dataclass
class _FolderSource(_Source):
  """A folder of image files (`image_folder`), prepared via `local_images`."""
  folder: Any = dataclasses.field(default=None, repr=False)
  data_config: Any = dataclasses.field(default=None, repr=False)
  names: dict = dataclasses.field(default_factory=dict, repr=False)
  by_name_first = True

  @classmethod
  def open(cls, path: str, data_config, field: str) -> '_FolderSource':
    try:
      folder = image_folder.scan(path)
    except image_folder.FolderError as e:
      raise DataError(f'{field}=folder:{path}: {e}') from e
    except OSError as e:
      raise DataError(f'{field}=folder:{path}: cannot list it ({e}).') from e
    splits = SPLITS if folder.has_test else (_ALL,)
    return cls(field=field, spec=f'folder:{path}', name=f'folder {path}',
               class_names=folder.class_names, splits=splits, folder=folder,
               data_config=data_config)

  def _name(self, conv: Conversion) -> str:
    """The prepared copy's name: a fingerprint of the files and `conv`."""
    key = (conv.image_size, conv.channels, conv.resize)
    if key not in self.names:  # Stats every file: once per run.
      self.names[key] = f'folder-{self.folder.fingerprint(*key)}'
    return self.names[key]

  def _config(self, conv: Conversion,
              shape: tuple[int, int, int]) -> local_images.LocalConfig:
    return local_images.LocalConfig(
        name=self._name(conv), image_shape=shape,
        class_names=self.folder.class_names or ('image',),
        splits=tuple(self.folder.files),
        examples=functools.partial(self._examples, shape=shape,
                                   resize=conv.resize),
        description=f'Images of {self.folder.root}')

  def _prepared(self, conv: Conversion):
    """A read-only builder of the copy prepared for `conv`, or None."""
    path = (_data_dir(self.data_config) / 'local_images' /
            self._name(conv) / str(local_images.LocalImages.VERSION))
    if not (path / 'dataset_info.json').is_file():
      return None
    return tfds.builder_from_directory(path)

  def shapes(self, conv: Conversion) -> dict[tuple, int]:
    builder = self._prepared(conv)
    if builder is not None:  # Its images have the shape it was made with.
      n = sum(len(f) for f in self.folder.files.values())
      return {tuple(builder.info.features['image'].shape): n}
    if conv.image_size is not None and conv.channels is not None:
      return {}  # Any shape converts.
    paths = [p for files in self.folder.files.values() for p in files]
    try:
      return image_folder.native_shapes(paths)
    except image_files.ImageError as e:
      raise DataError(f'{self.field}={self.spec}: {e} Remove or replace the '
                      'file.') from e

  def _examples(self, split: str, shape: tuple[int, int, int], resize: str):
    for path, label in zip(self.folder.files[split],
                           self.folder.labels[split].tolist()):
      try:
        yield image_files.fit(image_files.read(path), shape, resize,
                              what=str(path)), label
      except image_files.ImageError as e:
        raise DataError(f'{self.field}={self.spec}: {e}') from e

  def _read(self, split, shape, conv):
    config = self._config(conv, shape)
    data_dir = _data_dir(self.data_config)
    builder = local_images.prepare(config, data_dir)
    stored = tuple(builder.info.features['image'].shape)
    if stored != tuple(shape):  # Cannot happen; guards the cache key.
      raise DataError(f'{data_dir}/local_images/{config.name} holds '
                      f'{stored} images, expected {shape}; delete it.')
    logging.info('%s (%s split, %s layout): prepared in %s.', self.name,
                 split, self.folder.layout, builder.data_dir)
    return local_images.read_split(builder, split)


@dataclasses.dataclass
class _ArraySource(_Source):
  """A `.npy` or `.npz` array of images, with optional labels.

  `array:IMAGES.npy[,labels=LABELS.npy]`: images [N, H, W] or [N, H, W, C]
  (C = 1 or 3), memory-mapped; labels [N] integers (class = value) or
  strings (classes sorted). `array:DATA.npz`: images under `images`, `x`,
  `x_train` or `train_images`, labels under `labels`, `y`, `y_train` or
  `train_labels`; a test split of its own under `x_test`/`test_images`
  (+ `y_test`/`test_labels`). Pixels: integers 0..255, or floats in
  [-1, 1] (rounded to 8 bits, as the model's inputs are).
  """
  arrays: dict = dataclasses.field(default_factory=dict)  # split -> (x, y).

  _IMAGE_KEYS = ('images', 'x', 'x_train', 'train_images')
  _LABEL_KEYS = ('labels', 'y', 'y_train', 'train_labels')
  _TEST_IMAGE_KEYS = ('x_test', 'test_images')
  _TEST_LABEL_KEYS = ('y_test', 'test_labels')

  @classmethod
  def open(cls, spec: str, field: str) -> '_ArraySource':
    path, _, options = spec.partition(',')
    labels_path = None
    if options:
      key, _, value = options.partition('=')
      if key.strip() != 'labels' or not value:
        raise DataError(f'{field}=array:{spec}: expected '
                        'array:IMAGES.npy[,labels=LABELS.npy].')
      labels_path = pathlib.Path(value.strip()).expanduser()
    path = pathlib.Path(path).expanduser()
    where = f'{field}=array:{spec}'
    if not path.is_file():
      raise DataError(f'{where}: {path} does not exist.')
    if path.suffix.lower() not in ('.npy', '.npz'):
      raise DataError(f'{where}: expected a .npy or .npz file.')
    try:
      if path.suffix.lower() == '.npy':
        arrays = {_ALL: (np.load(path, mmap_mode='r', allow_pickle=False),
                         None if labels_path is None else
                         np.load(labels_path, allow_pickle=False))}
      else:
        arrays = cls._from_npz(path, where)
    except (OSError, ValueError, EOFError) as e:
      raise DataError(f'{where}: cannot read it ({e}).') from e
    labels = [y for _, y in arrays.values() if y is not None]
    if labels and len(labels) != len(arrays):
      raise DataError(f'{where}: labels for some splits only.')
    class_names: tuple[str, ...] = ()
    if labels:
      values = np.concatenate([np.asarray(y).reshape(-1) for y in labels])
      if values.dtype.kind in 'iu':
        if values.min() < 0:
          raise DataError(f'{where}: integer labels must be >= 0, got '
                          f'{values.min()}.')
        class_names = tuple(str(i) for i in range(int(values.max()) + 1))
      elif values.dtype.kind == 'U':
        class_names = tuple(sorted(set(values.tolist())))
      else:
        raise DataError(f'{where}: labels must be integers or strings, got '
                        f'{values.dtype}.')
      arrays = {s: (x, cls._label_indices(y, class_names))
                for s, (x, y) in arrays.items()}
    for split, (x, y) in arrays.items():
      cls._check(x, y, f'{where} ({split})')
    return cls(field=field, spec=f'array:{spec}', name=f'array {path.name}',
               class_names=class_names, splits=tuple(arrays), arrays=arrays)

  @classmethod
  def _from_npz(cls, path: pathlib.Path, where: str) -> dict:
    with np.load(path, allow_pickle=False) as npz:
      keys = list(npz.files)
      pick = lambda names: next((k for k in names if k in keys), None)
      image_key = pick(cls._IMAGE_KEYS) or (keys[0] if len(keys) == 1
                                            else None)
      if image_key is None:
        raise DataError(f'{where}: no images; expected one of '
                        f'{list(cls._IMAGE_KEYS)} among its arrays {keys}.')
      label_key = pick(cls._LABEL_KEYS)
      test_key, test_label_key = pick(cls._TEST_IMAGE_KEYS), pick(
          cls._TEST_LABEL_KEYS)
      read = lambda k: None if k is None else npz[k]
      if test_key is None:
        return {_ALL: (read(image_key), read(label_key))}
      return {'train': (read(image_key), read(label_key)),
              'test': (read(test_key), read(test_label_key))}

  @staticmethod
  def _label_indices(y, class_names) -> Optional[np.ndarray]:
    if y is None:
      return None
    y = np.asarray(y).reshape(-1)
    if y.dtype.kind == 'U':
      index = {n: i for i, n in enumerate(class_names)}
      return np.asarray([index[v] for v in y.tolist()], np.int64)
    return y.astype(np.int64)

  @staticmethod
  def _check(x: np.ndarray, y: Optional[np.ndarray], where: str) -> None:
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
      raise DataError(f'{where}: expected images [N, H, W] or [N, H, W, C] '
                      f'with C = 1 or 3, got shape {x.shape}.')
    if not len(x):
      raise DataError(f'{where} holds no images.')
    if y is not None and len(y) != len(x):
      raise DataError(f'{where}: {len(x)} images but {len(y)} labels.')
    if x.dtype == np.bool_ or x.dtype.kind not in 'iuf':
      raise DataError(f'{where}: unsupported dtype {x.dtype}; give uint8 '
                      'pixels (0..255) or floats in [-1, 1].')

  def shapes(self, conv: Conversion) -> dict[tuple, int]:
    out = {}
    for x, _ in self.arrays.values():
      shape = tuple(x.shape[1:]) + ((1,) if x.ndim == 3 else ())
      out[shape] = out.get(shape, 0) + len(x)
    return out

  def _read(self, split, shape, conv):
    x, y = self.arrays[split]
    what = f'{self.field}={self.spec} ({split})'
    pixels = to_uint8(x, what)
    if pixels.ndim == 3:
      pixels = pixels[..., None]
    return pixels, (np.zeros(len(x), np.int64) if y is None else y)


def to_uint8(x: np.ndarray, what: str, chunk: int = 10000) -> np.ndarray:
  """Image pixels -> uint8: integers 0..255 as they are, floats in [-1, 1]
  rounded ((x + 1) * 127.5). Read in chunks (memory-mapped input stays so).

  Raises:
    DataError: values outside those ranges, NaN or Inf.
  """
  if x.dtype == np.uint8:
    return np.asarray(x)
  out = np.empty(x.shape, np.uint8)
  warned = False
  for start in range(0, len(x), chunk):
    part = np.asarray(x[start:start + chunk])
    if part.dtype.kind == 'f':
      bad = ~np.isfinite(part).reshape(len(part), -1).all(1)
      if bad.any():
        raise DataError(f'{what}: NaN/Inf pixel values (first in image '
                        f'{start + int(np.flatnonzero(bad)[0])}).')
      lo, hi = float(part.min()), float(part.max())
      if lo < -1.0 or hi > 1.0:
        raise DataError(f'{what}: float pixels must be in [-1, 1], got '
                        f'[{lo:g}, {hi:g}]; give uint8 0..255 or rescale.')
      if lo >= 0.0 and not warned:
        logging.warning('%s: every pixel is >= 0; float input is read as '
                        '[-1, 1]. If these are [0, 1] images, pass 2 x - 1.',
                        what)
        warned = True
      out[start:start + chunk] = np.round((part + 1.0) * 127.5)
    else:
      lo, hi = int(part.min()), int(part.max())
      if lo < 0 or hi > 255:
        raise DataError(f'{what}: integer pixels must be in 0..255, got '
                        f'{lo}..{hi}.')
      out[start:start + chunk] = part
  return out


def open_source(spec: Any, data_config: ml_collections.ConfigDict,
                field: str = 'data.dataset') -> _Source:
  """Resolves `data.dataset` / `data.ood_dataset` to a source (no pixels
  read; a folder's files are listed, a TFDS builder's metadata read).

  Raises:
    DataError: unknown name, missing path, unusable folder/array/features.
    DataUnavailableError: a TFDS dataset with no local copy and no download.
  """
  if not isinstance(spec, str) or not spec.strip():
    raise DataError(f'{field}={spec!r} must name a dataset: a built-in name '
                    f'({", ".join(DATASETS)}), folder:PATH, array:PATH or a '
                    'TFDS name.')
  spec = spec.strip()
  if spec.startswith('folder:'):
    return _FolderSource.open(spec[len('folder:'):], data_config, field)
  if spec.startswith('array:'):
    return _ArraySource.open(spec[len('array:'):], field)
  if spec.startswith('tfds:'):
    return _TfdsSource.open(spec[len('tfds:'):], data_config, field)
  if spec not in DATASETS:
    path = pathlib.Path(spec.partition(',')[0]).expanduser()
    if path.is_dir():
      return _FolderSource.open(spec, data_config, field)
    if path.suffix.lower() in ('.npy', '.npz'):
      return _ArraySource.open(spec, field)
  return _TfdsSource.open(spec, data_config, field)


# --- Shapes. ---


def _target_shape(sources: Sequence[_Source], conv: Conversion,
                  input_size: Optional[Sequence[int]]
                  ) -> tuple[int, int, int]:
  """The one (H, W, C) every image is brought to, or a DataError."""
  shapes = {s.name: s.shapes(conv) for s in sources}
  fields = ('data.image_size (with data.resize: ' + '|'.join(RESIZE_METHODS)
            + ')')

  def common(axis: slice, what: str, field: str, suggestion: str):
    seen = {}  # value -> [(source name, count)]
    for name, counts in shapes.items():
      for shape, n in counts.items():
        value = tuple(shape[axis])
        seen.setdefault(value, []).append((name, n))
    unknown = [(n, v) for v, names in seen.items() if None in v
               for n, _ in names]
    if unknown:
      raise DataError(f'{unknown[0][0]} images have no fixed {what} (TFDS '
                      f'shape {_shape_str(unknown[0][1])}); set {field} '
                      f'(e.g. {suggestion}).')
    if len(seen) > 1:
      def where(names):
        return ', '.join(f'{n} ({c} images)' if c else n for n, c in names)
      listed = '; '.join(
          f'{_shape_str(v)} in {where(names)}'
          for v, names in sorted(seen.items(), key=lambda kv: -sum(
              c or 0 for _, c in kv[1]))[:3])
      raise DataError(f'Images differ in {what}: {listed}; set {field} '
                      f'(e.g. {suggestion}) to convert them explicitly.')
    return next(iter(seen))

  if conv.image_size is not None:
    size = conv.image_size
  else:
    size = common(slice(0, 2), 'size (HxW)', fields,
                  f'data.image_size={input_size[0] if input_size else 28}')
  if conv.channels is not None:
    channels = conv.channels
  else:
    channels = common(slice(2, 3), 'channels', 'data.channels',
                      'data.channels=1 for grey, 3 for RGB')[0]
  if input_size is not None and tuple(size) != tuple(input_size):
    h, w = input_size
    how = (f'data.image_size={conv.image_size[0]} is' if conv.image_size
           else f'the images are {_shape_str(size)} (HxW), which is')
    raise DataError(
        f'{how} not the model\'s input size {h}x{w} (model.arch); set '
        f'data.image_size={h} (data.resize={conv.resize!r} of '
        f'{list(RESIZE_METHODS)}) or choose the model.arch for '
        f'{_shape_str(size)} images.')
  return (int(size[0]), int(size[1]), int(channels))


# --- Sampling. ---


def _subsample(rng: np.random.Generator, pool: np.ndarray, n: int
               ) -> np.ndarray:
  """n distinct elements of pool, in pool order."""
  return np.sort(rng.choice(pool, size=n, replace=False))


def _cap_test(rows: _Rows, max_test: Optional[int],
              rng: np.random.Generator) -> _Rows:
  """Keeps max_test rows, both labels present, label ratio about kept."""
  if max_test is None or len(rows.labels) <= max_test:
    return rows
  anomalies = np.flatnonzero(rows.labels == 1)
  normals = np.flatnonzero(rows.labels == 0)
  n_anomalies = round(max_test * len(anomalies) / len(rows.labels))
  n_anomalies = min(max(n_anomalies, min(1, len(anomalies))), len(anomalies),
                    max_test - min(1, len(normals)))
  keep = np.concatenate([_subsample(rng, anomalies, n_anomalies),
                         _subsample(rng, normals, max_test - n_anomalies)])
  return rows.take(np.sort(keep))


def _hold_out(classes: np.ndarray, fraction: float,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """(train rows, test rows): `fraction` of each class held out for test."""
  test = []
  for c in np.unique(classes):
    rows = np.flatnonzero(classes == c)
    n = int(round(fraction * len(rows)))
    test.append(rng.permutation(rows)[:n])
  test = np.sort(np.concatenate(test)) if test else np.zeros(0, np.int64)
  train = np.setdiff1d(np.arange(len(classes)), test)
  return train, test


def _count(split: Split) -> dict[str, int]:
  corrupted = split.is_anomaly & (split.labels == 0)
  return {'total': len(split), 'normal': int((~split.is_anomaly).sum()),
          'anomaly': int((split.labels == 1).sum()),
          'corrupted': int(corrupted.sum())}


# --- Protocols. ---


@dataclasses.dataclass(frozen=True)
class _Settings:
  """`config.data`, checked, before any data is read."""
  protocol: str
  semi_supervised_ratio: float
  corruption_ratio: float
  num_val_normal: int
  num_val_anomaly: int
  num_test_anomaly: Optional[int]  # None: all of the ood test split.
  max_train: Optional[int]
  max_test: Optional[int]
  test_fraction: float
  conv: Conversion


def _settings(data_config: ml_collections.ConfigDict) -> _Settings:
  protocol = data_config.get('protocol')
  if protocol not in PROTOCOLS:
    raise DataError(f'Unknown data.protocol={protocol!r}; valid: '
                    f'{list(PROTOCOLS)}.')
  return _Settings(
      protocol=protocol,
      semi_supervised_ratio=_check_ratio(data_config, 'semi_supervised_ratio'),
      corruption_ratio=_check_ratio(data_config, 'corruption_ratio'),
      num_val_normal=_check_count(data_config, 'num_val_normal'),
      num_val_anomaly=_check_count(data_config, 'num_val_anomaly'),
      num_test_anomaly=(_check_count(data_config, 'num_test_anomaly',
                                     optional=True)
                        if protocol == 'ood' else 0),
      max_train=_check_count(data_config, 'max_train', optional=True,
                             minimum=1),
      max_test=_check_count(data_config, 'max_test', optional=True,
                            minimum=2),
      test_fraction=_check_ratio(
          {'test_fraction': data_config.get('test_fraction', 0.2)},
          'test_fraction', low_open=True),
      conv=conversion(data_config))


def _normal_classes(source: _Source, normal_classes: Any) -> tuple[int, ...]:
  """data.normal_classes -> sorted distinct indices, at least one anomaly."""
  if not source.class_names:
    why = (f'its features have no ClassLabel ({source.features})'
           if isinstance(source, _TfdsSource) else
           'a flat folder, or images without labels')
    raise DataError(
        f'data.protocol=\'one_class\' needs classes, but {source.field}='
        f'{source.spec!r} has none ({why}). Put the images in class '
        'subfolders (PATH/<class>/) or in PATH/normal/ (+ PATH/anomaly/), '
        "give labels, or use data.protocol='ood' with data.ood_dataset for "
        'the anomalies.')
  if isinstance(normal_classes, (int, str, np.integer)):
    normal_classes = (normal_classes,)
  classes = tuple(sorted({source.class_index(c)
                          for c in normal_classes or ()}))
  num_classes = len(source.class_names)
  if not classes or len(classes) == num_classes:
    raise DataError(f'data.normal_classes={normal_classes!r} must name at '
                    f'least one and at most {num_classes - 1} of the '
                    f'{num_classes} classes of {source.name} '
                    f'({list(source.class_names)}).')
  return classes


def _train_val_rows(s: _Settings, normal_pool: np.ndarray,
                    anomaly_source: int, anomaly_pool: np.ndarray,
                    rngs: dict[str, np.random.Generator], where: str,
                    anomaly_where: str) -> tuple[_Rows, _Rows]:
  """Draws val and train from the train split's normal and anomaly pools."""
  # Validation normals are held out first, so caps and ratios leave them be.
  if s.num_val_normal >= len(normal_pool):
    raise DataError(
        f'data.num_val_normal={s.num_val_normal} is too large: the {where} '
        f'holds {len(normal_pool)} normal images and at least one must stay '
        f'in train (at most {len(normal_pool) - 1} available for '
        f'validation).')
  held_out = rngs['val'].permutation(normal_pool)
  val_normal = np.sort(held_out[:s.num_val_normal])
  train_normal = np.sort(held_out[s.num_val_normal:])
  if s.max_train is not None and len(train_normal) > s.max_train:
    train_normal = _subsample(rngs['max_train'], train_normal, s.max_train)

  # One permutation of the anomaly pool, cut into disjoint parts.
  n_semi = round(s.semi_supervised_ratio * len(train_normal))
  n_corrupt = round(s.corruption_ratio * len(train_normal))
  num_val_anomaly = s.num_val_anomaly
  if not len(anomaly_pool) and not n_semi and not n_corrupt:
    # Normal images only (e.g. a folder without anomaly/): validation holds
    # normals only and model selection falls back (scoring).
    num_val_anomaly = 0
    if s.num_val_anomaly:
      logging.warning('%s holds no anomalies: validation has %d normals and '
                      'no anomalies (data.num_val_anomaly=%d ignored).',
                      anomaly_where, len(val_normal), s.num_val_anomaly)
  needed = num_val_anomaly + n_semi + n_corrupt
  if needed > len(anomaly_pool):
    raise DataError(
        f'Not enough anomalies: data.num_val_anomaly={num_val_anomaly} + '
        f'{n_semi} semi-supervised + {n_corrupt} corrupting = {needed}, but '
        f'only {len(anomaly_pool)} are available in the {anomaly_where}.')
  drawn = rngs['anomalies'].permutation(anomaly_pool)[:needed]
  val_anomaly, semi, corrupt = (np.sort(part) for part in np.split(
      drawn, [num_val_anomaly, num_val_anomaly + n_semi]))

  train = _Rows.concat([
      _Rows.make(NORMAL_SOURCE, train_normal, 0, False),
      _Rows.make(anomaly_source, semi, 1, True),
      _Rows.make(anomaly_source, corrupt, 0, True),  # Hidden in train.
  ])
  val = _Rows.concat([
      _Rows.make(NORMAL_SOURCE, val_normal, 0, False),
      _Rows.make(anomaly_source, val_anomaly, 1, True),
  ])
  return train, val


def _read_split(rows: _Rows, raw: dict[int, tuple[np.ndarray, np.ndarray]],
                shape: tuple[int, int, int]) -> Split:
  """Gathers the pixels of `rows` from `raw[source]`, as floats in [-1, 1]."""
  images = np.empty((len(rows.indices),) + shape, np.float32)
  classes = np.empty(len(rows.indices), np.int32)
  for source, (source_images, source_classes) in raw.items():
    where = rows.sources == source
    if where.any():
      # The same conversion as `ama_jax.inference`: x / 127.5 - 1.
      images[where] = source_images[rows.indices[where]].astype(
          np.float32) / 127.5 - 1.0
      classes[where] = source_classes[rows.indices[where]]
  return Split(images=images, labels=rows.labels, is_anomaly=rows.is_anomaly,
               classes=classes, sources=rows.sources, indices=rows.indices)


def load_protocol(data_config: ml_collections.ConfigDict, seed: int, *,
                  input_size: Optional[Sequence[int]] = None
                  ) -> ProtocolData:
  """Builds the train/val/test splits of `data_config.protocol`.

  Args:
    data_config: `config.data` of `configs/default.py`.
    seed: root of every random choice (same seed, same splits).
    input_size: the model's (H, W); images of another size are an error
      unless `data.image_size` converts them. None: not checked.

  Returns:
    The splits; train/val/test never share an image (same `sources` and
    `indices` within one source split).

  Raises:
    DataError (a ValueError): a bad setting (unknown dataset, protocol or
      class, a ratio outside [0, 1), more validation or anomaly images than
      the data holds, mismatched image shapes, unreadable files), or
      DataUnavailableError: no copy of a dataset (naming where to put it).
  """
  s = _settings(data_config)
  rngs = dict(zip(_PURPOSES, map(np.random.default_rng,
                                 np.random.SeedSequence(seed).spawn(
                                     len(_PURPOSES)))))
  dataset = data_config.get('dataset')
  sources = {NORMAL_SOURCE: open_source(dataset, data_config)}
  normal_classes = None
  if s.protocol == 'ood':
    ood_dataset = data_config.get('ood_dataset')
    if isinstance(ood_dataset, str) and ood_dataset.strip() == str(
        dataset).strip():
      raise DataError(f'data.ood_dataset={ood_dataset!r} must differ from '
                      f'data.dataset={dataset!r} for the ood protocol.')
    sources[ANOMALY_SOURCE] = open_source(ood_dataset, data_config,
                                          'data.ood_dataset')
  else:
    normal_classes = _normal_classes(sources[NORMAL_SOURCE],
                                     data_config.get('normal_classes'))
  shape = _target_shape(list(sources.values()), s.conv, input_size)
  for source in sources.values():  # Before reading any of them.
    source.check_available()

  # Whole splits: raw[split][source] = (uint8 images, classes), and the rows
  # of each that the split may use (all, or a seeded hold-out).
  raw = {split: {} for split in SPLITS}
  avail = {split: {} for split in SPLITS}
  for i, source in sources.items():
    if source.splits == SPLITS:
      for split in SPLITS:
        raw[split][i] = source.read(split, shape, s.conv)
        avail[split][i] = np.arange(len(raw[split][i][1]))
    else:
      everything = source.read(_ALL, shape, s.conv)
      purpose = 'holdout_normal' if i == NORMAL_SOURCE else 'holdout_anomaly'
      train_rows, test_rows = _hold_out(everything[1], s.test_fraction,
                                        rngs[purpose])
      if not len(test_rows) or not len(train_rows):
        raise DataError(
            f'{source.name}: {len(everything[1])} images are too few for a '
            f'test hold-out of data.test_fraction={s.test_fraction} (train '
            f'{len(train_rows)}, test {len(test_rows)}); add images, or a '
            'test split of its own.')
      logging.info('%s has no test split: %d of its %d images held out for '
                   'test (data.test_fraction=%g, per class, seed %d).',
                   source.name, len(test_rows), len(everything[1]),
                   s.test_fraction, seed)
      for split, rows in (('train', train_rows), ('test', test_rows)):
        raw[split][i], avail[split][i] = everything, rows
  normal = sources[NORMAL_SOURCE]
  train_classes = raw['train'][NORMAL_SOURCE][1]
  test_classes = raw['test'][NORMAL_SOURCE][1]
  train_avail, test_avail = avail['train'][NORMAL_SOURCE], avail['test'][
      NORMAL_SOURCE]

  if s.protocol == 'one_class':
    is_normal = np.isin(train_classes[train_avail], normal_classes)
    anomaly_source = NORMAL_SOURCE
    pools = train_avail[is_normal], train_avail[~is_normal]
    test_anomaly = ~np.isin(test_classes[test_avail], normal_classes)
    test_rows = _Rows.make(NORMAL_SOURCE, test_avail, test_anomaly,
                           test_anomaly)
    names = [normal.class_names[c] for c in normal_classes]
    where = f'{normal.name} train split (classes {names})'
    anomaly_where = f'{normal.name} train split (classes other than {names})'
  else:
    anomaly_source = ANOMALY_SOURCE
    ood = sources[ANOMALY_SOURCE]
    pools = (train_avail, avail['train'][ANOMALY_SOURCE])
    ood_test = avail['test'][ANOMALY_SOURCE]
    num_test_anomaly = (len(ood_test) if s.num_test_anomaly is None
                        else s.num_test_anomaly)
    if num_test_anomaly > len(ood_test):
      raise DataError(
          f'data.num_test_anomaly={num_test_anomaly} exceeds the '
          f'{len(ood_test)} images of the {ood.name} test split; lower it '
          '(None: all of them).')
    drawn = _subsample(rngs['test_anomalies'], ood_test, num_test_anomaly)
    test_rows = _Rows.concat([
        _Rows.make(NORMAL_SOURCE, test_avail, 0, False),
        _Rows.make(ANOMALY_SOURCE, drawn, 1, True)])
    where = f'{normal.name} train split'
    anomaly_where = f'{ood.name} train split'
  train_rows, val_rows = _train_val_rows(s, pools[0], anomaly_source,
                                         pools[1], rngs, where, anomaly_where)
  test_rows = _cap_test(test_rows, s.max_test, rngs['max_test'])

  splits = {'train': _read_split(train_rows, raw['train'], shape),
            'val': _read_split(val_rows, raw['train'], shape),
            'test': _read_split(test_rows, raw['test'], shape)}
  counts = {name: _count(split) for name, split in splits.items()}
  logging.info('Protocol %s, seed %d: normal %s%s, anomalies from %s, image '
               'shape %s.', s.protocol, seed, normal.name,
               f' classes {[normal.class_names[c] for c in normal_classes]}'
               if normal_classes else '',
               sources[ANOMALY_SOURCE].name if s.protocol == 'ood'
               else 'its other classes', shape)
  for name, count in counts.items():
    logging.info('%s: %d images (%d normal, %d anomaly, %d corrupted).', name,
                 count['total'], count['normal'], count['anomaly'],
                 count['corrupted'])
  if not counts['val']['anomaly']:
    logging.warning('Validation holds no anomalies: model selection keeps the '
                    'last state (README, "Your own data").')
  if not counts['test']['anomaly']:
    logging.warning('The test split holds no anomalies: test AUROC/AUPRC are '
                    'undefined (reported as NaN); only scores are useful.')
  return ProtocolData(**splits, counts=counts, image_shape=shape)
