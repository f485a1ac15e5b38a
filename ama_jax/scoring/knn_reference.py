"""The feature kNN score's reference: the training normals' features, cached.
"""
import dataclasses
import os
import pathlib
from typing import Optional

from absl import logging
import numpy as np

from ama_jax import errors
from ama_jax.reporting import json_safe
from ama_jax.scoring import csv_output
from ama_jax.scoring import metrics
from ama_jax.models import nets
from ama_jax.scoring import score_error
from ama_jax.scoring import scoring
from ama_jax.scoring import whitening


KNN_DIR = 'knn_reference'  # <workdir>/knn_reference/<kind>_<step>.npz


@dataclasses.dataclass(frozen=True)
class KnnReference:
  """What the feature kNN score of new images needs besides the networks.

  Attributes:
    index: the training normals' features f(x, G(E(x))), on the device.
    threshold: on the kNN distance; above it = anomaly. Set, as the
      calibrated score's, on the validation normals at the run's
      `eval.threshold_fpr`.
    path: the cached features' file.
  """
  index: scoring.KnnIndex  # With the run's whitening (`index.whitening`).
  threshold: float
  path: pathlib.Path


def _fingerprint(meta: dict) -> np.ndarray:
  """What ties cached features to one checkpoint's networks: its step and
  calibration (another training saved at the same step has other values)."""
  return np.array([meta['step'], meta['mu'], meta['sigma'], meta['threshold']],
                  np.float64)


def _read_knn_cache(path: pathlib.Path, meta: dict, whitened: bool
                    ) -> Optional[dict[str, np.ndarray]]:
  """The cached features, or None: missing, unreadable, of another
  checkpoint or without the whitening the run's config asks for
  (`whitened`; then recomputed)."""
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as npz:
      cached = {k: npz[k] for k in ('train', 'val_normal', 'fingerprint')}
      space = whitening.Whitening.from_arrays(npz)
  except (OSError, ValueError, KeyError, EOFError) as e:
    logging.warning('%s is unreadable (%s); computing the features again.',
                    path, errors.one_line(e))
    return None
  if not np.array_equal(cached['fingerprint'], _fingerprint(meta)):
    logging.warning('%s holds the features of another checkpoint saved at '
                    'this step; computing them again.', path)
    return None
  if not (cached['train'].ndim == cached['val_normal'].ndim == 2
          and cached['train'].shape[1] == cached['val_normal'].shape[1]):
    logging.warning('%s holds features of the wrong shape; computing them '
                    'again.', path)
    return None
  if whitened != (space is not None) or (space is not None and (
      space.matrix.shape[0] != cached['train'].shape[1])):
    logging.warning('%s was written without the whitening of the run\'s '
                    'eval.knn_shrinkage (or with another); computing the '
                    'features again.', path)
    return None
  if space is not None:
    cached.update(space.to_arrays())
  return cached


def _write_knn_cache(path: pathlib.Path, cached: dict[str, np.ndarray]
                     ) -> None:
  """Atomically (`csv_output.write_atomically`); a failure only warns."""
  try:
    path.parent.mkdir(exist_ok=True)
    csv_output.write_atomically(path, 'wb', lambda f: np.savez(f, **cached))
    logging.info('Cached the training normals\' features in %s (%.0f MB).',
                 path, path.stat().st_size / 2**20)
  except OSError as e:
    logging.warning('Could not cache the features in %s (%s); the next call '
                    'computes them again.', path, e)


def _reference_features(config, scorer) -> dict[str, np.ndarray]:
  """f(x, G(E(x))) of the run's training and validation normals: the
  splits read again from the run's data settings and seed (the same rows as
  in training, `input_pipeline.load_protocol`)."""
  from ama_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  try:
    data = input_pipeline.load_protocol(
        config.data, config.seed,
        input_size=nets.input_size(config.model.arch))
  except (errors.UserError, ValueError, OSError) as e:
    raise score_error.ScoreError(
        'The feature kNN score compares new images with the run\'s training '
        'images, read again from its data settings (data.dataset='
        f'{config.data.get("dataset")!r}), and they cannot be read: '
        f'{errors.one_line(e)} Put the data back where the run read it, or '
        'score with --score=calibrated.') from e
  train = data.train.images[data.train.labels == 0]
  val_normal = data.val.images[data.val.labels == 0]
  if not len(train) or not len(val_normal):
    raise score_error.ScoreError(
        'The run has no training or no validation normal '
        'images: no feature kNN reference; score with --score=calibrated.')
  logging.info('Computing the features of %d training and %d validation '
               'normal images (once per checkpoint; then cached).',
               len(train), len(val_normal))
  features = scorer.with_features(train)[1]
  # The run's whitening and memory bank: as at its final evaluation.
  rows, space = scoring.memory_bank(
      features, config.eval.get('knn_bank_size'),
      config.eval.get('knn_shrinkage'), config.seed)
  return {'train': features[rows],
          'val_normal': scorer.with_features(val_normal)[1],
          **({} if space is None else space.to_arrays())}


def write_knn_reference(workdir: os.PathLike | str, kind: str, meta: dict,
                        bank: np.ndarray, val_normal: np.ndarray,
                        space: Optional[whitening.Whitening] = None) -> None:
  """Stores a checkpoint's memory bank, its validation normals' features
  and the whitening (what `knn_reference` reads), as the final evaluation
  used them."""
  path = pathlib.Path(workdir) / KNN_DIR / f'{kind}_{int(meta["step"])}.npz'
  _write_knn_cache(path, {'train': np.asarray(bank, np.float32),
                          'val_normal': np.asarray(val_normal, np.float32),
                          'fingerprint': _fingerprint(meta),
                          **({} if space is None else space.to_arrays())})


def knn_reference(workdir: os.PathLike | str, kind: str, meta: dict,
                  scorer: scoring.Scorer, k: Optional[int] = None
                  ) -> KnnReference:
  """The feature kNN score's reference set for a checkpoint.

  The run's memory bank (the features of its training normals, or of the
  `eval.knn_bank_size` of them `scoring.knn_bank` keeps, as in the run's
  final evaluation) and its validation normals' features, in
  `<workdir>/knn_reference/<kind>_<step>.npz`: written by the final
  evaluation, else computed with `scorer` (this checkpoint's networks) on
  first use and cached (4 bytes x features x bank rows: 40 MB for a bank of
  10,000 with the MNIST critic's 1,024 features).

  Args:
    workdir, kind, meta: the checkpoint (see `open_model`).
    scorer: its restored scorer.
    k: which neighbour; None: the run's `eval.knn_k`, or 1 when it had none.

  Raises:
    score_error.ScoreError: the training data cannot be read again, or a bad
      `k`.
  """
  config = json_safe.config_from_dict(meta['config'])
  k = k if k is not None else (config.eval.get('knn_k') or 1)
  path = pathlib.Path(workdir) / KNN_DIR / f'{kind}_{int(meta["step"])}.npz'
  whitened = config.eval.get('knn_shrinkage') is not None
  cached = _read_knn_cache(path, meta, whitened)
  if cached is None:
    cached = {**_reference_features(config, scorer),
              'fingerprint': _fingerprint(meta)}
    _write_knn_cache(path, cached)
  if not 1 <= k <= len(cached['train']):
    raise score_error.ScoreError(
        f'--knn_k={k}: must be between 1 and the '
        f'{len(cached["train"])} training normals of the run\'s memory bank.')
  index = scoring.KnnIndex(cached['train'], k,
                           whitening=whitening.Whitening.from_arrays(cached))
  threshold = metrics.threshold_at_fpr(index(cached['val_normal']),
                                       float(config.eval.threshold_fpr))
  return KnnReference(index, float(threshold), path)
