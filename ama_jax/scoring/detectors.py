"""A trained scorer to score with: a workdir's checkpoint or an export.

`open_detector` opens the detector to score with (the one the run chose,
`chosen_detector`, or a checkpoint's calibrated or kNN score); `open_model`
a training run's checkpoint or a folder written by `python -m
ama_jax.tools.export` (shape, conversion, calibration, and R(x) built on
first use); `load_scorer` restores a checkpoint's scorer from the workdir
alone. A problem raises `score_error.ScoreError`.
"""
import dataclasses
import functools
import json
import math
import os
import pathlib
from typing import Callable, Optional

from absl import logging
import jax
import numpy as np

from ama_jax.checkpoints import checkpoint_files
from ama_jax.checkpoints import checkpoint_reading
from ama_jax import errors
from ama_jax.reporting import json_safe
from ama_jax.models import nets
from ama_jax.scoring import export_format
from ama_jax.scoring import knn_reference
from ama_jax.scoring import score_error
from ama_jax.scoring import scoring
from ama_jax.training import train_state
from ama_jax.data import image_files


def locate(workdir: pathlib.Path, kind: Optional[str],
           step: Optional[int]) -> tuple[str, Optional[int]]:
  """(kind, step) of the checkpoint to use, or a `score_error.ScoreError`.

  Without `kind` and `step`: the best checkpoint, else the latest one (a
  run whose validation held no anomalies keeps no best checkpoint).
  """
  if not workdir.is_dir():
    raise score_error.ScoreError(
        f'Workdir {workdir} does not exist; pass the --workdir '
        'of a training run.')
  steps = {k: checkpoint_reading.available_steps(workdir, k)
           for k in (checkpoint_files.BEST, checkpoint_files.LATEST)}
  if not any(steps.values()):
    raise score_error.ScoreError(
        f'No checkpoint in {workdir} (expected {workdir}/best or '
        f'{workdir}/checkpoints with a saved step); train first '
        'with `python -m ama_jax.main`.')
  if step is None:
    if kind is None and not steps[checkpoint_files.BEST]:
      logging.info('%s has no best checkpoint (no model selection); using '
                   'the latest one.', workdir)
      return checkpoint_files.LATEST, None
    kind = kind or checkpoint_files.BEST
    if not steps[kind]:
      other = next(k for k in steps if k != kind)
      raise score_error.ScoreError(
          f'No {kind} checkpoint in {workdir}; saved {other} '
          f'steps: {steps[other]} (use --kind={other}).')
    return kind, None
  for k in ([kind] if kind else [checkpoint_files.BEST,
                                  checkpoint_files.LATEST]):
    if step in steps[k]:
      return k, step
  raise score_error.ScoreError(f'No checkpoint at step {step} in {workdir}' + (
      f' ({kind})' if kind else '') + f'; saved steps: best {steps["best"]}, '
      f'latest {steps["latest"]}.')


def restore_state(workdir: pathlib.Path, kind: str, meta: dict):
  """(state, autoencoder, critic) of a checkpoint, from meta['config']."""
  config = json_safe.config_from_dict(meta['config'])
  image_shape = tuple(meta['image_shape'])
  try:
    # Shapes and dtypes only: nothing is initialized or compiled.
    abstract = jax.eval_shape(functools.partial(
        train_state.create_train_state, config=config, image_shape=image_shape),
        jax.random.key(0))
    ae_model, critic_model = nets.create_models(config.model, image_shape,
                                                  inference=True)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise score_error.ScoreError(
        f'The config saved in the {kind} checkpoint of {workdir} '
        'does not build a model with this version of ama_jax '
        f'({type(e).__name__}: {e}).') from e
  try:
    state, _ = checkpoint_reading.restore(workdir, abstract, kind=kind,
                                          step=meta['step'])
  except (FileNotFoundError, ValueError, errors.CheckpointError) as e:
    raise score_error.ScoreError(str(e).splitlines()[0]) from e
  logging.info('Restored %s checkpoint step %d of %s (val AUROC %s).', kind,
               meta['step'], workdir, meta.get('val_auroc'))
  return state, ae_model, critic_model


def load_scorer(workdir: os.PathLike | str, *, kind: Optional[str] = None,
                step: Optional[int] = None, batch_size: int = 500
                ) -> tuple[scoring.Scorer, dict]:
  """Restores a checkpoint: (scorer, meta), from the workdir alone.

  Args:
    workdir: the training run's workdir.
    kind: 'best' or 'latest'; None: best (else latest), or with `step`,
      where it is.
    step: a saved step; None: the best (or latest) one.
    batch_size: images per scoring call.

  Raises:
    score_error.ScoreError: no such checkpoint, or one that cannot be used.
  """
  workdir = pathlib.Path(workdir)
  kind, step = locate(workdir, kind, step)
  meta = read_checked_meta(workdir, kind, step)
  return _scorer_from_meta(workdir, kind, meta, batch_size), meta


def _scorer_from_meta(workdir: pathlib.Path, kind: str, meta: dict,
                      batch_size: int) -> scoring.Scorer:
  """Rebuilds the models and abstract state from meta['config'], restores."""
  state, ae_model, critic_model = restore_state(workdir, kind, meta)
  return scoring.scorer_from_state(state, ae_model, critic_model,
                                   batch_size=batch_size)


def read_checked_meta(workdir: pathlib.Path, kind: str,
                      step: Optional[int]) -> dict:
  """The checkpoint's meta, checked for what scoring needs."""
  try:
    meta = checkpoint_reading.read_meta(workdir, kind=kind, step=step)
  except errors.CheckpointDamagedError as e:
    other = (checkpoint_files.LATEST if kind == checkpoint_files.BEST
             else checkpoint_files.BEST)
    raise score_error.ScoreError(
        f'{errors.one_line(e).rstrip(".")}. Score another checkpoint '
        f'(--kind={other}, or --step=N).') from e
  except (FileNotFoundError, ValueError, OSError) as e:
    raise score_error.ScoreError(
        f'Cannot read checkpoint metadata in {workdir}: '
        f'{str(e).splitlines()[0]}') from e
  where = f'{kind} checkpoint step {meta.get("step", step)} of {workdir}'
  missing = [k for k in ('config', 'image_shape', 'step') if k not in meta]
  if missing:
    raise score_error.ScoreError(
        f'The {where} lacks {missing} in its meta; it was not '
        'written by ama_jax training.')
  missing = [k for k in ('mu', 'sigma', 'threshold')
             if not isinstance(meta.get(k), (int, float))]
  if missing:
    raise score_error.ScoreError(
        f'The {where} has no calibration ({", ".join(missing)} '
        'missing; it was saved before the first validation); '
        'use --kind=best or a later --step.')
  if not (math.isfinite(meta['mu']) and math.isfinite(meta['sigma'])
          and meta['sigma'] > 0):
    raise score_error.ScoreError(
        f'The {where} has an invalid calibration (mu='
        f'{meta["mu"]}, sigma={meta["sigma"]}); use another checkpoint.')
  return meta


@dataclasses.dataclass
class Model:
  """What scoring needs: shape, conversion, calibration and R(x).

  `raw_scores` is built on first use (restoring a checkpoint takes seconds,
  so the inputs are checked first).
  """
  kind: str  # 'best' | 'latest' | 'exported'.
  step: int
  image_shape: tuple[int, int, int]
  conversion: Optional[image_files.Conversion]  # Explicit ones only.
  mu: float
  sigma: float
  threshold: float
  score: str
  build: Callable[[], Callable[[np.ndarray], np.ndarray]]
  # (scorer, k) -> KnnReference for the feature kNN score; None for an
  # exported scorer (it holds no training features).
  knn_reference: Optional[Callable[..., 'knn_reference.KnnReference']] = None
  # An exported scorer's own score: 'calibrated', or 'knn' (then `build`'s
  # function returns (r, kNN distance) and `threshold` is the kNN one).
  detector_score: Optional[str] = None


def chosen_detector(workdir: os.PathLike | str) -> Optional[dict]:
  """results.json['chosen'] of a finished run (`report.detector`), or None
  (no results.json: the run has not finished, or predates it)."""
  path = pathlib.Path(workdir) / 'results.json'
  if not path.is_file():
    return None
  try:
    chosen = json.loads(path.read_text()).get('chosen')
  except (OSError, ValueError) as e:
    raise score_error.ScoreError(
        f'Cannot read {path}: {errors.one_line(e)}') from e
  if chosen is not None and chosen.get('score') not in ('calibrated', 'knn'):
    raise score_error.ScoreError(
        f'{path} chose the score {chosen.get("score")!r}, '
        'which this version cannot score; pass --score.')
  return chosen


def open_detector(workdir: os.PathLike | str, score: str, *,
                  kind: Optional[str] = None, step: Optional[int] = None,
                  batch_size: int = 500) -> tuple[Model, str]:
  """(model, score) for scoring with `score`: 'chosen' (the detector the
  run chose: its checkpoint, score and threshold, `chosen_detector`),
  'calibrated' or 'knn'.

  Raises:
    score_error.ScoreError: as `open_model`, or --kind / --step with 'chosen'.
  """
  if score != 'chosen' or export_format.is_exported(pathlib.Path(workdir)):
    model = open_model(workdir, kind=kind, step=step, batch_size=batch_size)
    if model.kind == 'exported':
      if score == 'chosen':
        score = model.detector_score
      elif score == 'knn' and model.detector_score != 'knn':
        model.knn_reference = None  # Nothing to compare with.
    return model, score
  chosen = chosen_detector(workdir)
  if chosen is None:
    if not pathlib.Path(workdir).is_dir():  # open_model names the problem.
      return open_model(workdir, kind=kind, step=step,
                        batch_size=batch_size), 'calibrated'
    logging.warning('%s has no results.json (the run has not finished): '
                    'scoring with the calibrated score.', workdir)
    return open_model(workdir, kind=kind, step=step,
                      batch_size=batch_size), 'calibrated'
  if kind is not None or step is not None:
    raise score_error.ScoreError(
        f'--score=chosen scores with the checkpoint the run chose '
        f'({chosen["checkpoint"]} step {chosen["step"]}); to score another '
        'one, pass --score=calibrated or --score=knn with --kind / --step.')
  model = open_model(workdir, kind=chosen['checkpoint'], step=chosen['step'],
                     batch_size=batch_size)
  if chosen['score'] == 'calibrated':  # The final calibration (all normals).
    cal = chosen['calibration']
    model = dataclasses.replace(model, mu=cal['mu'], sigma=cal['sigma'],
                                threshold=cal['threshold'],
                                score=cal['score'])
  return model, chosen['score']


def _conversion(data_config: dict) -> Optional[image_files.Conversion]:
  try:
    conv = image_files.conversion(data_config)
  except image_files.ImageError:
    return None  # Not scoring's business: shapes must then match.
  return conv if conv.explicit else None


def open_model(workdir: os.PathLike | str, *, kind: Optional[str] = None,
               step: Optional[int] = None, batch_size: int = 500) -> Model:
  """A training workdir's checkpoint or an exported scorer's directory.

  Raises:
    score_error.ScoreError: no such checkpoint or export, or one that cannot
      be used.
  """
  workdir = pathlib.Path(workdir)
  if export_format.is_exported(workdir):
    if kind is not None or step is not None:
      raise score_error.ScoreError(
          f'{workdir} is an exported scorer: it has no --kind or --step.')
    try:
      exported, meta = export_format.load(workdir)
    except export_format.ExportError as e:
      raise score_error.ScoreError(str(e)) from e
    calibration = meta['calibration']
    image_shape = tuple(int(d) for d in meta['image_shape'])

    def build():
      call = jax.jit(exported.call)

      def raw(images: np.ndarray) -> np.ndarray:
        n = len(images)
        if n < batch_size:  # One shape for every call: one compilation.
          images = np.concatenate([images, np.zeros(
              (batch_size - n, *image_shape), np.float32)])
        out = call(images)
        if knn:  # The exported score is the kNN distance: (r, score).
          return np.asarray(out[0])[:n], np.asarray(out[1])[:n]
        return np.asarray(out[0])[:n]
      return raw

    knn = meta.get('detector', {}).get('score') == 'knn'
    threshold = (meta['detector']['threshold'] if knn
                 else calibration['threshold'])
    return Model('exported', meta['source']['step'], image_shape,
                 _conversion(meta.get('preprocessing', {})),
                 calibration['mu'], calibration['sigma'],
                 threshold, calibration['score'], build,
                 detector_score='knn' if knn else 'calibrated')
  kind, step = locate(workdir, kind, step)
  meta = read_checked_meta(workdir, kind, step)
  return Model(kind, meta['step'], tuple(int(d) for d in meta['image_shape']),
               _conversion(meta['config'].get('data', {})), meta['mu'],
               meta['sigma'], meta['threshold'],
               meta.get('score', 'two_sided'),
               lambda: _scorer_from_meta(workdir, kind, meta, batch_size),
               functools.partial(knn_reference.knn_reference, workdir, kind,
                                 meta))
