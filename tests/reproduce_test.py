"""Tests of the reproduction entry point (`ama_jax.tools.reproduce`) and of
the runs and tables it reproduces (`reproduce_runs`, `reproduce_tables`)."""
import json
import pathlib
import tempfile
from unittest import mock

from absl.testing import absltest

from ama_jax.tools import reproduce
from ama_jax.tools import reproduce_runs
from ama_jax.tools import reproduce_tables


class TableTest(absltest.TestCase):

  def test_runs_of_each_table(self):
    runs = reproduce_runs.table_runs('mnist_oneclass', 'fmnist_mnist', [0, 1])
    self.assertLen(runs, 40)  # Both recipes.
    self.assertEqual(runs[0],
                     reproduce_runs.Run('mnist_oneclass', '0', 'full', 0))
    self.assertEqual(runs[20], reproduce_runs.Run('mnist_oneclass', '0',
                                                  'full', 0, 'paper'))
    self.assertEqual(runs[20].method, 'paper/full')
    self.assertEqual(reproduce_tables.split_method('paper/no_neg'),
                     ('paper', 'no_neg'))
    runs = reproduce_runs.table_runs('mnist_oneclass', 'fmnist_mnist', [0, 1],
                                     recipes=['tuned'])
    self.assertLen(runs, 20)
    self.assertEqual(runs[0].row_dir, 'mnist_oneclass_0')
    runs = reproduce_runs.table_runs('ablation', 'fmnist_mnist', [0],
                                     recipes=['tuned'])
    self.assertEqual([r.variant for r in runs],
                     ['full', 'no_inter', 'no_neg', 'neither'])
    self.assertEqual(runs[0].row_dir, 'fmnist_mnist')
    runs = reproduce_runs.table_runs('atypical_vs_sipple', 'fmnist_mnist', [0])
    self.assertIn('sipple_no_inter', [r.variant for r in runs])
    self.assertLen(
        reproduce_runs.table_runs('cifar_oneclass', '', [0], ['3']), 2)

  def test_bad_tables_and_classes(self):
    with self.assertRaisesRegex(ValueError, 'Unknown table'):
      reproduce_runs.table_runs('table9', 'fmnist_mnist', [0])
    with self.assertRaisesRegex(ValueError, 'not a base table'):
      reproduce_runs.table_runs('ablation', 'ablation', [0])
    with self.assertRaisesRegex(ValueError, 'digits 0-9'):
      reproduce_runs.table_runs('mnist_oneclass', '', [0], ['12'])
    with self.assertRaisesRegex(ValueError, 'recipes'):
      reproduce_runs.table_runs('fmnist_mnist', '', [0], recipes=['fast'])

  def test_start_epoch_scales_with_epochs(self):
    self.assertEqual(reproduce_runs.default_start_epoch(100), 10)
    self.assertEqual(reproduce_runs.default_start_epoch(30), 3)
    self.assertEqual(reproduce_runs.default_start_epoch(2), 1)

  def test_paper_recipe_of_one_epoch_starts_negatives_at_ten_percent(self):
    # No later epoch to start in: 10% of the run's steps, and a config
    # that passes its checks (an epoch-1 start would never run).
    from ama_jax.config import config_checks  # pylint: disable=g-import-not-at-top
    config = reproduce_runs.build_config(
        reproduce_runs.Run('fmnist_mnist', '', 'full', 0, 'paper'), epochs=1,
        start_epoch=None, calibration_size=None, overrides={})
    self.assertEqual(config.sampling.start_fraction, 0.1)
    self.assertEqual(config.sampling.style, 'outward')
    config_checks.validate(config)
    two = reproduce_runs.build_config(
        reproduce_runs.Run('fmnist_mnist', '', 'full', 0, 'paper'), epochs=2,
        start_epoch=None, calibration_size=None, overrides={})
    self.assertEqual(two.sampling.start_epoch, 1)
    self.assertIsNone(two.sampling.start_fraction)

  def test_build_config_applies_variant_and_overrides(self):
    run = reproduce_runs.Run('fmnist_mnist', '', 'neither', 2, 'paper')
    config = reproduce_runs.build_config(
        run, epochs=4, start_epoch=None, calibration_size=500,
        overrides=reproduce.parse_overrides(['loss.lambda_gp=0',
                                             'sampling.delta=0.25']))
    self.assertEqual(config.seed, 2)
    self.assertEqual(config.train.num_epochs, 4)
    self.assertEqual(config.sampling.start_epoch, 1)
    self.assertEqual(config.eval.calibration_size, 500)
    self.assertEqual(config.loss.lambda_inter, 0.0)
    self.assertEqual(config.sampling.style, 'none')
    self.assertEqual(config.loss.lambda_gp, 0.0)
    self.assertEqual(config.sampling.delta, 0.25)
    one_class = reproduce_runs.build_config(
        reproduce_runs.Run('mnist_oneclass', '7', 'full', 0, 'paper'),
        epochs=None, start_epoch=None, calibration_size=None, overrides={})
    self.assertEqual(tuple(one_class.data.normal_classes), (7,))
    self.assertEqual(one_class.train.num_epochs, 100)
    self.assertEqual(one_class.sampling.start_epoch, 10)
    self.assertEqual(one_class.optim.schedule, 'step')  # The paper's.
    # The tuned recipe keeps its own start of atypical selection.
    tuned = reproduce_runs.build_config(
        reproduce_runs.Run('mnist_oneclass', '7', 'full', 0), epochs=4,
        start_epoch=None, calibration_size=None, overrides={})
    default_start = reproduce_runs.build_config(
        reproduce_runs.Run('mnist_oneclass', '7', 'full', 0), epochs=None,
        start_epoch=None, calibration_size=None, overrides={})
    self.assertEqual(tuned.sampling.start_epoch,
                     default_start.sampling.start_epoch)
    # --start_epoch replaces the tuned recipe's start (2/3 of the run).
    fm = reproduce_runs.Run('fmnist_mnist', '', 'full', 0)
    self.assertEqual(reproduce_runs.build_config(
        fm, epochs=3, start_epoch=None, calibration_size=None,
        overrides={}).sampling.start_fraction, 2 / 3)
    late = reproduce_runs.build_config(fm, epochs=3, start_epoch=2,
                                       calibration_size=None, overrides={})
    self.assertEqual((late.sampling.start_epoch,
                      late.sampling.start_fraction), (2, None))

  def test_override_errors(self):
    with self.assertRaisesRegex(ValueError, 'field=value'):
      reproduce.parse_overrides(['loss.lambda_gp'])
    self.assertEqual(reproduce.parse_overrides(['sampling.style=cube']),
                     {'sampling.style': 'cube'})
    with self.assertRaisesRegex(ValueError, 'Unknown config field'):
      reproduce_runs.build_config(
          reproduce_runs.Run('fmnist_mnist', '', 'full', 0), epochs=1,
          start_epoch=None, calibration_size=None,
          overrides={'loss.lambda_nope': 1.0})

  def test_settings_note_names_start_epoch_and_overrides(self):
    self.assertEqual(reproduce_tables.settings_note({}, None), '')
    note = reproduce_tables.settings_note({'sampling.style': 'outward'}, 2)
    self.assertEqual(note, ' Set for every run: --start_epoch=2, '
                     '--override=sampling.style=outward.')
    md = reproduce_tables.markdown('fmnist_mnist', 'fmnist_mnist', 3, [0], {},
                                   [], grid_note=note)
    self.assertIn('--override=sampling.style=outward', md)

  def test_stored_results_with_another_config_is_an_error(self):
    run = reproduce_runs.Run('fmnist_mnist', '', 'full', 0)
    kwargs = dict(epochs=2, start_epoch=None, calibration_size=None,
                  overrides={})
    config = reproduce_runs.build_config(run, **kwargs)
    from ama_jax.reporting import json_safe  # pylint: disable=g-import-not-at-top
    with tempfile.TemporaryDirectory() as d:
      workdir = pathlib.Path(d)
      self.assertIsNone(reproduce_runs.load_results(workdir, config))
      (workdir / 'results.json').write_text(json.dumps(
          {'config': json_safe.config_to_dict(config), 'test': {}}))
      self.assertIsNotNone(reproduce_runs.load_results(workdir, config))
      other = reproduce_runs.build_config(run, **{**kwargs, 'epochs': 3})
      with self.assertRaisesRegex(ValueError,
                                  r'train.num_epochs: 2 \(stored\) vs 3'):
        reproduce_runs.load_results(workdir, other)
      # A run stored before a field existed still loads.
      stored = json_safe.config_to_dict(config)
      del stored['train']['allow_resume_changes']
      (workdir / 'results.json').write_text(json.dumps(
          {'config': stored, 'test': {}}))
      self.assertIsNotNone(reproduce_runs.load_results(workdir, config))


class ScoreTest(absltest.TestCase):

  def test_pick_score(self):
    raw = {f'raw_{k}': v for k, v in _metrics(0.9).items()}
    results = {'test': {'best': {**_metrics(0.7), **raw},
                        'last': _metrics(0.1)},
               'val': {'best': {'auroc': 0.8, 'raw_auroc': 0.85}}}
    test, kind = reproduce_runs.pick_score(results, 'calibrated')
    self.assertEqual((test['auroc'], kind), (0.7, 'calibrated'))
    test, kind = reproduce_runs.pick_score(results, 'raw')
    self.assertEqual((test['auroc'], test['fpr80'], kind),
                     (0.9, _metrics(0.9)['fpr80'], 'raw'))
    _, kind = reproduce_runs.pick_score(results, 'val')  # Raw wins validation.
    self.assertEqual(kind, 'raw')
    results['val']['best']['raw_auroc'] = 0.8  # A tie keeps the paper's.
    test, kind = reproduce_runs.pick_score(results, 'val')
    self.assertEqual((test['auroc'], kind), (0.7, 'calibrated'))
    with self.assertRaisesRegex(ValueError, 'Unknown score'):
      reproduce_runs.pick_score(results, 'test')
    with self.assertRaisesRegex(ValueError, 'has no knn score'):
      reproduce_runs.pick_score(results, 'knn')

  def test_pick_score_knn(self):
    knn = {f'knn_{k}': v for k, v in _metrics(0.95).items()}
    raw = {f'raw_{k}': v for k, v in _metrics(0.9).items()}
    results = {'test': {'best': {**_metrics(0.7), **raw, **knn},
                        'last': _metrics(0.1)},
               'val': {'best': {'auroc': 0.8, 'raw_auroc': 0.85,
                                'knn_auroc': 0.9}}}
    test, kind = reproduce_runs.pick_score(results, 'knn')
    self.assertEqual((test['auroc'], test['fpr80'], kind),
                     (0.95, _metrics(0.95)['fpr80'], 'knn'))
    self.assertEqual(reproduce_runs.pick_score(results, 'val')[1], 'knn')
    self.assertEqual(reproduce_runs.val_auroc(results, 'val'), 0.9)
    self.assertEqual(reproduce_runs.val_auroc(results, 'knn'), 0.9)
    results['val']['best']['knn_auroc'] = 0.85  # Ties: raw before knn.
    self.assertEqual(reproduce_runs.pick_score(results, 'val')[1], 'raw')

  def test_selection_rules(self):
    knn = lambda a: {f'knn_{k}': v for k, v in _metrics(a).items()}
    results = {
        'config': {'eval': {'selection': 'label_free'}},
        'model_selection': {'criterion': 'best_val_auroc'},
        'test': {'best': {**_metrics(0.7), **knn(0.8)},
                 'last': {**_metrics(0.75), **knn(0.85)}},
        'val': {'best': {'auroc': 0.9, 'knn_auroc': 0.8},
                'last': {'auroc': 0.6, 'knn_auroc': 0.7}}}
    # Label-free: the last state's kNN score, whatever validation says.
    test, kind = reproduce_runs.pick_score(results, 'label_free')
    self.assertEqual((test['auroc'], kind), (0.85, 'last/knn'))
    self.assertEqual(reproduce_runs.val_auroc(results, 'label_free'), 0.7)
    # Labelled: the (state, score) pair with the highest validation AUROC.
    test, kind = reproduce_runs.pick_score(results, 'val_auroc')
    self.assertEqual((test['auroc'], kind), (0.7, 'best/calibrated'))
    # A later state's kNN score can beat the state kept by the calibrated
    # score (rotation negatives: the calibrated score collapses).
    results['val']['last']['knn_auroc'] = 0.95
    test, kind = reproduce_runs.pick_score(results, 'val_auroc')
    self.assertEqual((test['auroc'], kind), (0.85, 'last/knn'))
    self.assertEqual(reproduce_runs.val_auroc(results, 'val_auroc'), 0.95)
    # Ties: the calibrated score, then the best-validation state.
    results['val']['last'] = {'auroc': 0.9, 'knn_auroc': 0.9}
    self.assertEqual(reproduce_runs.pick_score(results, 'val_auroc')[1],
                     'best/calibrated')
    results['val']['last'] = {'auroc': 0.6, 'knn_auroc': 0.7}
    # 'chosen': the run's own rule (from its config for older results).
    self.assertEqual(reproduce_runs.pick_score(results, 'chosen')[1],
                     'last/knn')
    results['chosen'] = {'state': 'best', 'score': 'knn'}
    test, kind = reproduce_runs.pick_score(results, 'chosen')
    self.assertEqual((test['auroc'], kind), (0.8, 'best/knn'))
    # Without validation anomalies there is no AUROC: label-free.
    results['model_selection']['criterion'] = 'last_state'
    self.assertEqual(reproduce_runs.pick_score(results, 'val_auroc')[1],
                     'last/knn')


class ShardTest(absltest.TestCase):

  def test_parse_shard(self):
    self.assertEqual(reproduce.parse_shard('1/3'), (1, 3))
    for bad in ('3/3', '1', 'a/b', '0/0', '-1/2'):
      with self.assertRaisesRegex(ValueError, 'shard'):
        reproduce.parse_shard(bad)

  def test_each_shard_trains_only_its_runs(self):
    """Workers i/n together train every run of the table exactly once."""
    from ama_jax.reporting import json_safe  # pylint: disable=g-import-not-at-top
    from ama_jax.training import loop  # pylint: disable=g-import-not-at-top
    trained = []

    def fake_train(config, workdir):
      trained.append(workdir)
      pathlib.Path(workdir).mkdir(parents=True)
      metrics = _metrics(0.5)
      (pathlib.Path(workdir) / 'results.json').write_text(json.dumps({
          'config': json_safe.config_to_dict(config),
          'test': {'last': metrics}, 'wall_time_s': 1.0, 'steps': 1,
          'epochs': config.train.num_epochs}))

    with tempfile.TemporaryDirectory() as d, mock.patch.object(
        loop, 'train_and_evaluate', fake_train):
      kwargs = dict(base='fmnist_mnist', seeds=[0], epochs=1,
                    out=pathlib.Path(d), with_baselines=False)
      report = reproduce.reproduce('ablation', shard=(1, 2), **kwargs)
      # Both recipes: tuned full, no_inter, no_neg, neither, then paper's.
      self.assertEqual(
          [pathlib.Path(w).parts[-4:-1] for w in trained],
          [('tuned', 'fmnist_mnist', 'no_inter'),
           ('tuned', 'fmnist_mnist', 'neither'),
           ('paper', 'fmnist_mnist', 'no_inter'),
           ('paper', 'fmnist_mnist', 'neither')])
      self.assertLen(report['missing'], 4)  # full and no_neg: shard 0's.
      reproduce.reproduce('ablation', shard=(0, 2), **kwargs)
      self.assertLen(trained, 8)
      final = reproduce.reproduce('ablation', report_only=True, **kwargs)
      self.assertEqual(final['missing'], [])
      raw = reproduce.reproduce('ablation', report_only=True, score='val',
                                **kwargs)  # No raw metrics in val: calibrated.
      self.assertEqual({r['score'] for r in raw['runs']}, {'calibrated'})
      self.assertTrue((pathlib.Path(d) /
                       'ablation_fmnist_mnist_e1_score-val.md').exists())
      with self.assertRaisesRegex(ValueError, 'index must be'):
        reproduce.reproduce('ablation', shard=(2, 2), **kwargs)


class GridTest(absltest.TestCase):

  def test_parse_grid(self):
    self.assertEqual(
        reproduce.parse_grid(['loss.lambda_gp=10,0', 'sampling.style=cube']),
        {'loss.lambda_gp': [10, 0], 'sampling.style': ['cube']})
    for bad, msg in (('loss.lambda_gp', 'field=v1,v2'),
                     ('loss.lambda_gp=', 'field=v1,v2'),
                     ('seed=0,1', 'cannot be chosen'),
                     ('data.normal_classes=1,2', 'cannot be chosen')):
      with self.assertRaisesRegex(ValueError, msg):
        reproduce.parse_grid([bad])

  def test_each_value_trains_and_the_best_on_validation_is_reported(self):
    from ama_jax.reporting import json_safe  # pylint: disable=g-import-not-at-top
    from ama_jax.training import loop  # pylint: disable=g-import-not-at-top
    trained = []

    def fake_train(config, workdir):
      # Digit 0 validates best without the penalty, digit 1 with it; the
      # test AUROC tells which run was reported.
      trained.append(pathlib.Path(workdir).name)
      pathlib.Path(workdir).mkdir(parents=True)
      gp, digit = config.loss.lambda_gp, config.data.normal_classes[0]
      good = (gp == 0) == (digit == 0)
      test = _metrics(0.6 + 0.1 * good + 0.01 * gp)
      (pathlib.Path(workdir) / 'results.json').write_text(json.dumps({
          'config': json_safe.config_to_dict(config),
          'val': {'last': {'auroc': 0.5 + 0.3 * good, 'raw_auroc': 0.1}},
          'test': {'last': test}, 'wall_time_s': 1.0, 'steps': 1,
          'epochs': config.train.num_epochs}))

    with tempfile.TemporaryDirectory() as d, mock.patch.object(
        loop, 'train_and_evaluate', fake_train):
      kwargs = dict(base='mnist_oneclass', seeds=[0], epochs=1,
                    classes=['0', '1'], out=pathlib.Path(d),
                    with_baselines=False, grid={'loss.lambda_gp': [10, 0]},
                    recipes=['tuned'])
      # Shards split the (run, value) pairs: 1/2 trains the second value.
      half = reproduce.reproduce('mnist_oneclass', shard=(1, 2), **kwargs)
      self.assertEqual(trained, ['e1_s0_loss.lambda_gp=0'] * 2)
      self.assertLen(half['missing'], 2)
      self.assertIn('(e1_s0)', half['missing'][0])
      report = reproduce.reproduce('mnist_oneclass', **kwargs)
      self.assertLen(trained, 4)  # The config's own value: plain workdir.
      self.assertEqual(trained[2:], ['e1_s0', 'e1_s0'])
      self.assertEqual(report['missing'], [])
      by_row = {r['row']: r for r in report['runs']}
      self.assertEqual(by_row['0']['grid_choice'], {'loss.lambda_gp': 0})
      self.assertEqual(by_row['1']['grid_choice'], {'loss.lambda_gp': 10})
      self.assertEqual(by_row['0']['grid_val_auroc'], [0.5, 0.8])
      self.assertAlmostEqual(by_row['0']['test_last']['auroc'], 0.7)
      self.assertAlmostEqual(by_row['1']['test_last']['auroc'], 0.8)
      md = (pathlib.Path(d) / 'mnist_oneclass_e1_grid-lambda_gp.md'
            ).read_text()
      self.assertIn('loss.lambda_gp in [10, 0]: chosen per run', md)
      self.assertIn('loss.lambda_gp=0: 1; loss.lambda_gp=10: 1', md)
      with self.assertRaisesRegex(ValueError, "Unknown config field 'loss.gp'"):
        reproduce.reproduce('mnist_oneclass', report_only=True,
                            **{**kwargs, 'grid': {'loss.gp': [1]}})
      with self.assertRaisesRegex(ValueError, 'not both'):
        reproduce.reproduce('mnist_oneclass', report_only=True,
                            overrides={'loss.lambda_gp': 1}, **kwargs)


def _metrics(auroc):
  return {'auroc': auroc, 'auprc_anomaly': auroc / 2,
          'auprc_normal': auroc, 'fpr80': 1 - auroc}


class SummaryTest(absltest.TestCase):

  def test_mean_and_std_over_seeds_and_rows(self):
    records = [
        {'row': '0', 'method': 'full', 'seed': 0, 'test': _metrics(0.9)},
        {'row': '0', 'method': 'full', 'seed': 1, 'test': _metrics(0.8)},
        {'row': '1', 'method': 'full', 'seed': 0, 'test': _metrics(0.7)},
        {'row': '1', 'method': 'full', 'seed': 1, 'test': _metrics(0.6)},
        {'row': '0', 'method': 'baseline:knn', 'seed': 0,
         'test': _metrics(0.5)},
    ]
    summary = reproduce_tables.summarize(records)
    self.assertAlmostEqual(summary[('0', 'full')]['auroc']['mean'], 0.85)
    # Sample std (ddof=1) of [0.9, 0.8].
    self.assertAlmostEqual(summary[('0', 'full')]['auroc']['std'],
                           0.0707107, places=6)
    # Mean row: per-seed means over rows (0.8, 0.7), then over seeds.
    self.assertAlmostEqual(summary[('mean', 'full')]['auroc']['mean'], 0.75)
    self.assertAlmostEqual(summary[('mean', 'full')]['fpr80']['mean'], 0.25)
    # kNN lacks row 1: no mean row for it rather than a partial one.
    self.assertNotIn(('mean', 'baseline:knn'), summary)
    md = reproduce_tables.markdown('mnist_oneclass', 'mnist_oneclass', 2,
                                   [0, 1], summary,
                                   ['mnist_oneclass_2/full/seed 0'])
    self.assertIn('| 0 | 0.986 | 0.850 ± 0.071 | 0.500 |', md)
    self.assertIn('| **mean** | 0.938 | 0.750 ± 0.071 | – |', md)
    self.assertIn('kNN (raw pixels)', md)
    self.assertIn('Not yet run (1)', md)

  def test_ood_table_shows_paper_row(self):
    summary = reproduce_tables.summarize(
        [{'row': '', 'method': 'full', 'seed': 0, 'test': _metrics(0.98)},
         {'row': '', 'method': 'paper/full', 'seed': 0,
          'test': _metrics(0.96)}])
    md = reproduce_tables.markdown('fmnist_mnist', 'fmnist_mnist', 2, [0],
                                   summary, [])
    self.assertEqual(md.count('| paper: AMA | 0.987 | – | 0.999 | 0.001 |'),
                     1)
    self.assertIn('| AMA (ours), tuned recipe, 2 ep | 0.980 | 0.490 | 0.980 '
                  '| 0.020 |', md)
    self.assertIn('| AMA (ours), paper recipe, 2 ep | 0.960 |', md)


class EndToEndTest(absltest.TestCase):
  """Two tiny one-class runs with baselines, then a report-only rerun."""

  def test_runlocal_table(self):
    with tempfile.TemporaryDirectory() as d:
      out = pathlib.Path(d)
      kwargs = dict(base='fmnist_mnist', seeds=[0], epochs=None, out=out,
                    classes=['0', '1'], calibration_size=None,
                    runlocal=True)
      report = reproduce.reproduce('mnist_oneclass', **kwargs)
      self.assertLen(report['runs'], 4)  # Two classes, two recipes.
      self.assertEqual(report['missing'], [])
      self.assertLen(report['baselines'], 6)
      summary = {(s['row'], s['method']): s for s in report['summary']}
      for row in ('0', '1', 'mean'):
        for method in ('full', 'paper/full', 'baseline:knn', 'baseline:pca',
                       'baseline:ocsvm'):
          self.assertBetween(summary[(row, method)]['auroc']['mean'], 0, 1)
      md = (out / 'mnist_oneclass_e2.md').read_text()
      self.assertIn('| **mean** | 0.938 |', md)
      saved = json.loads((out / 'mnist_oneclass_e2.json').read_text())
      self.assertEqual(saved['summary'], _plain(report['summary']))
      # Report-only reuses the runs and the cached baselines exactly.
      again = reproduce.reproduce('mnist_oneclass', report_only=True,
                                  **kwargs)
      self.assertEqual(_plain(again['summary']), _plain(report['summary']))
      missing = reproduce.reproduce(
          'mnist_oneclass', report_only=True,
          **{**kwargs, 'classes': ['0', '2']})
      self.assertEqual(missing['missing'],
                       ['tuned/mnist_oneclass_2/full/seed 0',
                        'paper/mnist_oneclass_2/full/seed 0'])
      # Baselines do not need the AMA run: class 2 has them, AMA does not.
      methods = {s['method'] for s in missing['summary'] if s['row'] == '2'}
      self.assertEqual(methods, {'baseline:knn', 'baseline:pca',
                                 'baseline:ocsvm'})


def _plain(obj):
  return json.loads(json.dumps(obj))


if __name__ == '__main__':
  absltest.main()
