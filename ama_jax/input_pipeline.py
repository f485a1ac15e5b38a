r"""Datasets -> the paper's anomaly-detection splits, as numpy arrays.

The paper's datasets are small (at most 73k images of 28x28 or 32x32), so each
TFDS split is read whole into numpy through `tfds.data_source` and the
protocol splits are built on the host with seeded generators.

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

Datasets are named by TFDS name. `mnist` and `fashion_mnist` come from the
local IDX files (`ama_jax.datasets.idx_images`) when `bash scripts/setup.sh`
fetched them, else from TFDS's own builders (network needed); `cifar10` and
`svhn_cropped` always come from TFDS.
"""
import dataclasses
import pathlib
import re
from typing import Any, Optional, Sequence, Union

from absl import logging
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from ama_jax import errors
from ama_jax.datasets import idx_images

# TFDS name -> class names in label order.
DATASETS: dict[str, tuple[str, ...]] = {
    'mnist': idx_images.CLASS_NAMES['mnist'],
    'fashion_mnist': idx_images.CLASS_NAMES['fashion_mnist'],
    'cifar10': ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
                'horse', 'ship', 'truck'),
    'svhn_cropped': tuple(str(i) for i in range(10)),
}
# Extra accepted spellings, compared after `_canonical`.
_CLASS_ALIASES = {
    'fashion_mnist': {'tshirt': 0, 'top': 0, 'boot': 9},
    'cifar10': {'plane': 0, 'aeroplane': 0, 'car': 1},
}
PROTOCOLS = ('one_class', 'ood')
SPLITS = ('train', 'test')
NORMAL_SOURCE, ANOMALY_SOURCE = 0, 1
FETCH_COMMAND = idx_images.FETCH_COMMAND
# Independent random streams, one per purpose, so that e.g. changing a ratio
# leaves the validation split unchanged. Append new purposes at the end.
_PURPOSES = ('val', 'anomalies', 'max_train', 'test_anomalies', 'max_test')


class DataUnavailableError(errors.DataError, FileNotFoundError):
  """A dataset is neither on disk nor obtainable through TFDS.

  An `errors.DataError` (a UserError and a ValueError): the command-line
  programs print it as one line.
  """


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
    indices: [N] int64 index of the image in its source TFDS split (train and
      val index the `train` split, test the `test` split).
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
    test: test rows, in TFDS order (normal dataset first for OOD).
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
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {field}={name!r}; valid TFDS names: '
                     f'{", ".join(DATASETS)}.')
  return name


def _canonical(name: str) -> str:
  return re.sub(r'[^a-z0-9]', '', name.lower())


def class_index(dataset: str, value: Union[int, str]) -> int:
  """Resolves a class given by index or (case-insensitive) name.

  Args:
    dataset: TFDS name, e.g. 'fashion_mnist'.
    value: an index (int or digit string) or a class name such as 'Trouser',
      't-shirt' or 'airplane'.

  Returns:
    The class index in [0, num_classes).

  Raises:
    ValueError: unknown dataset, or a class out of range / not found.
  """
  names = DATASETS[_check_dataset(dataset)]
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    index = int(value)
  elif isinstance(value, str) and value.strip().isdigit():
    index = int(value)
  elif isinstance(value, str):
    lookup = {_canonical(n): i for i, n in enumerate(names)}
    lookup.update(_CLASS_ALIASES.get(dataset, {}))
    if _canonical(value) not in lookup:
      raise ValueError(f'Unknown class {value!r} of {dataset}; valid names: '
                       f'{list(names)} (or indices 0..{len(names) - 1}).')
    return lookup[_canonical(value)]
  else:
    raise ValueError(f'A class of {dataset} must be an index or a name, got '
                     f'{value!r}.')
  if not 0 <= index < len(names):
    raise ValueError(f'Class index {index} is out of range for {dataset}: '
                     f'valid 0..{len(names) - 1} ({list(names)}).')
  return index


def _normal_classes(dataset: str, normal_classes: Any) -> tuple[int, ...]:
  """data.normal_classes -> sorted distinct indices, at least one anomaly."""
  if isinstance(normal_classes, (int, str, np.integer)):
    normal_classes = (normal_classes,)
  classes = tuple(sorted({class_index(dataset, c)
                          for c in normal_classes or ()}))
  num_classes = len(DATASETS[dataset])
  if not classes or len(classes) == num_classes:
    raise ValueError(f'data.normal_classes={normal_classes!r} must name at '
                     f'least one and at most {num_classes - 1} of the '
                     f'{num_classes} classes of {dataset}.')
  return classes


def _check_ratio(data_config: ml_collections.ConfigDict, field: str) -> float:
  value = data_config.get(field) or 0.0
  if (not isinstance(value, (int, float, np.number)) or isinstance(value, bool)
      or not 0.0 <= value < 1.0):
    raise ValueError(f'data.{field}={value!r} must be in [0, 1).')
  return float(value)


def _check_count(data_config: ml_collections.ConfigDict, field: str,
                 optional: bool = False, minimum: int = 0) -> Optional[int]:
  value = data_config.get(field)
  if value is None and optional:
    return None
  if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
      or value < minimum):
    raise ValueError(f'data.{field}={value!r} must be an integer >= '
                     f'{minimum}{" or None" if optional else ""}.')
  return int(value)


# --- Reading whole TFDS splits. ---


def _materialize(source: Sequence[Any], what: str
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Reads every record of a data source: (uint8 images, int64 labels)."""
  # The length comes from the source itself, never from `info.splits`
  # (empty under `tfds.testing.mock_data`).
  keys = list(range(len(source)))
  if not keys:
    raise ValueError(f'{what} is empty.')
  try:
    examples = source.__getitems__(keys)  # One batched read: ~1-2 s for 60k.
  except TypeError:  # `tfds.testing.mock_data` leaves it unbound.
    examples = [source[i] for i in keys]
  images = np.stack([np.asarray(ex['image'], np.uint8) for ex in examples])
  if images.ndim == 3:  # Grey images stored without a channel axis.
    images = images[..., None]
  # Labels are ints, or 0-d arrays under mock_data.
  labels = np.array([int(ex['label']) for ex in examples], np.int64)
  return images, labels


def _download_config() -> tfds.download.DownloadConfig:
  # Build from the original sources: the prepared GCS copies are tfrecord,
  # which `tfds.data_source` cannot read.
  return tfds.download.DownloadConfig(try_download_gcs=False)


def load_raw(name: str, split: str, data_config: ml_collections.ConfigDict
             ) -> tuple[np.ndarray, np.ndarray]:
  """Reads one whole TFDS split into numpy.

  Args:
    name: TFDS name: 'mnist', 'fashion_mnist', 'cifar10' or 'svhn_cropped'.
    split: 'train' or 'test'.
    data_config: `config.data`; uses `data_dir` (TFDS data_dir, None:
      `<repo>/data/tfds`) and `raw_dir` (offline IDX files, None:
      `<repo>/data/raw`).

  Returns:
    images: [N, H, W, C] uint8; labels: [N] int64 class labels, in TFDS order.

  Raises:
    ValueError: unknown dataset or split.
    DataUnavailableError: (also a ValueError) no local copy and TFDS could
      not download the dataset.
  """
  _check_dataset(name, 'name')
  if split not in SPLITS:
    raise ValueError(f'Unknown split {split!r}; valid: {list(SPLITS)}.')
  data_dir = pathlib.Path(data_config.get('data_dir')
                          or idx_images.DEFAULT_DATA_DIR)
  raw_dir = pathlib.Path(data_config.get('raw_dir')
                         or idx_images.DEFAULT_RAW_DIR)
  if name in idx_images.CLASS_NAMES and idx_images.has_raw_files(
      raw_dir / name):
    logging.info('%s/%s: local IDX copy from %s, prepared in %s.', name,
                 split, raw_dir / name, data_dir)
    idx_images.prepare(name, data_dir=data_dir, raw_dir=raw_dir)
    source = tfds.data_source(f'idx_images/{name}', split=split,
                              data_dir=data_dir, download=False)
  else:
    if name in idx_images.CLASS_NAMES:
      logging.warning('%s: IDX files not found in %s; using TFDS\'s built-in '
                      'builder (downloads into %s).', name, raw_dir / name,
                      data_dir)
      hint = (f'The IDX files of {name} are missing from {raw_dir / name}: '
              f'run {FETCH_COMMAND} to fetch them.')
    else:
      logging.info('%s/%s: TFDS built-in builder, data_dir %s.', name, split,
                   data_dir)
      hint = (f'{name} has no offline copy: prepare it with TFDS on a '
              f'machine with network access and point data.data_dir at it.')
    try:
      source = tfds.data_source(
          name, split=split, data_dir=data_dir,
          download_and_prepare_kwargs={'download_config': _download_config()})
    except Exception as e:  # Network, TensorFlow or checksum failures.
      raise DataUnavailableError(
          f'Could not load {name}/{split}: TFDS failed to download or prepare '
          f'it into {data_dir} ({type(e).__name__}: {e}). {hint}') from e
  images, labels = _materialize(source, f'{name}/{split}')
  logging.info('%s/%s: %d images of shape %s.', name, split, len(images),
               images.shape[1:])
  return images, labels


# --- Image conversion. ---


def _check_image_shape(image_shape: Any) -> Optional[tuple[int, int, int]]:
  if image_shape is None:
    return None
  shape = tuple(image_shape) if isinstance(image_shape, Sequence) else ()
  if (len(shape) != 3 or not all(isinstance(d, (int, np.integer)) and d > 0
                                 for d in shape) or shape[2] not in (1, 3)):
    raise ValueError(f'data.image_shape={image_shape!r} must be (H, W, C) '
                     f'with positive H, W and C in (1, 3), or None.')
  return tuple(int(d) for d in shape)


def _target_shape(shapes: dict[str, tuple[int, ...]],
                  image_shape: Optional[tuple[int, int, int]]
                  ) -> tuple[int, int, int]:
  """The common (H, W, C): the datasets' own, or data.image_shape."""
  if image_shape is not None:
    return image_shape
  (first, a), *rest = shapes.items()
  for second, b in rest:
    if a != b:
      raise ValueError(
          f'{first} images have shape {a} but {second} images have shape '
          f'{b}; set data.image_shape (e.g. {a}) to convert them '
          f'explicitly.')
  return tuple(int(d) for d in a)


def _to_float(images: np.ndarray,
              shape: tuple[int, int, int]) -> np.ndarray:
  """uint8 [N, h, w, c] -> float32 [N, H, W, C] in [-1, 1].

  Channels: grey is repeated to RGB, RGB is averaged to grey. Space: zero
  pixels pad the image (centred) when the target is at least as large on both
  sides (MNIST's 28x28 in a 32x32 frame), else the image is resized
  (bilinear, antialiased).
  """
  x = images.astype(np.float32) / 127.5 - 1.0
  n, h, w, c = x.shape
  height, width, channels = shape
  if c != channels:
    if (c, channels) == (1, 3):
      x = np.repeat(x, 3, axis=-1)
    elif (c, channels) == (3, 1):
      x = x.mean(axis=-1, keepdims=True)
    else:
      raise ValueError(f'Cannot convert {c} channels to {channels}.')
  if (h, w) == (height, width):
    return x
  if height >= h and width >= w:
    top, left = (height - h) // 2, (width - w) // 2
    pad = ((0, 0), (top, height - h - top), (left, width - w - left), (0, 0))
    return np.pad(x, pad, constant_values=-1.0)  # -1 is pixel value 0.
  with jax.default_device(jax.devices('cpu')[0]):  # Host data stays on host.
    x = jax.image.resize(x, (n, height, width, channels), 'linear',
                         antialias=True)
  return np.clip(np.asarray(x, np.float32), -1.0, 1.0)


def _read_split(rows: _Rows, raw: dict[int, tuple[np.ndarray, np.ndarray]],
                shape: tuple[int, int, int]) -> Split:
  """Gathers and converts the pixels of `rows` from `raw[source]`."""
  images = np.empty((len(rows.indices),) + shape, np.float32)
  classes = np.empty(len(rows.indices), np.int32)
  for source, (source_images, source_classes) in raw.items():
    where = rows.sources == source
    if where.any():
      images[where] = _to_float(source_images[rows.indices[where]], shape)
      classes[where] = source_classes[rows.indices[where]]
  return Split(images=images, labels=rows.labels, is_anomaly=rows.is_anomaly,
               classes=classes, sources=rows.sources, indices=rows.indices)


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
  dataset: str
  ood_dataset: Optional[str]  # ood only.
  normal_classes: Optional[tuple[int, ...]]  # one_class only.
  semi_supervised_ratio: float
  corruption_ratio: float
  num_val_normal: int
  num_val_anomaly: int
  num_test_anomaly: int
  max_train: Optional[int]
  max_test: Optional[int]
  image_shape: Optional[tuple[int, int, int]]


def _settings(data_config: ml_collections.ConfigDict) -> _Settings:
  protocol = data_config.get('protocol')
  if protocol not in PROTOCOLS:
    raise ValueError(f'Unknown data.protocol={protocol!r}; valid: '
                     f'{list(PROTOCOLS)}.')
  dataset = _check_dataset(data_config.get('dataset'))
  ood_dataset = normal_classes = None
  if protocol == 'ood':
    ood_dataset = _check_dataset(data_config.get('ood_dataset'),
                                 'data.ood_dataset')
    if ood_dataset == dataset:
      raise ValueError(f'data.ood_dataset={ood_dataset!r} must differ from '
                       f'data.dataset={dataset!r} for the ood protocol.')
  else:
    normal_classes = _normal_classes(dataset,
                                     data_config.get('normal_classes'))
  return _Settings(
      protocol=protocol, dataset=dataset, ood_dataset=ood_dataset,
      normal_classes=normal_classes,
      semi_supervised_ratio=_check_ratio(data_config, 'semi_supervised_ratio'),
      corruption_ratio=_check_ratio(data_config, 'corruption_ratio'),
      num_val_normal=_check_count(data_config, 'num_val_normal'),
      num_val_anomaly=_check_count(data_config, 'num_val_anomaly'),
      num_test_anomaly=(_check_count(data_config, 'num_test_anomaly')
                        if protocol == 'ood' else 0),
      max_train=_check_count(data_config, 'max_train', optional=True,
                             minimum=1),
      max_test=_check_count(data_config, 'max_test', optional=True,
                            minimum=2),
      image_shape=_check_image_shape(data_config.get('image_shape')))


def _train_val_rows(s: _Settings, normal_pool: np.ndarray,
                    anomaly_source: int, anomaly_pool: np.ndarray,
                    rngs: dict[str, np.random.Generator], where: str
                    ) -> tuple[_Rows, _Rows]:
  """Draws val and train from the train split's normal and anomaly pools."""
  # Validation normals are held out first, so caps and ratios leave them be.
  if s.num_val_normal >= len(normal_pool):
    raise ValueError(
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
  needed = s.num_val_anomaly + n_semi + n_corrupt
  if needed > len(anomaly_pool):
    raise ValueError(
        f'Not enough anomalies: data.num_val_anomaly={s.num_val_anomaly} + '
        f'{n_semi} semi-supervised + {n_corrupt} corrupting = {needed}, but '
        f'only {len(anomaly_pool)} are available in the '
        f'{s.ood_dataset or s.dataset} train split.')
  drawn = rngs['anomalies'].permutation(anomaly_pool)[:needed]
  val_anomaly, semi, corrupt = (np.sort(part) for part in np.split(
      drawn, [s.num_val_anomaly, s.num_val_anomaly + n_semi]))

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


def load_protocol(data_config: ml_collections.ConfigDict,
                  seed: int) -> ProtocolData:
  """Builds the train/val/test splits of `data_config.protocol`.

  Args:
    data_config: `config.data` of `configs/default.py`.
    seed: root of every random choice (same seed, same splits).

  Returns:
    The splits; train/val/test never share an image (same `sources` and
    `indices` within one TFDS split).

  Raises:
    ValueError: a bad setting (unknown dataset, protocol or class, a ratio
      outside [0, 1), more validation or anomaly images than the data holds,
      mismatched image shapes), or no copy of a dataset (DataUnavailableError,
      naming the fetch command).
  """
  s = _settings(data_config)
  rngs = dict(zip(_PURPOSES, map(np.random.default_rng,
                                 np.random.SeedSequence(seed).spawn(
                                     len(_PURPOSES)))))
  # Whole splits: raw[split][source] = (uint8 images, class labels).
  names = {NORMAL_SOURCE: s.dataset}
  if s.protocol == 'ood':
    names[ANOMALY_SOURCE] = s.ood_dataset
  raw = {split: {i: load_raw(n, split, data_config) for i, n in names.items()}
         for split in SPLITS}
  shape = _target_shape(
      {n: raw['train'][i][0].shape[1:] for i, n in names.items()},
      s.image_shape)
  train_classes = raw['train'][NORMAL_SOURCE][1]
  test_classes = raw['test'][NORMAL_SOURCE][1]

  if s.protocol == 'one_class':
    is_normal = np.isin(train_classes, s.normal_classes)
    anomaly_source = NORMAL_SOURCE
    pools = np.flatnonzero(is_normal), np.flatnonzero(~is_normal)
    test_anomaly = ~np.isin(test_classes, s.normal_classes)
    test_rows = _Rows.make(NORMAL_SOURCE, np.arange(len(test_classes)),
                           test_anomaly, test_anomaly)
    where = (f'{s.dataset} train split (classes '
             f'{[DATASETS[s.dataset][c] for c in s.normal_classes]})')
  else:
    anomaly_source = ANOMALY_SOURCE
    pools = (np.arange(len(train_classes)),
             np.arange(len(raw['train'][ANOMALY_SOURCE][1])))
    ood_test_size = len(raw['test'][ANOMALY_SOURCE][1])
    if s.num_test_anomaly > ood_test_size:
      raise ValueError(
          f'data.num_test_anomaly={s.num_test_anomaly} exceeds the '
          f'{ood_test_size} images of the {s.ood_dataset} test split.')
    drawn = _subsample(rngs['test_anomalies'], np.arange(ood_test_size),
                       s.num_test_anomaly)
    test_rows = _Rows.concat([
        _Rows.make(NORMAL_SOURCE, np.arange(len(test_classes)), 0, False),
        _Rows.make(ANOMALY_SOURCE, drawn, 1, True)])
    where = f'{s.dataset} train split'
  train_rows, val_rows = _train_val_rows(s, pools[0], anomaly_source,
                                         pools[1], rngs, where)
  test_rows = _cap_test(test_rows, s.max_test, rngs['max_test'])

  splits = {'train': _read_split(train_rows, raw['train'], shape),
            'val': _read_split(val_rows, raw['train'], shape),
            'test': _read_split(test_rows, raw['test'], shape)}
  counts = {name: _count(split) for name, split in splits.items()}
  logging.info('Protocol %s, seed %d: normal %s%s, anomalies from %s, image '
               'shape %s.', s.protocol, seed, s.dataset,
               f' classes {list(s.normal_classes)}' if s.normal_classes
               else '', s.ood_dataset or 'its other classes', shape)
  for name, count in counts.items():
    logging.info('%s: %d images (%d normal, %d anomaly, %d corrupted).', name,
                 count['total'], count['normal'], count['anomaly'],
                 count['corrupted'])
  return ProtocolData(**splits, counts=counts, image_shape=shape)
