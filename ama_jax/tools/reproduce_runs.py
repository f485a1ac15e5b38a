"""A table's runs: their configs and workdirs, training or reusing each."""
from collections.abc import Mapping, Sequence
import dataclasses
import importlib
import itertools
import json
import pathlib
import time
from typing import Any, Callable, Optional

from absl import logging
import ml_collections
import numpy as np

from ama_jax.reporting import console
from ama_jax.reporting import json_safe
from ama_jax.scoring import metrics
from ama_jax.tools import reproduce_tables

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


def table_runs(table: str, base: str, seeds: Sequence[int],
               classes: Optional[Sequence[str]] = None,
               recipes: Sequence[str] = reproduce_tables.RECIPES) -> list[Run]:
  """The runs of a table, in the order they are trained."""
  bad = [r for r in recipes if r not in reproduce_tables.RECIPES]
  if bad or not recipes:
    raise ValueError(f'--recipes={list(recipes)}: choose from '
                     f'{reproduce_tables.RECIPES}.')
  if table not in reproduce_tables.TABLES:
    raise ValueError(f'Unknown table {table!r}; expected one of '
                     f'{reproduce_tables.TABLES}.')
  if table in reproduce_tables.BASE_TABLES:
    base, variants = table, ('full',)
  else:
    if base not in reproduce_tables.BASE_TABLES:
      raise ValueError(f'--base={base!r} is not a base table; expected one '
                       f'of {reproduce_tables.BASE_TABLES}.')
    variants = reproduce_tables.TABLE_VARIANTS[table]
  rows = ['']
  if base.endswith('oneclass'):
    rows = [str(c) for c in (classes if classes else range(10))]
    bad = [r for r in rows if not (r.isdigit() and 0 <= int(r) <= 9)]
    if bad:
      raise ValueError(f'--classes must be digits 0-9, got {bad}.')
  return [Run(base, r, v, s, recipe) for recipe in recipes for r in rows
          for v in variants for s in seeds]


# The paper starts atypical selection at epoch 10 of 100: 10% of the run.
START_FRACTION = 10 / reproduce_tables.PAPER_EPOCHS


def default_start_epoch(epochs: int) -> int:
  """The paper's 10 of 100 epochs, scaled, and at least one epoch (for the
  paper's recipe; the tuned one places the start itself)."""
  return max(1, round(epochs * 10 / reproduce_tables.PAPER_EPOCHS))


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
  for key, value in {**reproduce_tables.VARIANTS[run.variant],
                     **overrides}.items():
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


def _plain(obj: Any) -> Any:
  """JSON round trip: tuples become lists, numpy values Python numbers and
  number keys strings, so a fresh result equals its cached copy."""
  return json.loads(json.dumps(obj, default=json_safe.to_json))


def workdir_of(out: pathlib.Path, run: Run, epochs: int,
               tags: Sequence[str] = ()) -> pathlib.Path:
  """`<out>/<recipe>/<row>/<variant>/e<epochs>_s<seed>[_<field>=<value>..]`."""
  return out / run.recipe / run.row_dir / run.variant / '_'.join(
      [f'e{epochs}_s{run.seed}', *tags])


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
  if score in reproduce_tables.SELECTION_SCORES:
    state, kind = selection(results, score)
    val = (results.get('val') or {}).get(state) or {}
    return val.get(f'{metrics.RUN_SCORES[kind]}auroc', -1.0)
  if score == 'val':
    score = metrics.score_chosen_on_validation(results)
  return metrics.val_aurocs(results)[score]


def selection(results: Mapping[str, Any], rule: str) -> tuple[str, str]:
  """(state, score) of a selection rule (`reproduce_tables.SELECTION_SCORES`)
  for a run; runs stored before results.json recorded it are judged the
  same way."""
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
                           'methods': reproduce_tables.BASELINES})
  if path.exists():
    cached = json.loads(path.read_text())
    if cached['key'] == key:
      return cached['results']
    logging.warning('%s: stale baselines (different split); recomputing.',
                    path)
  start = time.time()
  data = input_pipeline.load_protocol(config.data, config.seed)
  results = baselines.run_baselines(data, seed=config.seed,
                                    methods=reproduce_tables.BASELINES)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps({'key': key, 'seconds': time.time() - start,
                             'results': results}, indent=2,
                            default=json_safe.to_json))
  tmp.replace(path)
  return _plain(results)


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
  if score not in reproduce_tables.SCORES:
    raise ValueError(f'Unknown score {score!r}; expected one of '
                     f'{reproduce_tables.SCORES}.')
  if score in reproduce_tables.SELECTION_SCORES:
    state, kind = selection(results, score)
    return metrics.run_score_metrics(results, kind, state), f'{state}/{kind}'
  kind = (metrics.score_chosen_on_validation(results) if score == 'val'
          else score)
  try:
    return metrics.run_score_metrics(results, kind), kind
  except ValueError as e:
    raise ValueError(f'{e} Report it with --score=calibrated, raw or '
                     'val.') from None


def check_shard(index: int, count: int) -> tuple[int, int]:
  """(i, n) unchanged if 0 <= i < n (hence n >= 1); else a clear error."""
  if not 0 <= index < count:
    raise ValueError(f'--shard={index}/{count}: the index must be in '
                     f'0..n-1 with n >= 1.')
  return index, count


@dataclasses.dataclass(frozen=True)
class Outcome:
  """What a table's runs hold so far.

  Attributes:
    records: one per finished run and per baseline of a (row, seed): 'row',
      'method', 'seed', 'test' (metrics) [, 'hparam'], as
      `reproduce_tables.summarize` reads them.
    run_info: one per finished run: its workdir, reported score, timing and
      the selected checkpoint's test metrics [, the grid's choice].
    missing: the runs not trained yet, in words.
  """
  records: list[dict[str, Any]]
  run_info: list[dict[str, Any]]
  missing: list[str]


def _train_candidates(run: Run, config: ml_collections.ConfigDict,
                      candidates: Sequence[Mapping[str, Any]],
                      overrides: Mapping[str, Any],
                      config_kw: Mapping[str, Any], out: pathlib.Path,
                      trains: Callable[[int], bool]
                      ) -> list[tuple[Mapping[str, Any], pathlib.Path,
                                      Optional[dict]]]:
  """(candidate, workdir, results or None) of each grid combination of the
  run, training the missing ones that `trains(j)` gives this worker."""
  from ama_jax.training import loop  # pylint: disable=g-import-not-at-top
  found = []
  for j, candidate in enumerate(candidates):
    cand_config = build_config(run, overrides={**overrides, **candidate},
                               **config_kw)  # Unknown fields: a clear error.
    tags = [f'{k}={v}' for k, v in candidate.items()
            if _get(config, k) != v]
    workdir = workdir_of(out, run, config.train.num_epochs, tags)
    results = load_results(workdir, cand_config)
    if results is None and trains(j):
      console.say('Training %s %s -> %s', run, candidate, workdir)
      loop.train_and_evaluate(cand_config, str(workdir))
      results = load_results(workdir, cand_config)
    found.append((candidate, workdir, results))
  return found


def _reported(run: Run, found: Sequence[tuple[Mapping[str, Any],
                                              pathlib.Path, dict]],
              score: str, grid: Optional[Mapping[str, Sequence[Any]]]
              ) -> tuple[dict[str, Any], dict[str, Any]]:
  """(record, run info) of a finished run: of its grid combinations, the
  one with the best validation AUROC, and its `score`."""
  grid_val = [val_auroc(r, score) for _, _, r in found]
  candidate, workdir, results = found[int(np.argmax(grid_val))]
  chosen, kind = pick_score(results, score)
  record = {'row': run.row, 'method': run.method, 'seed': run.seed,
            'test': chosen}
  info = {
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
         if grid else {})}
  return record, info


def collect(runs: Sequence[Run], *, out: pathlib.Path,
            epochs: Optional[int], start_epoch: Optional[int],
            calibration_size: Optional[int], overrides: Mapping[str, Any],
            report_only: bool, with_baselines: bool,
            baseline_seeds: Optional[Sequence[int]], runlocal: bool,
            shard: tuple[int, int], score: str,
            grid: Optional[Mapping[str, Sequence[Any]]]) -> Outcome:
  """Trains (or reuses) `runs` and their baselines (`reproduce.reproduce`
  documents the arguments)."""
  shard_index, num_shards = check_shard(*shard)
  if set(grid or {}) & set(overrides):
    raise ValueError(f'{sorted(set(grid) & set(overrides))}: set a field '
                     'with --override or choose it with --grid, not both.')
  candidates = grid_candidates(grid or {})
  outcome, baseline_rows = Outcome([], [], []), {}
  for i, run in enumerate(runs):
    kw = dict(epochs=epochs, start_epoch=start_epoch,
              calibration_size=calibration_size, runlocal=runlocal)
    config = build_config(run, overrides=overrides, **kw)
    found = _train_candidates(
        run, config, candidates, overrides, kw, out,
        lambda j, i=i: (not report_only and (i * len(candidates) + j)
                        % num_shards == shard_index))
    if (with_baselines and (run.row, run.seed) not in baseline_rows
        and (baseline_seeds is None or run.seed in baseline_seeds)):
      baseline_rows[(run.row, run.seed)] = run_baselines_cached(
          out, config, run.row_dir)
      for name, res in baseline_rows[(run.row, run.seed)].items():
        outcome.records.append({
            'row': run.row, 'method': f'baseline:{name}', 'seed': run.seed,
            'test': res['test'],
            'hparam': {res['hparam_name']: res['hparam']}})
    absent = [w.name for _, w, r in found if r is None]
    if absent:
      outcome.missing.append(f'{run.recipe}/{run.row_dir}/{run.variant}/seed '
                             f'{run.seed}'
                             + (f' ({", ".join(absent)})' if grid else ''))
      continue
    record, info = _reported(run, found, score, grid)
    outcome.records.append(record)
    outcome.run_info.append(info)
  return outcome
