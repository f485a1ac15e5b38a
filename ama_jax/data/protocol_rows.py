"""Which images each split of a protocol holds, drawn before any pixels."""
import dataclasses
from typing import Any, Optional, Sequence

from absl import logging
import numpy as np

from ama_jax.data import data_common

DataError = data_common.DataError

NORMAL_SOURCE, ANOMALY_SOURCE = 0, 1
# Independent random streams, one per purpose, so that e.g. changing a ratio
# leaves the validation split unchanged. Append new purposes at the end.
_PURPOSES = ('val', 'anomalies', 'max_train', 'test_anomalies', 'max_test',
             'holdout_normal', 'holdout_anomaly')


def generators(seed: int) -> dict[str, np.random.Generator]:
  """One independent generator per purpose, all derived from `seed`."""
  return dict(zip(_PURPOSES, map(np.random.default_rng,
                                 np.random.SeedSequence(seed).spawn(
                                     len(_PURPOSES)))))


@dataclasses.dataclass(frozen=True)
class Settings:
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


@dataclasses.dataclass(frozen=True)
class Rows:
  """Which images a split holds and their labels, before reading pixels."""
  sources: np.ndarray
  indices: np.ndarray
  labels: np.ndarray
  is_anomaly: np.ndarray

  @classmethod
  def make(cls, source: int, indices: np.ndarray, labels: Any,
           is_anomaly: Any) -> 'Rows':
    n = len(indices)
    return cls(np.full(n, source, np.int32), np.asarray(indices, np.int64),
               np.broadcast_to(labels, n).astype(np.int32),
               np.broadcast_to(is_anomaly, n).astype(bool))

  @classmethod
  def concat(cls, parts: Sequence['Rows']) -> 'Rows':
    return cls(*(np.concatenate([getattr(p, f.name) for p in parts])
                 for f in dataclasses.fields(cls)))

  def take(self, keep: np.ndarray) -> 'Rows':
    return Rows(*(getattr(self, f.name)[keep]
                  for f in dataclasses.fields(self)))


@dataclasses.dataclass(frozen=True)
class Pools:
  """A protocol's test rows and the train split's pools to draw from.

  Attributes:
    normal: rows of the normal source's train split that are normal.
    anomaly_source: the source the anomalies come from.
    anomaly: rows of that source's train split that are anomalies.
    test: the test split's rows.
    where: the normal pool, in words (for errors).
    anomaly_where: the anomaly pool, in words (for errors and warnings).
  """
  normal: np.ndarray
  anomaly_source: int
  anomaly: np.ndarray
  test: Rows
  where: str
  anomaly_where: str


# --- Sampling. ---


def subsample(rng: np.random.Generator, pool: np.ndarray, n: int
              ) -> np.ndarray:
  """n distinct elements of pool, in pool order."""
  return np.sort(rng.choice(pool, size=n, replace=False))


def cap_test(rows: Rows, max_test: Optional[int],
             rng: np.random.Generator) -> Rows:
  """Keeps max_test rows, both labels present, label ratio about kept."""
  if max_test is None or len(rows.labels) <= max_test:
    return rows
  anomalies = np.flatnonzero(rows.labels == 1)
  normals = np.flatnonzero(rows.labels == 0)
  n_anomalies = round(max_test * len(anomalies) / len(rows.labels))
  n_anomalies = min(max(n_anomalies, min(1, len(anomalies))), len(anomalies),
                    max_test - min(1, len(normals)))
  keep = np.concatenate([subsample(rng, anomalies, n_anomalies),
                         subsample(rng, normals, max_test - n_anomalies)])
  return rows.take(np.sort(keep))


def hold_out(classes: np.ndarray, fraction: float,
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


# --- Protocols. ---


def one_class_pools(normal: data_common.Source, normal_classes: Sequence[int],
                    train_classes: np.ndarray, train_avail: np.ndarray,
                    test_classes: np.ndarray, test_avail: np.ndarray
                    ) -> Pools:
  """`one_class`: normal classes against the other classes of one source."""
  is_normal = np.isin(train_classes[train_avail], normal_classes)
  test_anomaly = ~np.isin(test_classes[test_avail], normal_classes)
  names = [normal.class_names[c] for c in normal_classes]
  return Pools(
      normal=train_avail[is_normal], anomaly_source=NORMAL_SOURCE,
      anomaly=train_avail[~is_normal],
      test=Rows.make(NORMAL_SOURCE, test_avail, test_anomaly, test_anomaly),
      where=f'{normal.name} train split (classes {names})',
      anomaly_where=(f'{normal.name} train split (classes other than '
                     f'{names})'))


def ood_pools(s: Settings, normal: data_common.Source,
              ood: data_common.Source,
              avail: dict[str, dict[int, np.ndarray]],
              rng: np.random.Generator) -> Pools:
  """`ood`: all of the normal source against images of the ood source."""
  ood_test = avail['test'][ANOMALY_SOURCE]
  num_test_anomaly = (len(ood_test) if s.num_test_anomaly is None
                      else s.num_test_anomaly)
  if num_test_anomaly > len(ood_test):
    raise DataError(
        f'data.num_test_anomaly={num_test_anomaly} exceeds the '
        f'{len(ood_test)} images of the {ood.name} test split; lower it '
        '(None: all of them).')
  drawn = subsample(rng, ood_test, num_test_anomaly)
  return Pools(
      normal=avail['train'][NORMAL_SOURCE], anomaly_source=ANOMALY_SOURCE,
      anomaly=avail['train'][ANOMALY_SOURCE],
      test=Rows.concat([
          Rows.make(NORMAL_SOURCE, avail['test'][NORMAL_SOURCE], 0, False),
          Rows.make(ANOMALY_SOURCE, drawn, 1, True)]),
      where=f'{normal.name} train split',
      anomaly_where=f'{ood.name} train split')


def train_val_rows(s: Settings, pools: Pools,
                   rngs: dict[str, np.random.Generator]
                   ) -> tuple[Rows, Rows]:
  """Draws val and train from the train split's normal and anomaly pools."""
  normal_pool, anomaly_pool = pools.normal, pools.anomaly
  anomaly_source, anomaly_where = pools.anomaly_source, pools.anomaly_where
  # Validation normals are held out first, so caps and ratios leave them be.
  if s.num_val_normal >= len(normal_pool):
    raise DataError(
        f'data.num_val_normal={s.num_val_normal} is too large: the '
        f'{pools.where} holds {len(normal_pool)} normal images and at least '
        f'one must stay in train (at most {len(normal_pool) - 1} available '
        'for validation).')
  held_out = rngs['val'].permutation(normal_pool)
  val_normal = np.sort(held_out[:s.num_val_normal])
  train_normal = np.sort(held_out[s.num_val_normal:])
  if s.max_train is not None and len(train_normal) > s.max_train:
    train_normal = subsample(rngs['max_train'], train_normal, s.max_train)

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

  train = Rows.concat([
      Rows.make(NORMAL_SOURCE, train_normal, 0, False),
      Rows.make(anomaly_source, semi, 1, True),
      Rows.make(anomaly_source, corrupt, 0, True),  # Hidden in train.
  ])
  val = Rows.concat([
      Rows.make(NORMAL_SOURCE, val_normal, 0, False),
      Rows.make(anomaly_source, val_anomaly, 1, True),
  ])
  return train, val
