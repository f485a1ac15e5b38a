r"""Scores new images with a trained AMA model and writes a CSV.

  python -m ama_jax.tools.score --workdir=/tmp/ama --input=images.npy \
      --output=scores.csv [--kind=best|latest] [--step=N] [--batch_size=500]
      [--progress=auto|on|off] [--score=chosen|calibrated|knn [--knn_k=K]]

`--workdir` is a training run's workdir, or a folder written by
`python -m ama_jax.tools.export` (then only its `scorer.jaxexport` and
`scorer.json` are read: no checkpoint, no flax model). A workdir needs
nothing else either: the model, its image shape, the conversion its training
images went through and the calibration (mu, sigma, threshold) come from the
checkpoint's `meta` item; no config file and no training data are read.
Without `--step`, the best-validation checkpoint (`<workdir>/best`) is used,
or the latest one when the run kept none (a run whose validation had no
anomalies keeps its last state); `--kind=latest` takes the latest training
checkpoint; `--step=N` takes step N from `--kind`, or, with no `--kind`,
from `best` and else `latest`.

Inputs (`--input`):
- `.npy` (memory-mapped and read in chunks of `--batch_size`, so that
  arrays larger than memory score with bounded memory), or `.npz` (key
  `images`, else `x`, else its first array; read whole): [N, H, W] or
  [N, H, W, C]. Integer arrays must hold pixel values 0..255 and are
  converted as in training (x / 127.5 - 1); float arrays must already be in
  [-1, 1] (convert [0, 1] images with 2 x - 1 first: a float array in [0, 1]
  is read as [-1, 1] data, and a warning says so).
- A folder of PNG/JPEG/BMP files, scored in file-name order (read in
  chunks); every non-hidden entry must be such an image. Files are read as
  in training (`ama_jax/data/image_files.py`).
- A single PNG/JPEG/BMP file, or an uncompressed IDX image file (magic
  2051, e.g. `t10k-images-idx3-ubyte`).

Image shape: when the run converted its training images
(`data.image_size` / `data.channels`, e.g. `configs/folder.py`), image
files and integer arrays of any size go through the same conversion
(`image_files.fit` with the run's `data.resize`). Otherwise they must have
the model's shape, except that grey images are repeated to RGB for a
3-channel model, RGB images with equal channels become grey for a 1-channel
model and a fully opaque alpha channel is dropped; anything else is an error
(convert the images first).

Output: CSV with columns `id` (file name, or row index for arrays), `r` (raw
R(x)), `score` (calibrated, (R - mu)^2 / (2 sigma^2), or (R - mu) / sigma
for a one-sided run) and `is_anomaly` (1 if score > threshold else 0), in
input order, written atomically (a temporary file in the same folder, then
renamed). For an exported scorer, `r` comes from the exported function and
`score`, `is_anomaly` are computed from it here as for a checkpoint.

`--score=chosen` (the default) scores with the detector the run chose at
its end (`results.json['chosen']`, see `eval.selection`): its checkpoint
(best or latest), its score (calibrated or feature kNN) and its threshold,
so that the run's own test split scores with the AUROC that results.json
and the run's summary give. The output then has the chosen score's column
(`score` or `knn`). A run without results.json (not finished) scores with
`--score=calibrated`, and a warning says so; an exported folder holds one
detector, which `chosen` uses. `--kind` / `--step` pick a checkpoint
themselves: give them with `--score=calibrated` or `--score=knn`.

`--score=knn` (a checkpoint only; not in the paper) writes the feature kNN
score instead of `score`: column `knn`, the distance from f(x, G(E(x)))
to the `--knn_k`-th nearest training normal's features, whitened by the
training normals' feature covariance as the run's `eval.knn_shrinkage`
says (the `knn_*` metrics of the run's final evaluation), and
`is_anomaly` from a threshold set, as the calibrated one, on the
validation normals at the run's `eval.threshold_fpr`. The training normals' features are the run's
memory bank (`eval.knn_bank_size`), stored by its final evaluation in
`<workdir>/knn_reference/<kind>_<step>.npz` for the best and latest
checkpoints; for another checkpoint the run's training data are read again
from its config (same rows, same seed), and the bank is computed and cached
there on first use.

Progress: with `--progress=auto` (default) inputs of at least 10,000 images
show a progress line on stderr (updated in place on a terminal, every 10%
otherwise; `ama_jax/reporting/progress.py`).

Problems with the inputs (missing workdir or checkpoint, a damaged
checkpoint, unreadable or non-image files, wrong image size or channels,
NaN/Inf pixels, empty input, unwritable output) end the program with a
one-line `error: ...` message on stderr and exit status 1 (`--verbose`: with
its traceback). A damaged checkpoint is never read: `--kind=latest` without
`--step` then takes the newest readable step (a warning names the damaged
one); the best step, or an explicit `--step`, is an error. Logs are quiet
(warnings only) unless `--verbosity=0` is passed.
"""
import dataclasses
import os
from typing import Any, Callable, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from ama_jax import errors
from ama_jax.scoring import csv_output
from ama_jax.scoring import detectors
from ama_jax.scoring import knn_reference
from ama_jax.reporting import progress as progress_lib
from ama_jax.scoring import score_error
from ama_jax.scoring import score_inputs
from ama_jax.scoring import scoring
from ama_jax.tools import cli

PROGRESS_MIN_IMAGES = 10000  # --progress=auto shows it from this many.
SCORES = ('chosen', 'calibrated', 'knn')  # --score.


# ----------------------------------------------------------------------------
# The program.
# ----------------------------------------------------------------------------
def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command's flags on `flag_values`.

  Called only when the command runs, not at import: `ama_jax.main` defines a
  `--workdir` too, and one test process may import both modules.
  """
  cli.define_checkpoint_flags(
      'Workdir of a training run, or a folder written by '
      '`python -m ama_jax.tools.export`.', flag_values)
  flags.adopt_module_key_flags(cli, flag_values)
  flags.DEFINE_string('input', None, 'A .npy/.npz array, a folder of '
                      'PNG/JPEG/BMP images, one image or an IDX image file.',
                      flag_values=flag_values)
  flags.DEFINE_string('output', None, 'CSV file to write.',
                      flag_values=flag_values)
  flags.DEFINE_integer('batch_size', 500, 'Images per scoring call (and per '
                       'chunk read).', lower_bound=1, flag_values=flag_values)
  flags.DEFINE_enum('progress', 'auto', ['auto', 'on', 'off'], 'Progress on '
                    f'stderr (auto: from {PROGRESS_MIN_IMAGES} images).',
                    flag_values=flag_values)
  flags.DEFINE_enum('score', 'chosen', list(SCORES), 'chosen: the score, '
                    "checkpoint and threshold the run chose (results.json's "
                    "'chosen'); calibrated: the "
                    "run's calibrated score of R(x) (the paper's); knn: the "
                    'distance of f(x, G(E(x))) to the k-th nearest training '
                    "normal's (not in the paper; needs the run's training "
                    'data, cached in <workdir>/knn_reference on first use).',
                    flag_values=flag_values)
  flags.DEFINE_integer('knn_k', None, 'With --score=knn: which neighbour '
                       "(default: the run's eval.knn_k, else 1).",
                       lower_bound=1, flag_values=flag_values)


def check_score(model: detectors.Model, score: str,
                workdir: os.PathLike | str) -> None:
  """Refuses `score` where `model` cannot give it (before any restore)."""
  if score == 'knn' and model.knn_reference is None and (
      model.detector_score != 'knn'):
    raise score_error.ScoreError(
        f'{workdir} is an exported scorer of the calibrated score: it holds '
        'no training features for --score=knn; score with the training '
        'workdir, or with --score=calibrated.')


@dataclasses.dataclass
class Detector:
  """A checkpoint's (or export's) scorer, restored once, and its threshold.

  Attributes:
    model: what `detectors.open_detector` opened.
    score: 'calibrated' or 'knn'.
    raw_scores: R(x) of a chunk (`model.build()`).
    knn: the feature kNN reference for 'knn' from a checkpoint, else None.
  """
  model: detectors.Model
  score: str
  raw_scores: Callable[[np.ndarray], Any]
  knn: Optional[knn_reference.KnnReference]

  @classmethod
  def build(cls, model: detectors.Model, score: str,
            knn_k: Optional[int] = None) -> 'Detector':
    """Restores the networks (seconds) and, for 'knn', the reference."""
    raw_scores = model.build()
    knn = (model.knn_reference(raw_scores, knn_k)
           if score == 'knn' and model.kind != 'exported' else None)
    return cls(model, score, raw_scores, knn)

  @property
  def column(self) -> str:
    """The score's CSV column: 'score' (calibrated) or 'knn'."""
    return 'score' if self.score == 'calibrated' else 'knn'

  @property
  def threshold(self) -> float:
    """Above it, an image is an anomaly."""
    if self.knn is not None:
      return self.knn.threshold
    return self.model.threshold

  def scores(self, inputs: score_inputs.Inputs, batch_size: int,
             bar: Optional[progress_lib.Progress] = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """(raw R, the detector's score) of every input, in input order."""
    r, distances = [], []
    for images in inputs.chunks(batch_size):
      if self.knn is None:
        out = self.raw_scores(images)
        if isinstance(out, tuple):  # An exported kNN detector: (r, score).
          distances.append(np.asarray(out[1], np.float32))
          out = out[0]
        r.append(np.asarray(out, np.float32))
      else:
        chunk_r, features = self.raw_scores.with_features(images)
        r.append(np.asarray(chunk_r, np.float32))
        distances.append(self.knn.index(features))
      if bar is not None:
        bar.update(len(images))
    r = np.concatenate(r)
    if self.score == 'calibrated':
      model = self.model
      return r, scoring.calibrated_scores(r, model.mu, model.sigma,
                                          model.score)
    return r, np.concatenate(distances)


def run(workdir: os.PathLike | str, input_path: os.PathLike | str,
        output: os.PathLike | str, *, kind: Optional[str] = None,
        step: Optional[int] = None, batch_size: int = 500,
        progress: str = 'auto', score: str = 'chosen',
        knn_k: Optional[int] = None) -> dict:
  """Scores `input_path` with a checkpoint (or export) of `workdir`.

  Args:
    score: 'chosen' (the run's detector, `detectors.chosen_detector`),
      'calibrated' (columns r, score) or 'knn' (r, knn: the feature kNN
      distance, see `knn_reference.knn_reference`).
    knn_k: with 'knn', which neighbour (None: the run's `eval.knn_k`).
    Others: as the command's flags.

  Returns:
    A summary: `kind`, `step`, `score`, `num_images`, `num_anomalies`,
    `threshold` (and with 'knn', `knn_reference`: the cached features).

  Raises:
    score_error.ScoreError: any problem with the inputs (the message says
      what to fix).
  """
  for flag, value in (('workdir', workdir), ('input', input_path),
                      ('output', output)):
    if not value:
      raise score_error.ScoreError(f'--{flag} is required.')
  if score not in SCORES:
    raise score_error.ScoreError(f'--score={score!r}: expected one of '
                                 f'{", ".join(SCORES)}.')
  if knn_k is not None and score != 'knn':
    raise score_error.ScoreError('--knn_k applies to --score=knn only.')
  output = csv_output.check_output(output)
  # Cheap checks first: metadata, then the images, then the model.
  model, score = detectors.open_detector(workdir, score, kind=kind,
                                         step=step, batch_size=batch_size)
  check_score(model, score, workdir)
  inputs = score_inputs.open_inputs(input_path, model.image_shape,
                                    model.conversion, chunk=batch_size)
  detector = Detector.build(model, score, knn_k)
  bar = progress_lib.Progress(len(inputs), progress == 'on' or (
      progress == 'auto' and len(inputs) >= PROGRESS_MIN_IMAGES))
  r, scores = detector.scores(inputs, batch_size, bar)
  threshold, column, knn = detector.threshold, detector.column, detector.knn
  is_anomaly = scores > threshold
  csv_output.write_csv(output, inputs.ids, r, scores, is_anomaly, column)
  summary = {'kind': model.kind, 'step': model.step, 'score': score,
             'num_images': len(r), 'num_anomalies': int(is_anomaly.sum()),
             'threshold': threshold}
  if knn is not None:
    summary['knn_reference'] = str(knn.path)
  logging.info('Wrote %d scores to %s: %d above the %s threshold %.4g (%s '
               'step %d).', len(r), output, summary['num_anomalies'],
               column, threshold, model.kind, model.step)
  return summary


def main(argv: Sequence[str],
         flag_values: flags.FlagValues = flags.FLAGS) -> int:
  """Runs the command on parsed `flag_values`; returns the exit status."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  fv = flag_values
  from ama_jax.process import malloc_tuning  # pylint: disable=g-import-not-at-top
  from ama_jax.process import runtime  # pylint: disable=g-import-not-at-top
  # Scoring streams small batches: glibc's own malloc keeps resident memory
  # bounded (a 200,000-image .npy peaked at 1.18 GB, against 1.74 GB with
  # the training step's 'fast' setting, which never returns freed memory).
  # AMA_JAX_MALLOC still overrides.
  os.environ.setdefault(malloc_tuning.ENV, 'off')
  runtime.setup()  # Before JAX computes: malloc, TF off the GPU.
  try:
    run(fv.workdir, fv.input, fv.output, kind=fv.kind, step=fv.step,
        batch_size=fv.batch_size, progress=fv.progress, score=fv.score,
        knn_k=fv.knn_k)
  except errors.UserError as e:  # ScoreError, CheckpointError, ...
    return cli.report(e, flag_values=fv)  # One line, whatever the cause.
  return 0


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['workdir', 'input', 'output'])
  cli.run_main(cli.quiet_logging(main))
