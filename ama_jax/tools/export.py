r"""Writes a trained model as a self-contained scorer: StableHLO via jax.export.

  python -m ama_jax.tools.export --workdir=W --output=DIR \
      [--kind=best|latest] [--step=N] [--platforms=cpu,cuda,tpu] \
      [--savedmodel]

DIR then holds

* `scorer.jaxexport`: a serialized `jax.export.Exported` (StableHLO plus its
  calling convention) of

      scorer(images: float32 [batch, H, W, C] in [-1, 1])
        -> (r: float32 [batch], score: float32 [batch],
            is_anomaly: bool [batch])

  with the encoder, generator and critic weights (the moving averages if
  the run kept them, `train_state.scoring_variables`), mu, sigma, the calibrated
  score's kind ('two_sided' (R - mu)^2 / (2 sigma^2) or 'one_sided'
  (R - mu) / sigma) and the decision threshold (is_anomaly = score >
  threshold) baked in as constants. `batch` is symbolic: any number of
  images per call. Lowered for every platform in `--platforms`.
* `scorer.json`: what it expects and computes (image shape, the conversion
  the run applied to its training images, calibration, where it came from,
  jax version, platforms).
* `README.md` and `score_exported.py`: a loader that needs only jax and
  numpy (the README of the repository shows the same code).
* with `--savedmodel`, `savedmodel/`: a TensorFlow SavedModel of the same
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

Known problems (no workdir or checkpoint, a damaged checkpoint, unknown
platforms, an output that is not a folder) end in one line `error: ...` on
stderr and exit status 1 (`--verbose`: with its traceback).
"""
import pathlib
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from ama_jax import errors
from ama_jax import export
from ama_jax import train_state
from ama_jax.tools import cli


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command's flags on `flag_values`."""
  flags.DEFINE_string('workdir', None, 'Workdir of a training run.',
                      flag_values=flag_values)
  flags.DEFINE_string('output', None, 'Folder to write the scorer into.',
                      flag_values=flag_values)
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the best or '
                       'latest one).', flag_values=flag_values)
  flags.DEFINE_enum('kind', None, ['best', 'latest'], 'Checkpoint kind '
                    '(default: best, else latest).', flag_values=flag_values)
  flags.DEFINE_list('platforms', list(export.PLATFORMS), 'Platforms to '
                    'lower for.', flag_values=flag_values)
  flags.DEFINE_bool('savedmodel', False, 'Also write a TensorFlow '
                    'SavedModel (savedmodel/; needs TensorFlow).',
                    flag_values=flag_values)


def main(argv: Sequence[str],
         flag_values: flags.FlagValues = flags.FLAGS) -> int:
  """Runs the command on parsed `flag_values`; returns the exit status."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from ama_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.setup()
  fv = flag_values
  try:
    meta = export.run(fv.workdir, fv.output, kind=fv.kind, step=fv.step,
                      platforms=fv.platforms, savedmodel=fv.savedmodel)
  except errors.UserError as e:  # ExportError, ScoreError, DataError, ...
    return cli.report(e, flag_values=fv)  # One line, whatever the cause.
  source = meta['source']
  print(f'exported {source["kind"]} step {source["step"]} of '
        f'{source["workdir"]} to {pathlib.Path(fv.output)}: '
        f'{export.FUNCTION_FILE} ({", ".join(meta["platforms"])}), '
        f'{export.META_FILE}, score_exported.py'
        + (', savedmodel/' if fv.savedmodel else ''), flush=True)
  return 0


def _cli_main(argv: Sequence[str]) -> int:
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  return main(argv)


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['workdir', 'output'])
  cli.run_main(_cli_main)
