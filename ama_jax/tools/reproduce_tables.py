"""The paper's tables: their rows and variants, the paper's numbers, reports."""
from collections.abc import Mapping, Sequence
import json
import pathlib
from typing import Any, Optional

import numpy as np

from ama_jax.data import archives
from ama_jax.reporting import console
from ama_jax.reporting import json_safe
from ama_jax.scoring import metrics

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
# (of the best-validation and last states and the calibrated and kNN
# scores, the pair with the highest validation AUROC), or 'chosen' (the run's own
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


def split_method(method: str) -> tuple[str, str]:
  """'paper/full' -> ('paper', 'full'); 'full' -> ('tuned', 'full')."""
  recipe, sep, variant = method.partition('/')
  return (recipe, variant) if sep else ('tuned', method)


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
      'val_auroc': ' AMA\'s detector chosen by validation AUROC: of the '
                   'best-validation and the last state and the calibrated '
                   'and feature kNN scores, the pair with the highest '
                   'validation AUROC.',
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


def report_name(table: str, base: str, experiment: str, epochs: int,
                score: str, grid: Optional[Mapping[str, Sequence[Any]]]
                ) -> str:
  """The report's file name, without suffix: table [_base], epochs, and the
  score and grid where they are not the default."""
  name = table if table == experiment else f'{table}_{base}'
  name += f'_e{epochs}'
  if score != 'calibrated':
    name += f'_score-{score}'
  if grid:
    name += '_grid-' + '-'.join(k.split('.')[-1] for k in grid)
  return name


def write_report(out: pathlib.Path, table: str, base: str, experiment: str,
                 epochs: int, seeds: Sequence[int], *, score: str,
                 start_epoch: Optional[int], overrides: Mapping[str, Any],
                 grid: Optional[Mapping[str, Sequence[Any]]],
                 records: Sequence[Mapping[str, Any]],
                 run_info: Sequence[Mapping[str, Any]],
                 missing: Sequence[str]) -> dict[str, Any]:
  """Writes `<out>/<name>.md` and `<out>/<name>.json`, prints the markdown.

  Args:
    out: the output directory.
    table: the table (`TABLES`); base: `--base`; experiment: the base table
      its runs use (the table itself, or `base`).
    epochs: the runs' epochs; seeds: the table's seeds.
    score: AMA's reported score (`SCORES`).
    start_epoch, overrides, grid: the settings every run was given.
    records, run_info, missing: what the runs hold
      (`reproduce_runs.Outcome`).

  Returns:
    The JSON report.
  """
  summary = summarize(records)
  name = report_name(table, base, experiment, epochs, score, grid)
  md = markdown(table, experiment, epochs, seeds, summary, missing,
                score=score,
                kinds=[info['score'] for info in run_info],
                grid_note=(settings_note(overrides, start_epoch)
                           + grid_note(grid, run_info)))
  report = {
      'table': table, 'base': base, 'epochs': epochs, 'score': score,
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
