"""Tests of `launch/accelerator_benchmark.py`: the plan, the budget, a smoke run."""
import importlib.util
import json
import os
import pathlib
import tarfile
import tempfile
import time
from unittest import mock

from absl.testing import absltest

_PATH = pathlib.Path(__file__).resolve().parents[1] / 'launch'
_SPEC = importlib.util.spec_from_file_location(
    'accelerator_benchmark', _PATH / 'accelerator_benchmark.py')
bench_run = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_run)


class PlanTest(absltest.TestCase):

  def test_dry_run_plans_every_benchmark_then_the_three_seeds(self):
    with tempfile.TemporaryDirectory() as d, mock.patch.dict(
        os.environ, {'BUDGET_S': '500'}):
      summary = bench_run.main([d, '--dry_run'])
      self.assertEqual(json.loads((pathlib.Path(d) / 'summary.json')
                                  .read_text()), summary)
    plan = summary['plan']
    # Batch 256 first (cifar bf16 at 256: the utilisation target).
    self.assertEqual(plan['benchmarks'], [
        'cifar_b256_bfloat16', 'cifar_b256_float32', 'mnist_b256_bfloat16',
        'mnist_b256_float32', 'cifar_b64_bfloat16', 'cifar_b64_float32',
        'mnist_b64_bfloat16', 'mnist_b64_float32'])
    self.assertEqual((summary['budget_s'], summary['bench_s']), (500, 275))
    command = plan['benchmark_command']
    self.assertEqual(command[1:3], ['-m', 'ama_jax.tools.benchmark'])
    self.assertIn('--compute_dtype=bfloat16', command)
    self.assertNotIn('--tiny', command)
    train = plan['train_command']
    for flag in ('--oneclass_epochs=0', '--epoch_choices=100',
                 '--worker_flag=--recipes=paper',
                 '--budget_s=450'):  # 500 - 20 (packing) - 30 (stopping).
      self.assertIn(flag, train)
    self.assertTrue(train[1].endswith('launch/parallel_reproduce.py'))

  def test_variants_follow_the_first_benchmark(self):
    plan = bench_run.benchmarks(['cifar', 'mnist'], [64, 256], ['bfloat16'],
                              ('--xla_a=1', '--xla_b=2'))
    self.assertEqual([b.name for b in plan], [
        'cifar_b256_bfloat16', 'cifar_b256_bfloat16_variant1',
        'cifar_b256_bfloat16_variant2', 'mnist_b256_bfloat16',
        'cifar_b64_bfloat16', 'mnist_b64_bfloat16'])
    self.assertEqual(plan[2].xla_flags, '--xla_b=2')

  def test_smoke_settings_and_phases(self):
    args = bench_run.parse_args(['out', '--smoke', '--phases=train',
                               '--budget_s=300'])
    self.assertEqual((args.batches, args.bench_steps, args.train_epochs),
                     ('16,8', 1, 2))
    self.assertEqual(args.phases, ['train'])
    self.assertIn('--worker_flag=--runlocal',
                  bench_run.train_command(args, 100, pathlib.Path('r')))
    with self.assertRaises(SystemExit):
      bench_run.parse_args(['out', '--phases=bench,fly'])

  def test_benchmarks_get_what_is_left_and_then_are_skipped(self):
    args = bench_run.parse_args(['out', '--bench_timeout_s=100',
                               '--bench_min_s=30'])
    # mnist_b64_float32, then a variant of it with more XLA flags.
    plan = bench_run.benchmarks(['mnist'], [64], ['float32'], ('--xla_x=1',))
    clock = bench_run.Clock(540)
    clock.start = time.time() - 100  # 100 s have passed.
    timeouts, xla_flags = [], []

    def fake_run(cmd, *, timeout_s, log, env):
      del cmd, log
      timeouts.append(timeout_s)
      xla_flags.append(env.get('XLA_FLAGS'))
      clock.start -= 45  # Each benchmark takes 45 s.
      return {'rc': 0, 'timed_out': False, 'wall_s': 45.0}

    with tempfile.TemporaryDirectory() as d, mock.patch.object(
        bench_run, 'run', fake_run):
      outcomes = bench_run.run_benchmarks(args, plan, pathlib.Path(d), {},
                                        clock, until=180)
    # 80 s left: the first gets them (capped at 100); 35 s left for the
    # second; nothing after 30 s.
    self.assertLen(timeouts, 2)
    self.assertAlmostEqual(timeouts[0], 80, delta=1)
    self.assertAlmostEqual(timeouts[1], 35, delta=1)
    self.assertEqual([o.get('skipped', False) for o in outcomes],
                     [False, False])
    self.assertEqual(xla_flags, [None, '--xla_x=1'])
    self.assertEqual(outcomes[1]['xla_flags'], '--xla_x=1')
    clock.start -= 100
    with tempfile.TemporaryDirectory() as d, mock.patch.object(
        bench_run, 'run', fake_run):
      outcomes = bench_run.run_benchmarks(args, plan, pathlib.Path(d), {},
                                        clock, until=180)
    self.assertEqual([o['skipped'] for o in outcomes], [True, True])


  def test_runs_report_their_last_step_and_whether_they_finished(self):
    with tempfile.TemporaryDirectory() as d:
      folder = pathlib.Path(d)
      for seed, finished in ((0, True), (1, False)):
        run = folder / 'fmnist_mnist' / 'full' / f'e100_s{seed}'
        run.mkdir(parents=True)
        (run / 'history.jsonl').write_text(
            '{"kind": "train", "step": 50}\n{"kind": "val", "step": 232}\n'
            + ('' if finished else '{"kind": "tra'))  # Cut by the stop.
        if finished:
          (run / 'results.json').write_text('{}')
      self.assertEqual(bench_run._runs(folder), [  # pylint: disable=protected-access
          {'run': 'fmnist_mnist/full/e100_s0', 'last_step': 232,
           'finished': True},
          {'run': 'fmnist_mnist/full/e100_s1', 'last_step': 232,
           'finished': False}])


class SmokeTest(absltest.TestCase):

  def test_one_tiny_benchmark_session(self):
    # The real script on CPU: set-up, one :runlocal benchmark (bf16), the
    # summary and the pack; no training (its launcher has its own tests).
    with tempfile.TemporaryDirectory() as d:
      out, work = pathlib.Path(d) / 'out', pathlib.Path(d) / 'work'
      env = {'JAX_PLATFORMS': 'cpu'}
      with mock.patch.dict(os.environ, env):
        summary = bench_run.main([
            str(out), '--smoke', '--phases=bench', '--archs=mnist',
            '--batches=8', '--dtypes=bfloat16', '--budget_s=400',
            f'--work={work}'])
      self.assertEqual(sorted(p.name for p in out.iterdir()), [
          'bench.jsonl', 'bench.log', 'run.log', 'runs.tgz',
          'summary.json'])
      line = json.loads((out / 'bench.jsonl').read_text())
      with tarfile.open(out / 'runs.tgz') as tar:
        self.assertEqual(tar.getnames(), [])
    self.assertNotIn('failed', summary['setup'])
    (bench,) = summary['benchmarks']
    self.assertEqual((bench['name'], bench['rc']), ('mnist_b8_bfloat16', 0))
    self.assertEqual(bench['result'], line)
    self.assertEqual((line['compute_dtype'], line['batch'], line['tiny']),
                     ('bfloat16', 8, True))
    self.assertTrue(line['warm_cache_hit'])
    self.assertTrue(line['finite'])
    self.assertIsNone(line['score_img_per_s'])  # Scoring is off.
    self.assertIsNone(line['utilisation'])  # No peak known for a CPU.
    for key in ('compile_s', 'compile_warm_s', 'step_ms', 'flops_per_step',
                'peak_memory_mb'):
      self.assertGreater(line[key], 0, key)


if __name__ == '__main__':
  absltest.main()
