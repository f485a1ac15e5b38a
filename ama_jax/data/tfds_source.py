"""A TFDS dataset as a source, and the check that a download can work.

* `TfdsSource`: a built-in dataset (`data_common.DATASETS`) read from its
  offline copy when there is one (the local IDX files of `mnist` and
  `fashion_mnist`, a prepared TFDS copy, the published archives of
  `cifar10` and `svhn_cropped`), or any TFDS image dataset by name.
* `load_raw`: one whole split of a built-in dataset, as numpy.
* `unreachable`: whether the download hosts answer.

Nothing is downloaded when the data is not there and cannot be had: a TFDS
download is attempted only with `data.download` on and after its hosts
answered within `DOWNLOAD_TIMEOUT_S`; otherwise a `DataUnavailableError`
says, within seconds, where to put the files (`_offline_hint`).
"""
import concurrent.futures
import dataclasses
import hashlib
import os
import pathlib
import socket
import urllib.parse
from typing import Any, Optional, Sequence, Union

from absl import logging
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from ama_jax.data import data_common
from ama_jax.data import archives
from ama_jax.data import idx_images
from ama_jax.data import local_images
from ama_jax.data import split_arrays

_NATIVE_SHAPES = {'mnist': (28, 28, 1), 'fashion_mnist': (28, 28, 1),
                  'cifar10': (32, 32, 3), 'svhn_cropped': (32, 32, 3)}
FETCH_COMMAND = idx_images.FETCH_COMMAND
DOWNLOAD_TIMEOUT_S = 3.0  # Per host: name lookup, then a TCP connection.


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


# --- Reading. ---


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
    raise data_common.DataError(f'{what} is empty.')
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
  data_common.check_dataset(name, 'name')
  if split not in data_common.SPLITS:
    raise data_common.DataError(f'Unknown split {split!r}; valid: '
                                f'{list(data_common.SPLITS)}.')
  source = TfdsSource.open(name, data_config, 'data.dataset')
  images, labels = source.read_native(split)
  logging.info('%s/%s: %d images of shape %s.', name, split, len(images),
               images.shape[1:])
  return images, labels


@dataclasses.dataclass
class TfdsSource(data_common.Source):
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
  def open(cls, name: str, data_config, field: str) -> 'TfdsSource':
    """Finds the dataset and where it will come from, without reading it.

    Raises:
      DataError: not a TFDS dataset, or no usable image/label feature.
      DataUnavailableError: no local copy and no download possible.
    """
    data_dir = data_common.data_dir(data_config)
    raw_dir = data_common.raw_dir(data_config)
    common = dict(field=field, spec=name, name=name,
                  splits=data_common.SPLITS, tfds_name=name,
                  data_config=data_config,
                  aliases=data_common.CLASS_ALIASES.get(name))
    if name in idx_images.CLASS_NAMES and idx_images.has_raw_files(
        raw_dir / name):
      return cls(class_names=data_common.DATASETS[name], origin='idx',
                 feature_shape=_NATIVE_SHAPES[name], **common)
    try:
      builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
      raise data_common.DataError(
          f'Unknown dataset {field}={name!r}: not a built-in dataset '
          f'({", ".join(data_common.DATASETS)}), not a TFDS dataset and not an '
          'existing path. Give folder:PATH (a folder of images), '
          'array:PATH (.npy/.npz) or a TFDS name (tfds.list_builders()).'
      ) from e
    except Exception as e:  # Bad versions, configs or data_dir contents.
      raise data_common.DataError(f'{field}={name!r}: TFDS cannot open it '
                                  f'({type(e).__name__}: '
                                  f'{str(e).strip().splitlines()[0]}).') from e
    image_key, label_key, shape, class_names, listed = _tfds_features(
        builder, name, field)
    common.update(image_key=image_key, label_key=label_key, features=listed,
                  feature_shape=_NATIVE_SHAPES.get(name, shape),
                  # Built-ins keep their names (and aliases) whatever the
                  # copy's metadata says.
                  class_names=data_common.DATASETS.get(name, class_names))
    if builder.is_prepared():
      splits = tuple(builder.info.splits.keys())
      if 'train' not in splits:
        raise data_common.DataError(f'{name} in {data_dir} has no train split '
                                    f'(splits: {list(splits)}).')
      common['splits'] = (data_common.SPLITS if 'test' in splits
                          else (data_common.ALL,))
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
    name, data_dir = self.tfds_name, data_common.data_dir(self.data_config)
    raw_dir = data_common.raw_dir(self.data_config)
    if not self.data_config.get('download', True):
      raise data_common.DataUnavailableError(
          f'{name} is not available offline and data.download is off: '
          f'{_offline_hint(name, data_dir, raw_dir)}')
    urls = list((getattr(self.builder, 'url_infos', None) or {}).keys())
    problem = unreachable(urls) if urls else None
    if problem:
      raise data_common.DataUnavailableError(
          f'{name} is not available offline and cannot be downloaded '
          f'({problem}): {_offline_hint(name, data_dir, raw_dir)}')

  def shapes(self, conv: data_common.Conversion) -> dict[tuple, int]:
    return {tuple(self.feature_shape): None}

  def read_native(self, split: str) -> tuple[Any, np.ndarray]:
    """One split in its own shapes: (uint8 images, int64 labels)."""
    name, data_dir = self.tfds_name, data_common.data_dir(self.data_config)
    what = f'{name}/{split}'
    if self.origin == 'idx':
      raw_dir = data_common.raw_dir(self.data_config)
      logging.info('%s: local IDX copy from %s, prepared in %s.', what,
                   raw_dir / name, data_dir)
      try:
        builder = idx_images.prepare(name, data_dir=data_dir, raw_dir=raw_dir)
      except (OSError, ValueError) as e:
        raise data_common.DataUnavailableError(
            f'Cannot prepare {name} from {raw_dir / name}: '
            f'{str(e).splitlines()[0]} Re-fetch with {FETCH_COMMAND}.') from e
      # Decoded from the TFDS records once, then from numpy (split_arrays).
      return split_arrays.read(
          builder, split,
          lambda: _materialize(builder.as_data_source(split), what))
    if self.origin == 'archive':
      return self._read_archive(split)
    if self.origin == 'download':
      self.check_available()
      self._download()
    return self._read_builder(split)

  def _read(self, split, shape, conv):
    # Through `load_raw`, its public reader.
    if self.tfds_name in data_common.DATASETS:
      return load_raw(self.tfds_name, split, self.data_config)
    return self.read_native(split)

  def _read_archive(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    name, files = self.tfds_name, self.archive_files
    stats = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key = hashlib.sha256(repr(stats).encode()).hexdigest()[:16]
    logging.info('%s/%s: archive %s, prepared in %s.', name, split,
                 ', '.join(f.name for f in files),
                 data_common.data_dir(self.data_config))

    def examples(s):
      try:
        images, labels = archives.read(name, files, s)
      except archives.ArchiveError as e:
        raise data_common.DataError(str(e)) from e
      yield from zip(images, labels.tolist())

    config = local_images.LocalConfig(
        name=f'{name}-{key}', image_shape=_NATIVE_SHAPES[name],
        class_names=data_common.DATASETS[name], splits=data_common.SPLITS,
        examples=examples, description=f'{name} from {files[0].parent}')
    builder = local_images.prepare(config,
                                   data_common.data_dir(self.data_config))
    return local_images.read_split(builder, split)

  def _download(self) -> None:
    data_dir = data_common.data_dir(self.data_config)
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
                           data_common.raw_dir(self.data_config))
      raise data_common.DataUnavailableError(
          f'Could not load {self.tfds_name}: TFDS failed to download or '
          f'prepare it into {data_dir} ({type(e).__name__}: '
          f'{str(e).strip()[:300]}). {hint}') from e
    self.builder = builder

  def _read_builder(self, split: str) -> tuple[Any, np.ndarray]:
    builder = self.builder or tfds.builder(
        self.tfds_name, data_dir=data_common.data_dir(self.data_config),
        file_format='array_record')
    what = f'{self.tfds_name}/{split}'
    tfds_split = 'train' if split == data_common.ALL else split
    if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD or (
        not builder.is_prepared()):  # Not prepared: mock_data.
      source = builder.as_data_source(tfds_split)
      return _materialize(source, what, self.image_key, self.label_key)
    # A copy prepared by `tfds.load` (tfrecord): read through TensorFlow.
    try:
      dataset = builder.as_dataset(split=tfds_split, shuffle_files=False)
      examples = list(tfds.as_numpy(dataset))
    except Exception as e:
      raise data_common.DataError(f'Cannot read {what} from {builder.data_dir} '
                                  f'({builder.info.file_format.value} files; '
                                  f'{type(e).__name__}: {e}).') from e
    if not examples:
      raise data_common.DataError(f'{what} is empty.')
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
    raise data_common.DataError(
        f'{field}={name!r} has no image feature (uint8 [H, W] or [H, W, 1 or '
        f'3]); its features: {listed or "none"}. Only image datasets can be '
        'used.')
  image_key = 'image' if 'image' in images else images[0]
  if len(images) > 1 and 'image' not in images:
    raise data_common.DataError(f'{field}={name!r} has several image features '
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

