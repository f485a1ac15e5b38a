"""End-to-end tests of the training program (`ama_jax.main` / `loop`)."""
import copy
import csv as csv_lib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from unittest import mock as mock_lib

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import numpy as np
import tensorflow_datasets as tfds

from ama_jax.checkpoints import checkpoint_reading
from ama_jax import errors
from ama_jax.data import input_pipeline
from ama_jax.training import loop
from ama_jax.reporting import metric_writers
from ama_jax.scoring import metrics
from ama_jax.data import tfds_source
from configs import cifar_oneclass
from configs import cifar_svhn
from configs import default
from configs import fmnist_oneclass
from configs import mnist_oneclass

_REPO = pathlib.Path(__file__).resolve().parent.parent
_FIGURES = ('hist_raw_r.png', 'hist_score.png', 'roc.png',
            'reconstructions.png', 'negatives.png')


def _check_outputs(test, workdir: pathlib.Path) -> dict:
  results = json.loads((workdir / 'results.json').read_text())
  for name in ('best', 'last'):
    for key in ('auroc', 'auprc_anomaly', 'auprc_normal', 'fpr80', 'fpr95',
                'raw_auroc'):
      test.assertBetween(results['test'][name][key], 0.0, 1.0)
  test.assertTrue(list((workdir / 'checkpoints').iterdir()))
  test.assertTrue(list((workdir / 'best').iterdir()))
  test.assertTrue(list(workdir.glob('events.out.tfevents.*')))
  for fig in _FIGURES:
    test.assertGreater((workdir / fig).stat().st_size, 1000, fig)
  meta = checkpoint_reading.read_meta(str(workdir), kind='best')
  for key in ('mu', 'sigma', 'threshold', 'config'):
    test.assertIn(key, meta)
  # The score with the highest validation AUROC at the selected state, and
  # its test metrics there.
  chosen = results['score_chosen_on_validation']
  val, tested = results['val']['best'], results['test']['best']
  prefix = {'calibrated': '', 'raw': 'raw_', 'knn': 'knn_'}[chosen['score']]
  test.assertEqual(chosen['val_auroc'], max(
      val[f'{p}auroc'] for p in ('', 'raw_', 'knn_') if f'{p}auroc' in val))
  test.assertEqual((chosen['auroc'], chosen['fpr80']),
                   (tested[f'{prefix}auroc'], tested[f'{prefix}fpr80']))
  return results


class MainTest(parameterized.TestCase):

  def test_command_line_trains_then_scores_new_images(self):
    workdir = pathlib.Path(self.create_tempdir().full_path)
    out = subprocess.run(
        [sys.executable, '-m', 'ama_jax.main',
         '--config=configs/default.py:runlocal', f'--workdir={workdir}',
         '--config.eval.threshold_fpr=0.1'],
        cwd=_REPO, capture_output=True, text=True, timeout=900)
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    self.assertRegex(out.stdout, r'test \(best state\): AUROC 0\.\d+')
    self.assertRegex(out.stdout, r'score chosen on validation: '
                     r'(calibrated|raw|knn) \(validation AUROC 0\.\d+\): '
                     r'test AUROC 0\.\d+')
    self.assertRegex(out.stdout, r'detector, chosen label-free \(no labelled '
                     r'anomalies\): feature kNN \(k=1\) score of the last '
                     r'state \(step \d+\): test AUROC 0\.\d+')
    results = _check_outputs(self, workdir)
    self.assertEqual(results['config']['eval']['threshold_fpr'], 0.1)
    self.assertEqual(results['counts']['test']['total'], 64)

    # The trained model scores new images with nothing but the workdir.
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28),
                                               dtype=np.uint8)
    npy, csv = workdir / 'new.npy', workdir / 'scores.csv'
    np.save(npy, images)
    out = subprocess.run(
        [sys.executable, '-m', 'ama_jax.tools.score', f'--workdir={workdir}',
         f'--input={npy}', f'--output={csv}'],
        cwd=_REPO, capture_output=True, text=True, timeout=600)
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    rows = csv.read_text().strip().splitlines()
    # By default the detector the run chose (label-free: the kNN score).
    self.assertEqual(results['chosen']['rule'], 'label_free')
    self.assertEqual(results['chosen']['score'], 'knn')
    self.assertEqual(rows[0], 'id,r,knn,is_anomaly')
    self.assertLen(rows, 6)

    # --score=knn on the run's own test split gives the feature kNN AUROC
    # that its final evaluation reported (same reference, same networks).
    config = default.get_config('runlocal')
    data = input_pipeline.load_protocol(config.data, config.seed,
                                        input_size=(28, 28))
    test_npy, knn_csv = workdir / 'test.npy', workdir / 'knn.csv'
    np.save(test_npy, data.test.images)
    for attempt in ('computes', 'reads the cache'):
      out = subprocess.run(
          [sys.executable, '-m', 'ama_jax.tools.score', f'--workdir={workdir}',
           f'--input={test_npy}', f'--output={knn_csv}', '--score=knn'],
          cwd=_REPO, capture_output=True, text=True, timeout=600)
      self.assertEqual(out.returncode, 0, (attempt, out.stderr[-3000:]))
      with open(knn_csv, newline='') as f:
        rows = list(csv_lib.DictReader(f))
      self.assertEqual(list(rows[0]), ['id', 'r', 'knn', 'is_anomaly'])
      knn = np.array([float(row['knn']) for row in rows])
      self.assertAlmostEqual(
          metrics.compute_metrics(data.test.labels, knn)['auroc'],
          results['test']['best']['knn_auroc'], places=4, msg=attempt)
    # The final evaluation stored both checkpoints' memory banks.
    self.assertCountEqual(
        [p.name for p in (workdir / 'knn_reference').iterdir()],
        [f'best_{results["best_step"]}.npz', f'latest_{results["steps"]}.npz'])

    # The default score (the chosen detector) and its export score the test
    # split with the AUROC results.json gives the chosen detector.
    export_dir = workdir / 'export'
    out = subprocess.run(
        [sys.executable, '-m', 'ama_jax.tools.export', f'--workdir={workdir}',
         f'--output={export_dir}', '--platforms=cpu'],
        cwd=_REPO, capture_output=True, text=True, timeout=600)
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    self.assertIn('exported the knn score of the latest checkpoint', out.stdout)
    for source in (workdir, export_dir):
      chosen_csv = workdir / 'chosen.csv'
      out = subprocess.run(
          [sys.executable, '-m', 'ama_jax.tools.score', f'--workdir={source}',
           f'--input={test_npy}', f'--output={chosen_csv}'],
          cwd=_REPO, capture_output=True, text=True, timeout=600)
      self.assertEqual(out.returncode, 0, out.stderr[-3000:])
      with open(chosen_csv, newline='') as f:
        rows = list(csv_lib.DictReader(f))
      scores = np.array([float(row['knn']) for row in rows])
      self.assertAlmostEqual(
          metrics.compute_metrics(data.test.labels, scores)['auroc'],
          results['chosen']['auroc'], places=4, msg=str(source))
      flagged = np.array([row['is_anomaly'] == '1' for row in rows])
      np.testing.assert_array_equal(
          flagged, scores > results['chosen']['threshold'])

  def test_console_is_quiet_and_log_file_keeps_the_info_log(self):
    tmp = pathlib.Path(self.create_tempdir().full_path)

    def train(workdir: pathlib.Path, *flags: str):
      out = subprocess.run(
          [sys.executable, '-m', 'ama_jax.main',
           '--config=configs/default.py:runlocal', f'--workdir={workdir}',
           *flags], cwd=_REPO, capture_output=True, text=True, timeout=900)
      self.assertEqual(out.returncode, 0, out.stderr[-3000:])
      return out

    # A Python log line: `I1206 19:55:33.192811 1396763 loop.py:370] ...`.
    info = r'(?m)^I\d{4} [\d:.]+ +\d+ \S+\.py:\d+\] '
    quiet = train(tmp / 'quiet')
    self.assertNotRegex(quiet.stdout + quiet.stderr, info)
    self.assertNotIn('[process=0]', quiet.stderr)  # Orbax's INFO lines.
    # The plan, progress (not a terminal: no redraws), one line per
    # validation on stderr; the summary on stdout.
    self.assertNotIn('\r', quiet.stderr)
    self.assertRegex(quiet.stderr, r'(?m)^Global batch 16 = ')
    self.assertRegex(quiet.stderr, r'(?m)^epoch 2/2 \[#{30}\] 8/8 steps '
                     r'\(100%\), [\d.]+ steps/s, ETA 0s$')
    for epoch, step in ((1, 4), (2, 8)):
      self.assertRegex(quiet.stderr, rf'(?m)^epoch {epoch} step {step}: val '
                       r'AUROC \d\.\d{4} \((one|two)_sided score; raw R ')
    self.assertRegex(quiet.stdout, r'(?m)^best validation AUROC 0\.\d+ at '
                     r'step \d+$')
    self.assertRegex(quiet.stdout, r'test \(best state\): AUROC 0\.\d+')
    # The whole INFO log is in <workdir>/log.txt, from the program's start.
    log = (tmp / 'quiet' / 'log.txt').read_text()
    self.assertRegex(log, info + r'JAX process 0/1')
    self.assertRegex(log, info + r'Training step .* compiled and ran once')
    self.assertRegex(log, r'(?m)^I.* loop\.py:\d+\] epoch 2 step 8: val AUROC')
    self.assertIn('[process=0]', log)

    # --verbosity=0: the INFO log on the console too, and no progress line.
    loud = train(tmp / 'loud', '--verbosity=0')
    self.assertRegex(loud.stderr, r'(?m)^I.* loop\.py:\d+\] epoch 1 step 4: '
                     r'val AUROC')
    self.assertIn('[process=0]', loud.stderr)
    self.assertNotRegex(loud.stderr, r'(?m)^epoch 1 step 4')  # Not twice.
    self.assertNotIn('8/8 steps', loud.stderr)
    self.assertRegex(loud.stdout, r'test \(best state\): AUROC 0\.\d+')
    self.assertIn('compiled and ran once',
                  (tmp / 'loud' / 'log.txt').read_text())

  @parameterized.named_parameters(
      ('mnist_oneclass', mnist_oneclass, '3,runlocal', False),
      ('fmnist_oneclass', fmnist_oneclass, 'trouser,runlocal', False),
      ('cifar_svhn', cifar_svhn, 'runlocal', True),
      ('cifar_oneclass', cifar_oneclass, 'ship,runlocal', True),
  )
  def test_runlocal_config_writes_everything(self, module, arg, mock):
    config = module.get_config(arg)
    workdir = pathlib.Path(self.create_tempdir().full_path)
    progress_steps = []
    create_writer = metric_writers.create_writer

    def recording_writer(*args, **kwargs):
      writer, progress = create_writer(*args, **kwargs)

      class Recorder:
        def __call__(self, step, *rest):
          progress_steps.append(step)
          return progress(step, *rest)

        def __getattr__(self, name):
          return getattr(progress, name)

      return writer, Recorder()

    with mock_lib.patch.object(metric_writers, 'create_writer',
                               recording_writer):
      if mock:  # CIFAR-10 / SVHN cannot be downloaded here.
        # Mocked TFDS "downloads": the hosts need not answer.
        with tfds.testing.mock_data(num_examples=1024), mock_lib.patch.object(
            tfds_source, 'unreachable', return_value=None):
          loop.train_and_evaluate(config, str(workdir))
      else:
        loop.train_and_evaluate(config, str(workdir))
    _check_outputs(self, workdir)
    # Progress (steps/s, ETA) is reported only after a host sync (every
    # log.every_steps and at epoch ends), so that it counts executed steps.
    steps_per_epoch = config.train.max_steps_per_epoch
    total = steps_per_epoch * config.train.num_epochs
    self.assertEqual(progress_steps, [
        s for s in range(1, total + 1)
        if s % config.log.every_steps == 0 or s % steps_per_epoch == 0])


class ResumeTest(absltest.TestCase):

  def test_halted_run_resumes_to_the_uninterrupted_parameters(self):
    config = mnist_oneclass.get_config('1,runlocal')
    full_dir = self.create_tempdir().full_path
    full = jax.device_get(loop.train_and_evaluate(config, full_dir))
    self.assertEqual(int(full.step), 8)  # 2 epochs x 4 steps.

    resumed_dir = self.create_tempdir().full_path
    with config.unlocked():
      config.train.halt_after_steps = 3  # Mid-epoch, between checkpoints.
    halted = loop.train_and_evaluate(config, resumed_dir)
    self.assertEqual(int(halted.step), 3)
    # Saved before any validation: strict JSON, None rather than -Infinity.
    meta = checkpoint_reading.read_meta(resumed_dir, kind='latest')
    self.assertIsNone(meta['best_val_auroc'])
    meta_files = list(
        pathlib.Path(resumed_dir).glob('checkpoints/*/meta/metadata'))
    self.assertTrue(meta_files)
    for f in meta_files:
      json.loads(f.read_text(), parse_constant=self.fail)
    with config.unlocked():
      config.train.halt_after_steps = None
    resumed = jax.device_get(loop.train_and_evaluate(config, resumed_dir))
    self.assertEqual(int(resumed.step), 8)
    chex.assert_trees_all_equal(resumed.ae.params, full.ae.params)
    chex.assert_trees_all_equal(resumed.critic.params, full.critic.params)
    chex.assert_trees_all_equal(resumed.ae.opt_state, full.ae.opt_state)

    # A finished run started again (as after a crash in its final
    # evaluation) redoes that evaluation from its checkpoints: the same
    # calibration in its meta and the same test metrics.
    results = json.loads((pathlib.Path(full_dir) / 'results.json').read_text())
    first_meta = checkpoint_reading.read_meta(full_dir, kind='latest')
    (pathlib.Path(full_dir) / 'results.json').unlink()
    again = jax.device_get(loop.train_and_evaluate(config, full_dir))
    chex.assert_trees_all_equal(again.ae.params, full.ae.params)
    meta = checkpoint_reading.read_meta(full_dir, kind='latest')
    for key in ('mu', 'sigma', 'threshold', 'val_auroc'):
      self.assertEqual(meta[key], first_meta[key])
    again_results = json.loads(
        (pathlib.Path(full_dir) / 'results.json').read_text())
    self.assertEqual(again_results['test'], results['test'])

  def test_resume_with_another_config_is_refused(self):
    config = mnist_oneclass.get_config('1,runlocal')
    workdir = self.create_tempdir().full_path
    with config.unlocked():
      config.train.halt_after_steps = 3
    loop.train_and_evaluate(config, workdir)
    changed = copy.deepcopy(config)
    with changed.unlocked():
      changed.train.halt_after_steps = None
      changed.loss.lambda_neg = 1.0
      changed.seed = 5
    with self.assertRaisesRegex(
        errors.ConfigError,
        r'resumable from step 3\) trained with another config: '
        r'loss\.lambda_neg: 5\.0 there, 1\.0 now; seed: 0 there, 5 now\. '
        r'Use a new --workdir'):
      loop.train_and_evaluate(changed, workdir)
    # What does not change the training may differ: halting, evaluation.
    with config.unlocked():
      config.train.halt_after_steps = 5
      config.eval.knn_k = 0
    self.assertEqual(int(loop.train_and_evaluate(config, workdir).step), 5)
    # Asked for explicitly, the changed config continues the run.
    with changed.unlocked():
      changed.train.allow_resume_changes = True
      changed.train.halt_after_steps = 6
    with self.assertLogs(level='WARNING') as logs:
      self.assertEqual(
          int(loop.train_and_evaluate(changed, workdir).step), 6)
    self.assertTrue(any('loss.lambda_neg: 5.0 there, 1.0 now' in line
                        for line in logs.output), logs.output)

  def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(self):
    config = mnist_oneclass.get_config('1,runlocal')
    workdir = self.create_tempdir().full_path
    with config.unlocked():
      config.train.halt_after_steps = 4
    loop.train_and_evaluate(config, workdir)
    with config.unlocked():
      config.train.halt_after_steps = None
      config.optim.lr = 1e38  # Parameters overflow on the next update.
      config.train.allow_resume_changes = True  # A changed rate, on purpose.
    with self.assertRaisesRegex(loop.NonFiniteLossError,
                                r'steps? \d+.*last good checkpoint'):
      loop.train_and_evaluate(config, workdir)
    meta = checkpoint_reading.read_meta(workdir, kind='latest')
    self.assertEqual(meta['step'], 4)


if __name__ == '__main__':
  absltest.main()
