r"""Datasets -> the paper's anomaly-detection splits, as numpy arrays.

Holds the data contract (`Split`, `ProtocolData`, `load_protocol`), the
checks of the protocol's settings, the seeded sampling and the protocols;
the sources are opened by `ama_jax.data.data_sources` (which lists the datasets
`data.dataset` and `data.ood_dataset` can name). `DataError`,
`DataUnavailableError`, `DATASETS` and `class_index` (`ama_jax.data.data_common`)
are part of this contract and reachable here.

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

A dataset without a test split of its own (a folder without `test/`, an
array without test arrays, a TFDS dataset without a `test` split) gets a
deterministic, class-stratified test hold-out of `data.test_fraction` of its
images, drawn from the seed.

Images of every source are brought to one shape (`data_sources.
target_shape`). A validation split without anomalies is allowed (a folder of
normal images only): model selection then keeps the last state
(`scoring.model_selection`).
"""
import dataclasses
from typing import Any, Optional, Sequence

from absl import logging
import ml_collections
import numpy as np

from ama_jax.data import data_common
from ama_jax.data import data_sources
from ama_jax.data import tfds_source

# Part of the data contract, defined with the sources.
DataError = data_common.DataError
DataUnavailableError = data_common.DataUnavailableError
DATASETS = data_common.DATASETS
class_index = data_common.class_index
# The values config_checks accepts.
RESIZE_METHODS = data_common.RESIZE_METHODS
SPEC_PREFIXES = data_sources.SPEC_PREFIXES

PROTOCOLS = ('one_class', 'ood')
NORMAL_SOURCE, ANOMALY_SOURCE = 0, 1
# Independent random streams, one per purpose, so that e.g. changing a ratio
# leaves the validation split unchanged. Append new purposes at the end.
_PURPOSES = ('val', 'anomalies', 'max_train', 'test_anomalies', 'max_test',
             'holdout_normal', 'holdout_anomaly')


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


# --- Checks. ---


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
  conv: data_common.Conversion


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
      conv=data_common.conversion(data_config))


def _normal_classes(source: data_common.Source,
                    normal_classes: Any) -> tuple[int, ...]:
  """data.normal_classes -> sorted distinct indices, at least one anomaly."""
  if not source.class_names:
    why = (f'its features have no ClassLabel ({source.features})'
           if isinstance(source, tfds_source.TfdsSource) else
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
      # The same conversion as `ama_jax.scoring.score_inputs`: x / 127.5 - 1.
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
  sources = {NORMAL_SOURCE: data_sources.open_source(dataset, data_config)}
  normal_classes = None
  if s.protocol == 'ood':
    ood_dataset = data_config.get('ood_dataset')
    if isinstance(ood_dataset, str) and ood_dataset.strip() == str(
        dataset).strip():
      raise DataError(f'data.ood_dataset={ood_dataset!r} must differ from '
                      f'data.dataset={dataset!r} for the ood protocol.')
    sources[ANOMALY_SOURCE] = data_sources.open_source(ood_dataset, data_config,
                                                       'data.ood_dataset')
  else:
    normal_classes = _normal_classes(sources[NORMAL_SOURCE],
                                     data_config.get('normal_classes'))
  shape = data_sources.target_shape(list(sources.values()), s.conv, input_size)
  for source in sources.values():  # Before reading any of them.
    source.check_available()

  # Whole splits: raw[split][source] = (uint8 images, classes), and the rows
  # of each that the split may use (all, or a seeded hold-out).
  raw = {split: {} for split in data_common.SPLITS}
  avail = {split: {} for split in data_common.SPLITS}
  for i, source in sources.items():
    if source.splits == data_common.SPLITS:
      for split in data_common.SPLITS:
        raw[split][i] = source.read(split, shape, s.conv)
        avail[split][i] = np.arange(len(raw[split][i][1]))
    else:
      everything = source.read(data_common.ALL, shape, s.conv)
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
