r"""Runs one of the paper's tables end to end and writes markdown + JSON.

  python -m ama_jax.tools.reproduce --table=fmnist_mnist --seeds=3 --epochs=2
  python -m ama_jax.tools.reproduce --table=mnist_oneclass --seeds=1 --epochs=4
  python -m ama_jax.tools.reproduce --table=ablation --base=fmnist_mnist \
      --epochs=2
  python -m ama_jax.tools.reproduce --table=atypical_vs_sipple \
      --base=fmnist_mnist
  python -m ama_jax.tools.reproduce --table=mnist_oneclass --epochs=10 \
      --grid=loss.lambda_gp=10,0   # lambda_gp chosen per run on validation

Tables (the paper's numbers are in `reproduce_tables.PAPER`):
  mnist_oneclass      Table 1, MNIST row: each digit normal, the rest anomalous.
  fmnist_oneclass     Not in the paper: the same protocol on Fashion-MNIST
                      (each class normal, the other nine anomalous).
  cifar_oneclass      Table 1, CIFAR-10 row (needs the TFDS data).
  fmnist_mnist        Table 2a: Fashion-MNIST normal, MNIST anomalous.
  cifar_svhn          Table 2b: CIFAR-10 normal, SVHN anomalous.
  ablation            Figs. 6 / 9: no interpolation, no atypical selection,
                      neither, beside the full model, on `--base`.
  atypical_vs_sipple  Table 5: atypical selection vs Sipple (2020) negatives
                      (our 'cube' style), with and without interpolation.

Every run is `ama_jax.main`'s training on the config of its row, in
`<out>/<row>/<variant>/e<epochs>_s<seed>/`; a run whose `results.json`
exists with the same config is reused, so an interrupted reproduction resumes
(a partly trained run resumes from its checkpoint), and a table can be
re-reported with `--report_only`. A workdir holding a different config is
an error, never overwritten. `--grid=field=v1,v2` trains every value for
each run (a value other than the config's own in `..._s<seed>_<field>=<v>/`)
and reports, per run, the one with the best validation AUROC. The raw-pixel
baselines of `ama_jax.scoring.baselines` (kNN, PCA, OC-SVM, each hyper-parameter
chosen on validation) run on exactly the same split (same data config and
seed) and are cached beside the runs.

AMA's reported numbers are the test metrics of the checkpoint with the best
validation AUROC (`results.json['test']['best']`); the test split plays no
part in any choice. Fewer epochs than the paper's 100 are allowed and stated
in the output; atypical selection then starts after `--start_epoch` (default,
for the paper's recipe: the paper's 10% of training, at least one epoch; a
1-epoch run starts it after 10% of its steps; the tuned recipe keeps its
config's start: for OOD configs the last third, not before epoch 2).

The console shows which run trains, each run's per-epoch validation line
and the files written; library INFO logs (orbax's, per checkpoint) go to
each run's `log.txt` only, and to the console with `--verbosity=0`.
"""
import ast
from collections.abc import Mapping, Sequence
import pathlib
from typing import Any, Optional

from absl import app
from absl import flags

from ama_jax import errors
from ama_jax.tools import cli
from ama_jax.tools import reproduce_runs
from ama_jax.tools import reproduce_tables

def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
  """`['loss.lambda_gp=0', 'sampling.style=cube']` -> {path: value}."""
  out = {}
  for item in items:
    key, sep, text = item.partition('=')
    if not sep or not key:
      raise ValueError(f'--override {item!r} must look like field=value, '
                       'e.g. loss.lambda_gp=0.')
    try:
      out[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      out[key] = text  # A bare string such as `cube`.
  return out


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
  """`['loss.lambda_gp=10,0']` -> {'loss.lambda_gp': [10, 0]}, checked."""
  grid = {}
  for item in items:
    key, sep, text = item.partition('=')
    if not sep or not key or not text:
      raise ValueError(f'--grid {item!r} must look like field=v1,v2,..., '
                       'e.g. loss.lambda_gp=10,0.')
    if key == 'seed' or key.startswith('data.'):
      raise ValueError(f'--grid {key}: the data and the seed define the '
                       'split that the choice is made on; they cannot be '
                       'chosen on it.')
    values = []
    for t in text.split(','):
      try:
        values.append(ast.literal_eval(t))
      except (ValueError, SyntaxError):
        values.append(t)  # A bare string such as `cube`.
    grid[key] = values
  return grid


def reproduce(table: str, *, base: str, seeds: Sequence[int],
              epochs: Optional[int], out: pathlib.Path,
              classes: Optional[Sequence[str]] = None,
              start_epoch: Optional[int] = None,
              calibration_size: Optional[int] = None,
              overrides: Optional[Mapping[str, Any]] = None,
              report_only: bool = False, with_baselines: bool = True,
              baseline_seeds: Optional[Sequence[int]] = None,
              runlocal: bool = False,
              shard: tuple[int, int] = (0, 1),
              score: str = 'calibrated',
              grid: Optional[Mapping[str, Sequence[Any]]] = None,
              recipes: Sequence[str] = reproduce_tables.RECIPES
              ) -> dict[str, Any]:
  """Trains (or reuses) every run of `table`, then writes its report.

  Baselines run on the split of every (row, seed) of the table, trained or
  not (`baseline_seeds`: only these seeds; None: all). `shard=(i, n)`
  trains only the missing runs whose index in `reproduce_runs.table_runs`
  is i modulo n, so that n workers (processes on one accelerator, or jobs
  of a cluster) share a table without training any run twice; each reports
  what exists, and a last `report_only` call reports the whole table.
  `score` picks AMA's anomaly score (`reproduce_runs.pick_score`); other
  than 'calibrated', it is named in the output files (`..._score-raw`,
  `..._score-val`).

  `grid` ({config field: values}): every run trains each combination of
  values (a value other than the config's own adds `_<field>=<value>` to
  the workdir name, so the plain runs are reused), and reports the one with
  the highest validation AUROC of the reported score
  (`reproduce_runs.val_auroc`; ties: the first listed); the output files
  carry `_grid-<field>`. With a grid, `shard` splits the (run, combination)
  pairs.

  Returns the JSON report; writes `<out>/<name>.md` and `<out>/<name>.json`.
  """
  runs = reproduce_runs.table_runs(table, base, seeds, classes, recipes)
  overrides = dict(overrides or {})
  outcome = reproduce_runs.collect(
      runs, out=out, epochs=epochs, start_epoch=start_epoch,
      calibration_size=calibration_size, overrides=overrides,
      report_only=report_only, with_baselines=with_baselines,
      baseline_seeds=baseline_seeds, runlocal=runlocal, shard=shard,
      score=score, grid=grid)
  num_epochs = epochs if epochs is not None else (
      outcome.run_info[0]['epochs'] if outcome.run_info
      else reproduce_tables.PAPER_EPOCHS)
  return reproduce_tables.write_report(
      out, table, base, runs[0].base, num_epochs, seeds, score=score,
      start_epoch=start_epoch, overrides=overrides, grid=grid,
      records=outcome.records, run_info=outcome.run_info,
      missing=outcome.missing)


_TABLE = flags.DEFINE_enum('table', None, reproduce_tables.TABLES,
                           'The table to reproduce.')
_BASE = flags.DEFINE_enum('base', 'fmnist_mnist', reproduce_tables.BASE_TABLES,
                          'Experiment of `ablation` / `atypical_vs_sipple`.')
_SEEDS = flags.DEFINE_integer('seeds', 1, 'Seeds 0..N-1.')
_EPOCHS = flags.DEFINE_integer(
    'epochs', None, 'Training epochs (None: the config\'s, the paper\'s 100).')
_START_EPOCH = flags.DEFINE_integer(
    'start_epoch', None, 'Atypical selection from this epoch, with either '
    'recipe (None: for the paper\'s recipe 10% of the epochs, at least 1, or '
    '10% of the steps of a 1-epoch run, the paper: 10 of 100; the tuned '
    'recipe keeps its config\'s start).')
_CLASSES = flags.DEFINE_list('classes', None, 'One-class tables: normal '
                             'classes to run (default: all 10).')
_CALIBRATION = flags.DEFINE_integer(
    'calibration_size', None, 'Training normals scored for the per-epoch '
    'validation calibration (None: the config\'s eval.calibration_size; the '
    'final test calibration always uses all).')
_RECIPES = flags.DEFINE_list(
    'recipes', list(reproduce_tables.RECIPES), 'Training recipes to run: '
    'tuned (the configs\' default) and/or paper (their `:paper` variant).')
_OVERRIDE = flags.DEFINE_multi_string(
    'override', [], 'Config override for every run, field=value (repeat).')
_OUT = flags.DEFINE_string('out', 'runs/reproduce', 'Output directory.')
_REPORT_ONLY = flags.DEFINE_bool(
    'report_only', False, 'Only report the runs that exist; train nothing.')
_BASELINES = flags.DEFINE_bool('baselines', True,
                               'Run the raw-pixel baselines beside AMA.')
_BASELINE_SEEDS = flags.DEFINE_integer(
    'baseline_seeds', None, 'Run the baselines on the splits of seeds '
    '0..N-1 only (None: every seed of the table).')
_RUNLOCAL = flags.DEFINE_bool('runlocal', False,
                              'Tiny smoke-run configs (`:runlocal`).')
_SCORE = flags.DEFINE_enum(
    'score', 'calibrated', reproduce_tables.SCORES,
    "AMA's reported score: the paper's 'calibrated' one, 'raw' R(x), 'knn' "
    "(the feature kNN score, not in the paper), 'val': per run, the one "
    "with the highest validation AUROC; or "
    "a selection rule's detector: 'label_free' (last state; its score by "
    "eval.label_free_score), "
    "'val_auroc' (labelled validation), 'chosen' (the run's eval.selection).")
_GRID = flags.DEFINE_multi_string(
    'grid', [], 'field=v1,v2,...: train each value for every run and report'
    ' the one with the best validation AUROC (repeat for a product grid).')
_SHARD = flags.DEFINE_string(
    'shard', '0/1', 'i/n: train only the runs whose index in the table is '
    'i modulo n (n parallel workers; then report with --report_only).')


def parse_shard(text: str) -> tuple[int, int]:
  """'i/n' -> (i, n), with a clear error."""
  try:
    index, count = (int(t) for t in text.split('/'))
  except ValueError:
    raise ValueError(f'--shard={text!r}: expected i/n, e.g. 0/4.') from None
  return reproduce_runs.check_shard(index, count)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _TABLE.value is None:
    raise app.UsageError(
        f'--table is required; one of {reproduce_tables.TABLES}.')
  if _SEEDS.value < 1 or (_EPOCHS.value is not None and _EPOCHS.value < 1):
    raise app.UsageError('--seeds and --epochs must be at least 1.')
  from ama_jax.process import runtime  # pylint: disable=g-import-not-at-top
  runtime.setup()  # As in `ama_jax.main`: before JAX computes.
  try:
    reproduce(_TABLE.value, base=_BASE.value, seeds=range(_SEEDS.value),
              epochs=_EPOCHS.value, out=pathlib.Path(_OUT.value),
              classes=_CLASSES.value, start_epoch=_START_EPOCH.value,
              calibration_size=_CALIBRATION.value,
              overrides=parse_overrides(_OVERRIDE.value),
              report_only=_REPORT_ONLY.value,
              with_baselines=_BASELINES.value,
              baseline_seeds=(None if _BASELINE_SEEDS.value is None
                              else range(_BASELINE_SEEDS.value)),
              runlocal=_RUNLOCAL.value, shard=parse_shard(_SHARD.value),
              score=_SCORE.value, grid=parse_grid(_GRID.value),
              recipes=_RECIPES.value)
  except errors.UserError:
    raise  # Printed as one line by cli.run_main.
  except ValueError as e:
    raise app.UsageError(str(e)) from None


if __name__ == '__main__':
  cli.run_main(cli.quiet_logging(main))
