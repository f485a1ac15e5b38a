r"""Datasets -> the paper's anomaly-detection splits, as numpy arrays.

Holds the data contract (`Split`, `ProtocolData`, `load_protocol`) and the
checks of the protocol's settings; the seeded choice of the images of each
split is `ama_jax.data.protocol_rows`; the sources are opened by
`ama_jax.data.data_sources` (which lists the datasets `data.dataset` and
`data.ood_dataset` can name). `DataError`, `DataUnavailableError`,
`DATASETS` and `class_index` (`ama_jax.data.data_common`) are part of this
contract and reachable here.

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
from ama_jax.data import protocol_rows
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
NORMAL_SOURCE = protocol_rows.NORMAL_SOURCE
ANOMALY_SOURCE = protocol_rows.ANOMALY_SOURCE


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


def _count(split: Split) -> dict[str, int]:
  corrupted = split.is_anomaly & (split.labels == 0)
  return {'total': len(split), 'normal': int((~split.is_anomaly).sum()),
          'anomaly': int((split.labels == 1).sum()),
          'corrupted': int(corrupted.sum())}


# --- Protocols. ---


def _settings(data_config: ml_collections.ConfigDict
              ) -> protocol_rows.Settings:
  protocol = data_config.get('protocol')
  if protocol not in PROTOCOLS:
    raise DataError(f'Unknown data.protocol={protocol!r}; valid: '
                    f'{list(PROTOCOLS)}.')
  return protocol_rows.Settings(
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


def _read_split(rows: protocol_rows.Rows,
                raw: dict[int, tuple[np.ndarray, np.ndarray]],
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


def _open_sources(s: protocol_rows.Settings,
                  data_config: ml_collections.ConfigDict,
                  input_size: Optional[Sequence[int]]
                  ) -> tuple[dict[int, data_common.Source],
                             Optional[tuple[int, ...]],
                             tuple[int, int, int]]:
  """(sources by index, normal classes or None, image shape), all checked."""
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
  return sources, normal_classes, shape


def _read_sources(s: protocol_rows.Settings,
                  sources: dict[int, data_common.Source],
                  shape: tuple[int, int, int],
                  rngs: dict[str, np.random.Generator], seed: int
                  ) -> tuple[dict[str, dict[int, tuple[np.ndarray,
                                                       np.ndarray]]],
                             dict[str, dict[int, np.ndarray]]]:
  """(raw, avail): the whole splits of every source and their usable rows.

  raw[split][source] = (uint8 images, classes); avail[split][source] the
  rows of it that the split may use (all, or a seeded hold-out).
  """
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
      train_rows, test_rows = protocol_rows.hold_out(
          everything[1], s.test_fraction, rngs[purpose])
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
  return raw, avail


def _log_protocol(s: protocol_rows.Settings,
                  sources: dict[int, data_common.Source],
                  normal_classes: Optional[tuple[int, ...]],
                  shape: tuple[int, int, int], seed: int,
                  counts: dict[str, dict[str, int]]) -> None:
  """Logs what the splits hold, and warns where an AUROC cannot be had."""
  normal = sources[NORMAL_SOURCE]
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
  rngs = protocol_rows.generators(seed)
  sources, normal_classes, shape = _open_sources(s, data_config, input_size)
  raw, avail = _read_sources(s, sources, shape, rngs, seed)
  if s.protocol == 'one_class':
    pools = protocol_rows.one_class_pools(
        sources[NORMAL_SOURCE], normal_classes,
        raw['train'][NORMAL_SOURCE][1], avail['train'][NORMAL_SOURCE],
        raw['test'][NORMAL_SOURCE][1], avail['test'][NORMAL_SOURCE])
  else:
    pools = protocol_rows.ood_pools(s, sources[NORMAL_SOURCE],
                                    sources[ANOMALY_SOURCE], avail,
                                    rngs['test_anomalies'])
  train_rows, val_rows = protocol_rows.train_val_rows(s, pools, rngs)
  test_rows = protocol_rows.cap_test(pools.test, s.max_test, rngs['max_test'])

  splits = {'train': _read_split(train_rows, raw['train'], shape),
            'val': _read_split(val_rows, raw['train'], shape),
            'test': _read_split(test_rows, raw['test'], shape)}
  counts = {name: _count(split) for name, split in splits.items()}
  _log_protocol(s, sources, normal_classes, shape, seed, counts)
  return ProtocolData(**splits, counts=counts, image_shape=shape)
