r"""Writes a trained model as a self-contained scorer: StableHLO via jax.export.

The export command, `python -m ama_jax.tools.export`, calls `run`; `load`
and `is_exported` (`ama_jax.scoring.export_format`) read a folder it wrote.

`run` writes a checkpoint of a training workdir into a folder DIR, which
then holds

* `scorer.jaxexport`: a serialized `jax.export.Exported` (StableHLO plus its
  calling convention) of

      scorer(images: float32 [batch, H, W, C] in [-1, 1])
        -> (r: float32 [batch], score: float32 [batch],
            is_anomaly: bool [batch])

  where `score` is the detector's score: by default the one the run chose
  (results.json['chosen']): the calibrated score of R(x), or the feature
  kNN distance with the run's memory bank of training features baked in,
  so that the export scores exactly as the checkpoint does with
  `ama_jax.tools.score`. Baked in as constants: the encoder, generator
  and critic weights (the moving averages if
  the run kept them, `train_state.scoring_variables`), mu, sigma, the
  calibrated score's kind ('two_sided' (R - mu)^2 / (2 sigma^2) or
  'one_sided' (R - mu) / sigma) and the decision threshold (is_anomaly =
  score > threshold), and for the kNN score the bank and k. `batch` is symbolic: any number of
  images per call. Lowered for every platform in `platforms`.
* `scorer.json`: what it expects and computes (image shape, the conversion
  the run applied to its training images, calibration, where it came from,
  jax version, platforms).
* `README.md` and `score_exported.py`: a loader that needs only jax and
  numpy.
* with `savedmodel=True`, `savedmodel/`: a TensorFlow SavedModel of the same
  function (jax2tf, native serialization: the StableHLO inside an
  XlaCallModule op) for TF Serving or `tf.saved_model.load`; signature
  `serving_default(images: float32 [None, H, W, C]) -> {'r', 'score',
  'is_anomaly'}`. Needs TensorFlow (in requirements.txt) to write, and
  TensorFlow only to load.

Scores agree with `python -m ama_jax.tools.score` on the same images up to
float32 rounding of the calibration constants (~1e-6 relative): the exported
function computes in float32 where `ama_jax.tools.score` calibrates in
float64, so an image that sits exactly on the threshold may be classified
differently. `python -m ama_jax.tools.score --workdir=DIR` scores with the
exported directory too. A serialized export is readable by later jax versions
within `jax.export`'s compatibility window (see its documentation).

Problems with the inputs (bad platforms, an output that is not a folder)
raise `export_format.ExportError`; a missing or damaged checkpoint
`score_error.ScoreError`.
"""
import json
import os
import pathlib
from typing import Any, Optional, Sequence

from absl import logging
import jax
from jax import export as jax_export
import jax.numpy as jnp
import numpy as np

from ama_jax.reporting import json_safe
from ama_jax.scoring import detectors
from ama_jax.scoring import export_format
from ama_jax.scoring import scoring
from ama_jax.training import train_state

OUTPUTS = ('r', 'score', 'is_anomaly')
PLATFORMS = ('cpu', 'cuda', 'tpu')
SCORES = ('chosen', 'calibrated', 'knn')  # What the export computes.

# The loader the README shows (tests run this exact text in a fresh process
# that imports neither ama_jax nor flax).
LOADER = '''\
import json
import sys

import numpy as np
from jax import export


def load_scorer(directory):
  """(scorer, meta): scorer(uint8 images [N, H, W(, C)]) -> r, score, flag."""
  with open(f'{directory}/scorer.json') as f:
    meta = json.load(f)
  with open(f'{directory}/scorer.jaxexport', 'rb') as f:
    exported = export.deserialize(bytearray(f.read()))

  def scorer(images, batch_size=1000):
    x = np.asarray(images).reshape(len(images), *meta['image_shape'])
    x = x.astype(np.float32) / 127.5 - 1.0  # uint8 0..255 -> [-1, 1].
    out = [exported.call(x[i:i + batch_size])
           for i in range(0, len(x), batch_size)]
    return tuple(np.concatenate([np.asarray(o[k]) for o in out])
                 for k in range(3))
  return scorer, meta


if __name__ == '__main__':
  # python score_exported.py EXPORT_DIR images.npy scores.csv
  scorer, meta = load_scorer(sys.argv[1])
  r, score, is_anomaly = scorer(np.load(sys.argv[2]))
  np.savetxt(sys.argv[3], np.stack([r, score, is_anomaly], axis=1),
             delimiter=',', header='r,score,is_anomaly', comments='')
'''


def scoring_function(ae_model, critic_model, ae_vars, critic_vars,
                     calibration: scoring.Calibration):
  """images [b, H, W, C] -> (r, score, is_anomaly), constants baked in."""
  mu, sigma = np.float32(calibration.mu), np.float32(calibration.sigma)
  threshold = np.float32(calibration.threshold)
  if calibration.score not in scoring.SCORES:
    raise export_format.ExportError(
        f'Unknown score {calibration.score!r}; valid: {scoring.SCORES}.')

  def scorer(images: jax.Array):
    r = scoring.raw_scores(ae_model, critic_model, ae_vars, critic_vars,
                           images)
    z = (r - mu) / sigma  # scoring.calibrated_scores, in float32.
    score = z * z / 2.0 if calibration.score == 'two_sided' else z
    return r, score, score > threshold

  return scorer


def knn_scoring_function(ae_model, critic_model, ae_vars, critic_vars,
                         bank: np.ndarray, k: int, threshold: float,
                         space=None):
  """images [b, H, W, C] -> (r, kNN distance, is_anomaly): the feature kNN
  score (`scoring.KnnIndex`) with the memory bank and the whitening `space`
  (`ama_jax.scoring.whitening`, or None) baked in."""
  bank = np.asarray(bank, np.float32)
  if space is not None:
    bank = space(bank)
  bank_sq = np.einsum('ij,ij->i', bank, bank)
  threshold = np.float32(threshold)

  def scorer(images: jax.Array):
    r, features = scoring.scores_and_features(ae_model, critic_model,
                                              ae_vars, critic_vars, images)
    if space is not None:
      features = space.traced(features)
    d = scoring.kth_sq_distance(features, bank, bank_sq, k, portable=True)
    score = jnp.sqrt(jnp.maximum(d, 0.0))
    return r, score, score > threshold

  return scorer


def _detector(workdir: pathlib.Path, score: str, kind: Optional[str],
              step: Optional[int]):
  """(model, score, chosen) of `detectors.open_detector` for the export."""
  if score not in SCORES:
    raise export_format.ExportError(
        f'--score={score!r}: choose from {", ".join(SCORES)}.')
  model, score = detectors.open_detector(workdir, score, kind=kind,
                                         step=step)
  if model.kind == 'exported':
    raise export_format.ExportError(
        f'{workdir} is already an exported scorer; export the '
        'training workdir it came from.')
  return model, score


def export_scorer(scorer, image_shape: Sequence[int],
                  platforms: Sequence[str] = PLATFORMS
                  ) -> jax_export.Exported:
  """jax.export of `scorer` with a symbolic batch dimension."""
  batch, = jax_export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
  return jax_export.export(jax.jit(scorer), platforms=tuple(platforms))(spec)


def write_savedmodel(path: os.PathLike | str, scorer,
                     image_shape: Sequence[int],
                     platforms: Sequence[str] = PLATFORMS) -> None:
  """`scorer` as a TensorFlow SavedModel (see the module docstring)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  h, w, c = (int(d) for d in image_shape)

  def named(images):
    return dict(zip(OUTPUTS, scorer(images)))

  tf_fn = jax2tf.convert(named, polymorphic_shapes=[f'(b, {h}, {w}, {c})'],
                         native_serialization_platforms=tuple(platforms),
                         with_gradient=False)
  module = tf.Module()
  module.serve = tf.function(
      tf_fn, autograph=False,
      input_signature=[tf.TensorSpec([None, h, w, c], tf.float32,
                                     name='images')])
  tf.saved_model.save(module, str(path), signatures={
      'serving_default': module.serve.get_concrete_function()})


def write(output: os.PathLike | str, exported: jax_export.Exported,
          meta: dict[str, Any]) -> pathlib.Path:
  """Writes the function, its meta, the README and the loader."""
  output = pathlib.Path(output)
  output.mkdir(parents=True, exist_ok=True)
  (output / export_format.FUNCTION_FILE).write_bytes(
      bytes(exported.serialize()))
  (output / export_format.META_FILE).write_text(json.dumps(
      json_safe.to_json(meta, 'meta'), indent=2))
  (output / 'score_exported.py').write_text(LOADER)
  h, w, c = meta['image_shape']
  (output / 'README.md').write_text(
      f'# AMA anomaly scorer ({h}x{w}x{c} images)\n\n'
      'Needs only `jax` and `numpy`:\n\n'
      f'    python score_exported.py . images.npy scores.csv\n\n'
      f'`images.npy`: uint8 [N, {h}, {w}' + (f', {c}' if c > 1 else '')
      + '] (0..255). Higher score = more anomalous; is_anomaly = score > '
      f'{meta["detector"]["threshold"]:.6g} ('
      + (('whitened ' if meta['detector'].get('knn_shrinkage') is not None
          else '')
         + f'feature kNN distance, k={meta["detector"]["knn_k"]}, to a memory '
         f'bank of {meta["detector"]["bank_size"]} training normals'
         if meta['detector']['score'] == 'knn' else
         f'{meta["calibration"]["score"]} calibrated score')
      + ', threshold at '
      f'{meta["calibration"]["threshold_fpr"]:g} false positives on '
      'held-out normals). Images of another size must first be converted as '
      f'in training: {meta["preprocessing"]}.\n\n```python\n{LOADER}```\n')
  return output


def run(workdir: os.PathLike | str, output: os.PathLike | str, *,
        kind: Optional[str] = None, step: Optional[int] = None,
        platforms: Sequence[str] = PLATFORMS,
        savedmodel: bool = False, score: str = 'chosen') -> dict[str, Any]:
  """Exports a checkpoint of `workdir` into `output`; returns the meta.

  `score`: 'chosen' (the detector the run chose, results.json['chosen']:
  its checkpoint, score and threshold; `ama_jax.tools.score` scores the
  same), 'calibrated' or 'knn' (the feature kNN score, its memory bank
  baked in) of `kind` / `step`.

  Raises:
    errors.UserError: export_format.ExportError (bad platforms or output),
      score_error.ScoreError (no usable checkpoint), input_pipeline.DataError
      (a conversion this version does not know).
  """
  unknown = sorted(set(platforms) - set(PLATFORMS))
  if unknown or not platforms:
    raise export_format.ExportError(
        f'--platforms={",".join(platforms)}: choose from '
        f'{",".join(PLATFORMS)}.')
  output = pathlib.Path(output)
  if output.exists() and not output.is_dir():
    raise export_format.ExportError(
        f'Output {output} exists and is not a folder.')
  workdir = pathlib.Path(workdir)
  model, score = _detector(workdir, score, kind, step)
  kind = model.kind
  meta = detectors.read_checked_meta(workdir, kind, model.step)
  state, ae_model, critic_model = detectors.restore_state(workdir, kind, meta)
  ae_vars, critic_vars = train_state.scoring_variables(state)
  calibration = scoring.Calibration(
      mu=model.mu, sigma=model.sigma,
      threshold=(model.threshold if score == 'calibrated'
                 else meta['threshold']),
      threshold_fpr=meta.get('threshold_fpr', float('nan')),
      score=model.score)
  image_shape = tuple(int(d) for d in meta['image_shape'])
  detector = {'score': score}
  if score == 'knn':
    reference = model.knn_reference(scoring.scorer_from_state(
        state, ae_model, critic_model))
    bank = reference.index.bank
    space = reference.index.whitening
    detector.update(threshold=reference.threshold, knn_k=reference.index.k,
                    bank_size=len(bank),
                    knn_shrinkage=meta['config'].get('eval', {}).get(
                        'knn_shrinkage'))
    scorer = knn_scoring_function(ae_model, critic_model, ae_vars,
                                  critic_vars, bank, reference.index.k,
                                  reference.threshold, space)
  else:
    detector['threshold'] = calibration.threshold
    scorer = scoring_function(ae_model, critic_model, ae_vars, critic_vars,
                              calibration)
  exported = export_scorer(scorer, image_shape, platforms)
  data_config = meta['config'].get('data', {})
  from ama_jax.data import data_common  # pylint: disable=g-import-not-at-top
  conv = data_common.conversion(data_config)
  out_meta = {
      'format': export_format.FORMAT,
      'function': export_format.FUNCTION_FILE,
      'inputs': {'images': {
          'shape': ['batch', *image_shape], 'dtype': 'float32',
          'range': [-1.0, 1.0], 'from_uint8': 'x / 127.5 - 1'}},
      'outputs': list(OUTPUTS),
      'image_shape': list(image_shape),
      'preprocessing': {'image_size': conv.image_size,
                        'channels': conv.channels, 'resize': conv.resize},
      'calibration': calibration.to_dict(),
      'detector': detector,
      'source': {'workdir': str(workdir.absolute()), 'kind': kind,
                 'step': meta['step'], 'val_auroc': meta.get('val_auroc')},
      'config': meta['config'],
      'jax_version': jax.__version__,
      'platforms': list(platforms),
      'savedmodel': 'savedmodel' if savedmodel else None,
  }
  try:
    write(output, exported, out_meta)
    if savedmodel:
      write_savedmodel(output / 'savedmodel', scorer, image_shape, platforms)
  except OSError as e:
    raise export_format.ExportError(f'Cannot write {output}: {e}') from e
  logging.info('Exported %s step %d of %s to %s (%s).', kind, meta['step'],
               workdir, output, ', '.join(platforms))
  return out_meta


if __name__ == '__main__':
  raise SystemExit('error: ama_jax.scoring.export is a library module; the command is '
                   'python -m ama_jax.tools.export (programs moved to '
                   'ama_jax/tools/ on 2026-12-01).')
