r"""Writes a trained model as a self-contained scorer: StableHLO via jax.export.

  python -m ama_jax.tools.export --workdir=W --output=DIR \
      [--score=chosen|calibrated|knn] [--kind=best|latest] [--step=N] \
      [--platforms=cpu,cuda,tpu] [--savedmodel]

writes the detector run W chose (`--score=chosen`, the default: its
checkpoint, score and threshold from `results.json`; `ama_jax.tools.score`
scores with the same), or the given score of a checkpoint, as a scorer into the folder DIR: `scorer.jaxexport`
(StableHLO of images -> (r, score, is_anomaly), symbolic batch, lowered for
every platform in `--platforms`), `scorer.json`, a loader that needs only
jax and numpy, and with `--savedmodel` a TensorFlow SavedModel; what each
holds and how its scores compare with `ama_jax.tools.score` is in the
docstring of `ama_jax.scoring.export`, which does the work.

Known problems (no workdir or checkpoint, a damaged checkpoint, unknown
platforms, an output that is not a folder) end in one line `error: ...` on
stderr and exit status 1 (`--verbose`: with its traceback).
"""
import pathlib
from typing import Sequence

from absl import app
from absl import flags

from ama_jax import errors
from ama_jax.scoring import export
from ama_jax.scoring import export_format
from ama_jax.tools import cli


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command's flags on `flag_values`."""
  cli.define_checkpoint_flags('Workdir of a training run.', flag_values)
  flags.adopt_module_key_flags(cli, flag_values)
  flags.DEFINE_string('output', None, 'Folder to write the scorer into.',
                      flag_values=flag_values)
  flags.DEFINE_list('platforms', list(export.PLATFORMS), 'Platforms to '
                    'lower for.', flag_values=flag_values)
  flags.DEFINE_enum('score', 'chosen', list(export.SCORES), 'chosen: the '
                    "detector the run chose (results.json's 'chosen': "
                    'checkpoint, score, threshold); calibrated or knn: that '
                    'score of --kind / --step.', flag_values=flag_values)
  flags.DEFINE_bool('savedmodel', False, 'Also write a TensorFlow '
                    'SavedModel (savedmodel/; needs TensorFlow).',
                    flag_values=flag_values)


def main(argv: Sequence[str],
         flag_values: flags.FlagValues = flags.FLAGS) -> int:
  """Runs the command on parsed `flag_values`; returns the exit status."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  from ama_jax.process import runtime  # pylint: disable=g-import-not-at-top
  runtime.setup()
  fv = flag_values
  try:
    meta = export.run(fv.workdir, fv.output, kind=fv.kind, step=fv.step,
                      platforms=fv.platforms, savedmodel=fv.savedmodel,
                      score=fv.score)
  except errors.UserError as e:  # ExportError, ScoreError, DataError, ...
    return cli.report(e, flag_values=fv)  # One line, whatever the cause.
  source = meta['source']
  print(f'exported the {meta["detector"]["score"]} score of the '
        f'{source["kind"]} checkpoint, step {source["step"]}, of '
        f'{source["workdir"]} to {pathlib.Path(fv.output)}: '
        f'{export_format.FUNCTION_FILE} ({", ".join(meta["platforms"])}), '
        f'{export_format.META_FILE}, score_exported.py'
        + (', savedmodel/' if fv.savedmodel else ''), flush=True)
  return 0


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['workdir', 'output'])
  cli.run_main(cli.quiet_logging(main))
