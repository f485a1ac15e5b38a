"""Tests of `ama_jax.tools.benchmark`: its usage lines, the peak table, its
settings, the figures of a tiny run (float32, the PyTorch comparison with a
stand-in; `accelerator_benchmark_test` runs one in bfloat16)."""
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import flagsaver

from ama_jax.tools import benchmark
from ama_jax.config import config_checks

_REPO = pathlib.Path(__file__).resolve().parents[1]


class BenchmarkTest(absltest.TestCase):

  def test_usage_lines_use_defined_flags(self):
    # `--n-critic` in the usage once: absl rejects it (flags use '_').
    usage = benchmark.__doc__.split('Prints one JSON line')[0]
    names = re.findall(r'--(\w[\w-]*)', usage)
    self.assertNotEmpty(names)
    for name in names:
      self.assertIn(name, benchmark.FLAGS, name)

  def test_peak_flops_of_known_and_unknown_devices(self):
    self.assertEqual(benchmark.peak_flops('NVIDIA H200', 'bfloat16'), 989e12)
    self.assertEqual(benchmark.peak_flops('NVIDIA H200', 'float32'), 67e12)
    self.assertIsNone(benchmark.peak_flops('cpu', 'float32'))
    self.assertIsNone(benchmark.peak_flops('TPU v4', 'float32'))

  @flagsaver.flagsaver
  def test_settings_of_both_archs_pass_the_config_checks(self):
    for arch in ('mnist', 'cifar'):
      for dtype in ('float32', 'bfloat16'):
        benchmark.FLAGS.arch, benchmark.FLAGS.compute_dtype = arch, dtype
        config = benchmark._config()  # pylint: disable=protected-access
        config_checks.validate(config, num_devices=2)
        self.assertEqual((config.model.arch, config.model.compute_dtype),
                         (arch, dtype))

  def test_tiny_run_prints_compile_flops_and_torch_ratio(self):
    with tempfile.TemporaryDirectory() as d:
      # A stand-in for the reference's Python: prints the reference's line.
      fake = pathlib.Path(d) / 'fake_python'
      fake.write_text('#!/bin/sh\necho \'{"train_img_s_median": 4.0, '
                      '"score_img_s_median": 8.0}\'\n')
      fake.chmod(0o755)
      out = pathlib.Path(d) / 'bench.jsonl'
      env = dict(os.environ, JAX_PLATFORMS='cpu')
      env.pop('XLA_FLAGS', None)  # One CPU device, as the README's runs.
      env.pop('JAX_COMPILATION_CACHE_DIR', None)
      proc = subprocess.run(
          [sys.executable, '-m', 'ama_jax.tools.benchmark', '--arch=mnist',
           '--batch=4', '--tiny', '--steps=1', '--warmup=0',
           '--score_batches=1', '--rounds=2', f'--torch_python={fake}', f'--torch_ref={fake}',
           '--peak_flops=1e12', f'--json_out={out}'],
          cwd=_REPO, env=env, capture_output=True, text=True, timeout=600)
      self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
      line = json.loads(proc.stdout.strip().splitlines()[-1])
      self.assertEqual(json.loads(out.read_text()), line)
    self.assertEqual((line['arch'], line['compute_dtype'], line['conv_forms']),
                     ('mnist', 'float32', 'cpu_forms'))
    # Cold, then warm from the persistent cache the cold compile filled.
    self.assertTrue(line['warm_cache_hit'])
    self.assertGreater(line['compile_s'], line['trace_s'])
    self.assertGreater(line['compile_warm_s'], 0)
    self.assertGreater(line['flops_per_step'], 0)
    self.assertEqual(line['flops_source'], 'compiled')
    self.assertGreater(line['lowered_flops_per_step'], 0)
    self.assertAlmostEqual(line['utilisation'],
                           line['achieved_flops_per_s'] / 1e12)
    self.assertAlmostEqual(line['step_ms'],
                           1e3 * line['train_step_s_median'])
    self.assertGreater(line['peak_memory_mb'], 0)
    self.assertTrue(line['finite'])
    self.assertEqual(line['rounds'], 2)
    self.assertLen(line['round_train_img_per_s'], 2)
    self.assertAlmostEqual(line['train_img_per_s'],
                           sum(line['round_train_img_per_s']) / 2, delta=0.01)
    self.assertEqual(line['round_torch_train_img_per_s'], [4, 4])
    self.assertAlmostEqual(line['train_ratio'], line['train_img_per_s'] / 4)
    self.assertAlmostEqual(line['score_ratio'], line['score_img_per_s'] / 8)


if __name__ == '__main__':
  absltest.main()
