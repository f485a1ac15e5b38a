r"""Runs one of the paper's tables end to end and writes markdown + JSON.

  python -m ama_jax.tools.reproduce --table=fmnist_mnist --seeds=3 --epochs=2
  python -m ama_jax.tools.reproduce --table=mnist_oneclass --seeds=1 --epochs=4
  python -m ama_jax.tools.reproduce --table=ablation --base=fmnist_mnist \
      --epochs=2
  python -m ama_jax.tools.reproduce --table=atypical_vs_sipple \
      --base=fmnist_mnist
  python -m ama_jax.tools.reproduce --table=mnist_oneclass --epochs=10 \
      --grid=loss.lambda_gp=10,0   # lambda_gp chosen per run on validation

Tables (the paper's numbers are in `PAPER`):
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
import dataclasses
import importlib
import itertools
import json
import pathlib
import time
from typing import Any, Optional

from absl import app
from absl import flags
from absl import logging
import ml_collections
import numpy as np

from ama_jax.reporting import console
from ama_jax import errors
from ama_jax.reporting import json_safe
from ama_jax.scoring import metrics
from ama_jax.data import archives
from ama_jax.tools import cli

PAPER_EPOCHS = 100
METRICS = ('auroc', 'auprc_anomaly', 'auprc_normal', 'fpr80')
METRIC_NAMES = {'auroc': 'AUROC', 'auprc_anomaly': 'AUPRC (anomaly+)',
                'auprc_normal': 'AUPRC (normal+)', 'fpr80': 'FPR80'}
BASELINES = ('knn', 'pca', 'ocsvm')
BASELINE_NAMES = {'knn': 'kNN', 'pca': 'PCA', 'ocsvm': 'OC-SVM'}

# Config overrides of each variant (flattened config paths).
VARIANTS = {
    'full': {},
    'no_inter': {'loss.lambda_inter': 0.0},
    'no_neg': {'sampling.style': 'none'},
    'neither': {'loss.lambda_inter': 0.0, 'sampling.style': 'none'},
    'sipple': {'sampling.style': 'cube'},
    'sipple_no_inter': {'sampling.style': 'cube', 'loss.lambda_inter': 0.0},
}
VARIANT_NAMES = {
    'full': 'AMA (interpolation + atypical selection)',
    'no_inter': 'no interpolation',
    'no_neg': 'no atypical selection',
    'neither': 'neither',
    'sipple': 'Sipple (2020) negatives + interpolation',
    'sipple_no_inter': 'Sipple (2020) negatives, no interpolation',
}

# The paper's AMA numbers. AUPRC in Table 2 is `auprc_normal` (normals as the
# positive class; see RESULTS.md for why). Fig. 6/9 give no numbers, so the
# ablation's paper column comes from Table 5 where it overlaps.
PAPER = {
    'mnist_oneclass': {str(c): {'auroc': a} for c, a in enumerate(
        (0.986, 0.998, 0.882, 0.891, 0.894, 0.938, 0.981, 0.983, 0.876,
         0.948))},
    'cifar_oneclass': {str(c): {'auroc': a} for c, a in enumerate(
        (0.752, 0.634, 0.696, 0.603, 0.733, 0.650, 0.658, 0.582, 0.754,
         0.632))},
    'fmnist_mnist': {'': {'auroc': 0.987, 'auprc_normal': 0.999,
                          'fpr80': 0.001}},
    'cifar_svhn': {'': {'auroc': 0.935, 'auprc_normal': 0.992,
                        'fpr80': 0.086}},
}
PAPER_MEAN_AUROC = {'mnist_oneclass': 0.938, 'cifar_oneclass': 0.669}
PAPER_TABLE5 = {  # AUROC, Table 5 (a) fmnist_mnist, (b) cifar_svhn.
    'fmnist_mnist': {'no_inter': 0.960, 'full': 0.987,
                     'sipple_no_inter': 0.778, 'sipple': 0.824},
    'cifar_svhn': {'no_inter': 0.935, 'full': 0.895,
                   'sipple_no_inter': 0.852, 'sipple': 0.819},
}
# Which anomaly score AMA's rows report: the paper's calibrated score
# (R - mu)^2 / (2 sigma^2), the raw mirrored critic output R(x), the feature
# kNN score, or ('val'), per run, whichever of the three has the highest
# validation AUROC at the selected checkpoint (a choice on validation only;
# `metrics.score_chosen_on_validation`, which every run also reports).
# Or the detector a selection rule picks (`report.pick`): 'label_free' (the
# last state's feature kNN score: nothing labelled looked at), 'val_auroc'
# (the best-validation state and, of the calibrated and kNN scores, the
# one with the higher validation AUROC there), or 'chosen' (the run's own
# `eval.selection`, results.json['chosen']).
SELECTION_SCORES = ('label_free', 'val_auroc', 'chosen')
SCORES = (*metrics.RUN_SCORES, 'val', *SELECTION_SCORES)
BASE_TABLES = ('mnist_oneclass', 'fmnist_oneclass', 'cifar_oneclass',
               'fmnist_mnist', 'cifar_svhn')
TABLE_VARIANTS = {'ablation': ('full', 'no_inter', 'no_neg', 'neither'),
                  'atypical_vs_sipple': ('full', 'no_inter', 'sipple',
                                         'sipple_no_inter')}
TABLES = BASE_TABLES + tuple(TABLE_VARIANTS)


RECIPES = ('tuned', 'paper')  # configs/default.py: `:paper` is the paper's.


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a table: a row (config + arg), variant, seed and
  recipe (the tuned default, or the paper's, `configs/default.py`)."""
  base: str  # Config module under configs/ (a base table name).
  row: str  # The `:arg` class token for one-class tables, '' otherwise.
  variant: str
  seed: int
  recipe: str = 'tuned'

  @property
  def row_dir(self) -> str:
    return f'{self.base}_{self.row}' if self.row else self.base

  @property
  def method(self) -> str:
    """The run's method in a table: its variant, 'paper/' + it for the
    paper's recipe."""
    return self.variant if self.recipe == 'tuned' else f'paper/{self.variant}'


def split_method(method: str) -> tuple[str, str]:
  """'paper/full' -> ('paper', 'full'); 'full' -> ('tuned', 'full')."""
  recipe, sep, variant = method.partition('/')
  return (recipe, variant) if sep else ('tuned', method)


def table_runs(table: str, base: str, seeds: Sequence[int],
               classes: Optional[Sequence[str]] = None,
               recipes: Sequence[str] = RECIPES) -> list[Run]:
  """The runs of a table, in the order they are trained."""
  bad = [r for r in recipes if r not in RECIPES]
  if bad or not recipes:
    raise ValueError(f'--recipes={list(recipes)}: choose from {RECIPES}.')
  if table not in TABLES:
    raise ValueError(f'Unknown table {table!r}; expected one of {TABLES}.')
  if table in BASE_TABLES:
    base, variants = table, ('full',)
  else:
    if base not in BASE_TABLES:
      raise ValueError(f'--base={base!r} is not a base table; expected one '
                       f'of {BASE_TABLES}.')
    variants = TABLE_VARIANTS[table]
  rows = ['']
  if base.endswith('oneclass'):
    rows = [str(c) for c in (classes if classes else range(10))]
    bad = [r for r in rows if not (r.isdigit() and 0 <= int(r) <= 9)]
    if bad:
      raise ValueError(f'--classes must be digits 0-9, got {bad}.')
  return [Run(base, r, v, s, recipe) for recipe in recipes for r in rows
          for v in variants for s in seeds]


# The paper starts atypical selection at epoch 10 of 100: 10% of the run.
START_FRACTION = 10 / PAPER_EPOCHS


def default_start_epoch(epochs: int) -> int:
  """The paper's 10 of 100 epochs, scaled, and at least one epoch (for the
  paper's recipe; the tuned one places the start itself)."""
  return max(1, round(epochs * 10 / PAPER_EPOCHS))


def build_config(run: Run, *, epochs: Optional[int],
                 start_epoch: Optional[int], calibration_size: Optional[int],
                 overrides: Mapping[str, Any], runlocal: bool = False
                 ) -> ml_collections.ConfigDict:
  """The run's config: its config file, then the reproduction's overrides."""
  module = importlib.import_module(f'configs.{run.base}')
  arg = ','.join(t for t in (run.row, 'runlocal' if runlocal else '',
                             'paper' if run.recipe == 'paper' else '') if t)
  config = module.get_config(arg or None)
  config.seed = run.seed
  if epochs is not None:
    config.train.num_epochs = epochs
  if start_epoch is not None:
    config.sampling.start_epoch = start_epoch
  elif run.recipe == 'paper':
    start = default_start_epoch(config.train.num_epochs)
    if start < config.train.num_epochs:
      config.sampling.start_epoch = start
    else:  # One epoch: no later epoch to start in; 10% of its steps.
      config.sampling.start_fraction = START_FRACTION
  if calibration_size is not None:
    config.eval.calibration_size = calibration_size
  for key, value in {**VARIANTS[run.variant], **overrides}.items():
    _set(config, key, value)
  from ama_jax.config import config_checks  # pylint: disable=g-import-not-at-top
  config_checks.apply_start_given(
      config, [*overrides, *(['sampling.start_epoch'] if start_epoch is not None
                             else [])])
  return config


def _set(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  *path, leaf = key.split('.')
  node = config
  for p in path:
    if p not in node:
      raise ValueError(f'Unknown config field {key!r} (no {p!r}).')
    node = node[p]
  if leaf not in node:
    raise ValueError(f'Unknown config field {key!r}.')
  node[leaf] = value


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


def _plain(obj: Any) -> Any:
  """JSON round trip: tuples become lists, numpy values Python numbers and
  number keys strings, so a fresh result equals its cached copy."""
  return json.loads(json.dumps(obj, default=json_safe.to_json))


def workdir_of(out: pathlib.Path, run: Run, epochs: int,
               tags: Sequence[str] = ()) -> pathlib.Path:
  """`<out>/<recipe>/<row>/<variant>/e<epochs>_s<seed>[_<field>=<value>..]`."""
  return out / run.recipe / run.row_dir / run.variant / '_'.join(
      [f'e{epochs}_s{run.seed}', *tags])


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


def grid_candidates(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Every combination of the grid's values, in the order given."""
  keys = list(grid)
  return [dict(zip(keys, values))
          for values in itertools.product(*(grid[k] for k in keys))]


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for p in key.split('.'):
    node = node[p]
  return node


def val_auroc(results: Mapping[str, Any], score: str) -> float:
  """Validation AUROC of the run's selected checkpoint, of the score that
  `pick_score(results, score)` reports (-1 where not recorded)."""
  if score in SELECTION_SCORES:
    state, kind = selection(results, score)
    val = (results.get('val') or {}).get(state) or {}
    return val.get(f'{metrics.RUN_SCORES[kind]}auroc', -1.0)
  if score == 'val':
    score = metrics.score_chosen_on_validation(results)
  return metrics.val_aurocs(results)[score]


def selection(results: Mapping[str, Any], rule: str) -> tuple[str, str]:
  """(state, score) of a selection rule (`SELECTION_SCORES`) for a run;
  runs stored before results.json recorded it are judged the same way."""
  from ama_jax.reporting import report  # pylint: disable=g-import-not-at-top
  if rule == 'chosen':
    if 'chosen' in results:
      return results['chosen']['state'], results['chosen']['score']
    rule = results['config']['eval'].get('selection', 'val_auroc')
  picked = report.pick(results, rule)
  if picked is None:  # No validation anomalies: no AUROC to choose by.
    picked = report.pick(results, 'label_free')
  return picked


def load_results(workdir: pathlib.Path,
                 config: ml_collections.ConfigDict) -> Optional[dict]:
  """The run's results.json if it exists; an error if its config differs."""
  path = workdir / 'results.json'
  if not path.exists():
    return None
  results = json.loads(path.read_text())
  from ama_jax.config import config_checks  # pylint: disable=g-import-not-at-top
  # Fields only one side has (stored before they existed) are not compared.
  diff = [f'{field}: {stored!r} (stored) vs {requested!r} (requested)'
          for field, stored, requested in config_checks.config_differences(
              results['config'], config)]
  if diff:
    raise ValueError(
        f'{path} was trained with a different config:\n  '
        + '\n  '.join(diff[:10])
        + '\nUse another --out, or delete that workdir to retrain it.')
  return results


def run_baselines_cached(out: pathlib.Path, config: ml_collections.ConfigDict,
                         row_dir: str) -> dict[str, Any]:
  """Baselines on the run's split; cached per (row, data config, seed)."""
  from ama_jax.scoring import baselines  # pylint: disable=g-import-not-at-top
  from ama_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  path = out / row_dir / f'baselines_s{config.seed}.json'
  key = json_safe.to_json({'data': config.data, 'seed': config.seed,
                           'methods': BASELINES})
  if path.exists():
    cached = json.loads(path.read_text())
    if cached['key'] == key:
      return cached['results']
    logging.warning('%s: stale baselines (different split); recomputing.',
                    path)
  start = time.time()
  data = input_pipeline.load_protocol(config.data, config.seed)
  results = baselines.run_baselines(data, seed=config.seed, methods=BASELINES)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps({'key': key, 'seconds': time.time() - start,
                             'results': results}, indent=2,
                            default=json_safe.to_json))
  tmp.replace(path)
  return _plain(results)


def _mean_std(values: Sequence[float]) -> dict[str, Any]:
  v = np.asarray(values, np.float64)
  return {'mean': float(v.mean()), 'std': float(v.std(ddof=1)) if len(v) > 1
          else 0.0, 'n': int(len(v)), 'values': [float(x) for x in v]}


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Mean/std over seeds of each metric: {(row, method): {metric: stats}}.

  `records` have 'row', 'method' (a variant, or 'baseline:<name>') and
  'test' (metrics). Rows are returned in first-seen order, plus a 'mean'
  row over rows (for one-class tables) per method: the mean over rows of
  each seed's metric, then mean/std over seeds.
  """
  groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
  for r in records:
    groups.setdefault((r['row'], r['method']), []).append(r)
  out = {}
  for (row, method), rs in groups.items():
    out[(row, method)] = {m: _mean_std([r['test'][m] for r in rs])
                          for m in METRICS}
  rows = list(dict.fromkeys(r['row'] for r in records))
  if len(rows) > 1:
    for method in dict.fromkeys(r['method'] for r in records):
      by_seed: dict[int, list[Mapping[str, Any]]] = {}
      for r in records:
        if r['method'] == method:
          by_seed.setdefault(r['seed'], []).append(r)
      complete = [rs for rs in by_seed.values() if len(rs) == len(rows)]
      if complete:
        out[('mean', method)] = {
            m: _mean_std([np.mean([r['test'][m] for r in rs])
                          for rs in complete]) for m in METRICS}
  return out


def _fmt(stats: Optional[Mapping[str, Any]]) -> str:
  if stats is None:
    return '–'
  if stats['n'] > 1:
    return f"{stats['mean']:.3f} ± {stats['std']:.3f}"
  return f"{stats['mean']:.3f}"


def _row_label(base: str, row: str) -> str:
  if row == 'mean':
    return '**mean**'
  names = {'cifar_oneclass': archives.CIFAR10_CLASSES,
           'fmnist_oneclass': archives.FASHION_MNIST_CLASSES}.get(base)
  if names and row.isdigit():
    return f'{row} ({names[int(row)]})'
  return row or base


def _paper(table: str, base: str, row: str, method: str) -> dict[str, float]:
  method = split_method(method)[1]
  if table in TABLE_VARIANTS:
    auroc = PAPER_TABLE5.get(base, {}).get(method)
    if auroc is not None and not row:
      return {'auroc': auroc}
    if method == 'full' and row in PAPER.get(base, {}):
      return dict(PAPER[base][row])
    return {}
  if row == 'mean':
    return ({'auroc': PAPER_MEAN_AUROC[base]} if base in PAPER_MEAN_AUROC
            else {})
  return dict(PAPER.get(base, {}).get(row, {}))


def pick_score(results: Mapping[str, Any],
               score: str) -> tuple[dict[str, Any], str]:
  """(test metrics, score kind) of a run's selected checkpoint.

  `score`: 'calibrated' (the paper's), 'raw' (R(x)), 'knn' (the feature
  kNN score, `eval.knn_k`), or 'val' (the one of those three with the
  highest validation AUROC of that checkpoint; ties keep calibrated, then
  raw).

  Raises:
    ValueError: an unknown score, or 'knn' for a run that did not record it.
  """
  if score not in SCORES:
    raise ValueError(f'Unknown score {score!r}; expected one of {SCORES}.')
  if score in SELECTION_SCORES:
    state, kind = selection(results, score)
    return metrics.run_score_metrics(results, kind, state), f'{state}/{kind}'
  kind = (metrics.score_chosen_on_validation(results) if score == 'val'
          else score)
  try:
    return metrics.run_score_metrics(results, kind), kind
  except ValueError as e:
    raise ValueError(f'{e} Report it with --score=calibrated, raw or '
                     'val.') from None


def method_label(method: str, epochs: int) -> str:
  if method.startswith('baseline:'):
    return f"{BASELINE_NAMES[method.split(':')[1]]} (raw pixels)"
  recipe, variant = split_method(method)
  name = 'AMA (ours)' if variant == 'full' else VARIANT_NAMES[variant]
  return f'{name}, {recipe} recipe, {epochs} ep'


def markdown(table: str, base: str, epochs: int, seeds: Sequence[int],
             summary: Mapping[tuple[str, str], Any],
             missing: Sequence[str], score: str = 'calibrated',
             kinds: Sequence[str] = (), grid_note: str = '') -> str:
  """The table as markdown: a compact AUROC view and the full metrics."""
  score_note = {
      'calibrated': '',
      'raw': ' AMA\'s score: the raw mirrored critic output R(x), not the '
             'paper\'s calibrated score.',
      'knn': ' AMA\'s score: the feature kNN score (distance of the '
             'critic\'s features of (x, G(E(x))) to the nearest training '
             'normal\'s, `eval.knn_k`), not the paper\'s calibrated score.',
      'val': ' AMA\'s score: per run, the calibrated, the raw R(x) or the '
             'feature kNN score, whichever has the highest validation AUROC '
             f'(chosen: {kinds.count("raw")} raw, {kinds.count("knn")} '
             f'feature kNN, {kinds.count("calibrated")} calibrated).',
      'label_free': ' AMA\'s detector chosen without labelled anomalies: '
                    'the last state and its score by `eval.label_free_'
                    'score` (default: of the calibrated and feature kNN '
                    'scores, the one with the higher surrogate AUROC, '
                    'validation normals against their transforms).',
      'val_auroc': ' AMA\'s detector chosen by validation AUROC: the '
                   'best-validation state and, of the calibrated and '
                   'feature kNN scores, the one with the higher validation '
                   'AUROC there.',
      'chosen': ' AMA\'s detector: the one each run chose '
                '(`eval.selection`, results.json["chosen"]).'}[score]
  if score in SELECTION_SCORES:
    score_note += ' Picked: ' + ', '.join(
        f'{kinds.count(k)} {k}' for k in dict.fromkeys(kinds)) + '.'
  rows = list(dict.fromkeys(r for r, _ in summary))
  methods = list(dict.fromkeys(m for _, m in summary))
  # AMA's variants first (in table order), then the baselines.
  methods.sort(key=lambda m: m.startswith('baseline:'))
  lines = [f'### {table}' + (f' (base: {base})' if table != base else ''),
           '',
           f'{epochs} epochs (paper: {PAPER_EPOCHS}), seeds {list(seeds)}; '
           'mean ± std over seeds; AMA: '
           + ('the detector below' if score in SELECTION_SCORES else
              'the checkpoint with the best validation AUROC')
           + '; baselines: hyper-parameter chosen on '
           'validation. "paper" is the AMA paper\'s number'
           + (' (Table 5; Figs. 6 and 9 give no numbers).'
              if table in TABLE_VARIANTS else '.') + score_note
           + grid_note, '']
  if len(rows) > 1:  # Compact AUROC table, one line per row.
    head = ['normal class', 'paper AMA'] + [method_label(m, epochs)
                                            for m in methods]
    lines += ['AUROC:', '', '| ' + ' | '.join(head) + ' |',
              '|' + '---|' * len(head)]
    for row in rows:
      paper = _paper(table, base, row, 'full').get('auroc')
      cells = [_row_label(base, row), f'{paper:.3f}' if paper else '–']
      cells += [_fmt((summary.get((row, m)) or {}).get('auroc'))
                for m in methods]
      lines.append('| ' + ' | '.join(cells) + ' |')
    lines.append('')
  head = (['row'] if len(rows) > 1 else []) + ['method'] + [
      METRIC_NAMES[m] for m in METRICS]
  lines += ['All metrics (anomalies are the positive class unless marked '
            'normal+):', '', '| ' + ' | '.join(head) + ' |',
            '|' + '---|' * len(head)]
  for row in rows:
    prefix = [_row_label(base, row)] if len(rows) > 1 else []
    paper_methods = dict.fromkeys(split_method(m)[1] for m in methods
                                  if not m.startswith('baseline:'))
    for m in paper_methods:
      paper = _paper(table, base, row, m)
      if paper:
        label = ('paper: ' + (VARIANT_NAMES[m] if m != 'full' else 'AMA'))
        cells = [f'{paper[k]:.3f}' if k in paper else '–' for k in METRICS]
        lines.append('| ' + ' | '.join(prefix + [label] + cells) + ' |')
    for m in methods:
      stats = summary.get((row, m))
      if stats is None:
        continue
      cells = [_fmt(stats[k]) for k in METRICS]
      lines.append('| ' + ' | '.join(
          prefix + [method_label(m, epochs)] + cells) + ' |')
  if missing:
    lines += ['', f'Not yet run ({len(missing)}): ' + ', '.join(missing)]
  return '\n'.join(lines) + '\n'


def grid_note(grid: Optional[Mapping[str, Sequence[Any]]],
              run_info: Sequence[Mapping[str, Any]]) -> str:
  """' AMA's <fields> chosen per run on validation ...' or ''."""
  if not grid:
    return ''
  counts = {}
  for info in run_info:
    key = ', '.join(f'{k}={v}' for k, v in info['grid_choice'].items())
    counts[key] = counts.get(key, 0) + 1
  options = ' x '.join(f'{k} in {list(v)}' for k, v in grid.items())
  chosen = '; '.join(f'{k}: {n}' for k, n in counts.items())
  return (f' AMA\'s {options}: chosen per run, the highest validation AUROC'
          f' (chosen: {chosen or "none yet"}).')


def settings_note(overrides: Optional[Mapping[str, Any]],
                  start_epoch: Optional[int]) -> str:
  """' Set for every run: ...' naming `--start_epoch` and `--override`s, or
  '' (so that a table trained with them says so)."""
  items = ([f'--start_epoch={start_epoch}'] if start_epoch is not None
           else []) + [f'--override={k}={v}' for k, v in
                       (overrides or {}).items()]
  return f' Set for every run: {", ".join(items)}.' if items else ''


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
              recipes: Sequence[str] = RECIPES) -> dict[str, Any]:
  """Trains (or reuses) every run of `table`, then writes its report.

  Baselines run on the split of every (row, seed) of the table, trained or
  not (`baseline_seeds`: only these seeds; None: all). `shard=(i, n)`
  trains only the missing runs whose index in `table_runs` is i modulo n, so
  that n workers (processes on one accelerator, or jobs of a cluster) share
  a table without training any run twice; each reports what exists, and a
  last `report_only` call reports the whole table. `score` picks AMA's
  anomaly score (`pick_score`); other than 'calibrated', it is named in the
  output files (`..._score-raw`, `..._score-val`).

  `grid` ({config field: values}): every run trains each combination of
  values (a value other than the config's own adds `_<field>=<value>` to
  the workdir name, so the plain runs are reused), and reports the one with
  the highest validation AUROC of the reported score (`val_auroc`; ties:
  the first listed); the output files carry `_grid-<field>`. With a grid,
  `shard` splits the (run, combination) pairs.

  Returns the JSON report; writes `<out>/<name>.md` and `<out>/<name>.json`.
  """
  from ama_jax.training import loop  # pylint: disable=g-import-not-at-top
  runs = table_runs(table, base, seeds, classes, recipes)
  records, run_info, missing, baseline_rows = [], [], [], {}
  shard_index, num_shards = check_shard(*shard)
  overrides = dict(overrides or {})
  if set(grid or {}) & set(overrides):
    raise ValueError(f'{sorted(set(grid) & set(overrides))}: set a field '
                     'with --override or choose it with --grid, not both.')
  candidates = grid_candidates(grid or {})
  for i, run in enumerate(runs):
    kw = dict(epochs=epochs, start_epoch=start_epoch,
              calibration_size=calibration_size, runlocal=runlocal)
    config = build_config(run, overrides=overrides, **kw)
    num_epochs = config.train.num_epochs
    found = []  # (candidate, workdir, results) per grid combination.
    for j, candidate in enumerate(candidates):
      cand_config = build_config(run, overrides={**overrides, **candidate},
                                 **kw)  # Unknown fields: a clear error.
      tags = [f'{k}={v}' for k, v in candidate.items()
              if _get(config, k) != v]
      workdir = workdir_of(out, run, num_epochs, tags)
      results = load_results(workdir, cand_config)
      if (results is None and not report_only
          and (i * len(candidates) + j) % num_shards == shard_index):
        console.say('Training %s %s -> %s', run, candidate, workdir)
        loop.train_and_evaluate(cand_config, str(workdir))
        results = load_results(workdir, cand_config)
      found.append((candidate, workdir, results))
    if (with_baselines and (run.row, run.seed) not in baseline_rows
        and (baseline_seeds is None or run.seed in baseline_seeds)):
      baseline_rows[(run.row, run.seed)] = run_baselines_cached(
          out, config, run.row_dir)
      for name, res in baseline_rows[(run.row, run.seed)].items():
        records.append({'row': run.row, 'method': f'baseline:{name}',
                        'seed': run.seed, 'test': res['test'],
                        'hparam': {res['hparam_name']: res['hparam']}})
    absent = [w.name for _, w, r in found if r is None]
    if absent:
      missing.append(f'{run.recipe}/{run.row_dir}/{run.variant}/seed '
                     f'{run.seed}'
                     + (f' ({", ".join(absent)})' if grid else ''))
      continue
    grid_val = [val_auroc(r, score) for _, _, r in found]
    candidate, workdir, results = found[int(np.argmax(grid_val))]
    chosen, kind = pick_score(results, score)
    records.append({'row': run.row, 'method': run.method, 'seed': run.seed,
                    'test': chosen})
    run_info.append({
        **dataclasses.asdict(run), 'workdir': str(workdir), 'score': kind,
        'wall_time_s': results['wall_time_s'], 'steps': results['steps'],
        'epochs': results['epochs'],
        'best_step': results.get('best_step'),
        'best_val_auroc': results.get('best_val_auroc'),
        'test_best': results['test'].get('best'),
        'test_last': results['test']['last'],
        'train_images_per_s': results.get('train_images_per_s'),
        'devices': results.get('devices'),
        **({'grid_choice': candidate, 'grid_val_auroc': grid_val}
           if grid else {})})
  num_epochs = epochs if epochs is not None else (
      run_info[0]['epochs'] if run_info else PAPER_EPOCHS)
  summary = summarize(records)
  experiment = runs[0].base  # The table itself, or --base.
  name = table if table == experiment else f'{table}_{base}'
  name += f'_e{num_epochs}'
  if score != 'calibrated':
    name += f'_score-{score}'
  if grid:
    name += '_grid-' + '-'.join(k.split('.')[-1] for k in grid)
  md = markdown(table, experiment, num_epochs, seeds, summary, missing,
                score=score,
                kinds=[info['score'] for info in run_info],
                grid_note=(settings_note(overrides, start_epoch)
                           + grid_note(grid, run_info)))
  report = {
      'table': table, 'base': base, 'epochs': num_epochs, 'score': score,
      'seeds': list(seeds), 'start_epoch': start_epoch,
      'overrides': overrides, 'grid': grid or {},
      'runs': run_info, 'missing': missing,
      'baselines': [r for r in records if r['method'].startswith('baseline:')],
      'summary': [{'row': r, 'method': m, **s}
                  for (r, m), s in summary.items()],
      'paper': {r: {m: _paper(table, experiment, r, m)
                    for m in dict.fromkeys(m for _, m in summary)}
                for r in dict.fromkeys(r for r, _ in summary)},
  }
  out.mkdir(parents=True, exist_ok=True)
  (out / f'{name}.md').write_text(md)
  (out / f'{name}.json').write_text(
      json.dumps(report, indent=2, default=json_safe.to_json))
  console.say('Wrote %s.{md,json}', out / name)
  print(md, flush=True)
  return report


_TABLE = flags.DEFINE_enum('table', None, TABLES, 'The table to reproduce.')
_BASE = flags.DEFINE_enum('base', 'fmnist_mnist', BASE_TABLES,
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
    'recipes', list(RECIPES), 'Training recipes to run: tuned (the '
    'configs\' default) and/or paper (their `:paper` variant).')
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
    'score', 'calibrated', SCORES, "AMA's reported score: the paper's "
    "'calibrated' one, 'raw' R(x), 'knn' (the feature kNN score, not in the "
    "paper), 'val': per run, the one with the highest validation AUROC; or "
    "a selection rule's detector: 'label_free' (last state; its score by "
    "eval.label_free_score), "
    "'val_auroc' (labelled validation), 'chosen' (the run's eval.selection).")
_GRID = flags.DEFINE_multi_string(
    'grid', [], 'field=v1,v2,...: train each value for every run and report'
    ' the one with the best validation AUROC (repeat for a product grid).')
_SHARD = flags.DEFINE_string(
    'shard', '0/1', 'i/n: train only the runs whose index in the table is '
    'i modulo n (n parallel workers; then report with --report_only).')


def check_shard(index: int, count: int) -> tuple[int, int]:
  """(i, n) unchanged if 0 <= i < n (hence n >= 1); else a clear error."""
  if not 0 <= index < count:
    raise ValueError(f'--shard={index}/{count}: the index must be in '
                     f'0..n-1 with n >= 1.')
  return index, count


def parse_shard(text: str) -> tuple[int, int]:
  """'i/n' -> (i, n), with a clear error."""
  try:
    index, count = (int(t) for t in text.split('/'))
  except ValueError:
    raise ValueError(f'--shard={text!r}: expected i/n, e.g. 0/4.') from None
  return check_shard(index, count)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _TABLE.value is None:
    raise app.UsageError(f'--table is required; one of {TABLES}.')
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
