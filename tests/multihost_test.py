"""Multi-host training: two processes on loopback train like one process.

`test_two_processes_match_one_process_with_as_many_devices` runs the command
of launch/ twice over: 2 processes x 2 CPU devices (gloo collectives, the
coordinator on a free loopback port) and 1 process x 4 CPU devices, both
`python -m ama_jax.main --config=configs/default.py:runlocal` (2 epochs x 4
steps, global batch 16, synthetic negatives from the second epoch, gradient
penalty and simplex interpolation on), all three processes at once.

Every random term is keyed per example: by the step and the example's row in
the global batch, never by the device or the process (`step_draws.row_keys`:
negatives, simplex weights, interpolation partners, gradient-penalty
mixing), and each epoch's data order is drawn from the config seed on every
process (`placement.epoch_order`). Both layouts thus compute the same global
steps; they differ only in the summation order of cross-device sums (gloo
across processes vs. XLA in one), so parameters agree to float32 noise:
measured max |difference| 4e-6 after 8 Adam steps; the test allows 1e-4.
"""
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

from absl.testing import absltest
import jax
import numpy as np

from ama_jax.checkpoints import checkpoint_reading
from ama_jax.training import placement
from ama_jax.training import run_plan
from ama_jax.training import train_state
from configs import default

_REPO = pathlib.Path(__file__).resolve().parent.parent
_CONFIG = 'configs/default.py:runlocal'
_TIMEOUT_S = 600


def _gloo_missing() -> str:
  """Why CPU cross-process collectives are unavailable ('' if they are)."""
  try:
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return f'jaxlib internals not importable: {e}'
  if not hasattr(_jax, 'make_gloo_tcp_collectives'):
    return 'this jaxlib has no gloo CPU collectives'
  return ''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(num_devices: int) -> dict[str, str]:
  flags = f'--xla_force_host_platform_device_count={num_devices}'
  # Keep the project's CPU-etiquette flags (thread counts), drop its count.
  rest = re.sub(r'--xla_force_host_platform_device_count=\S+', '',
                os.environ.get('XLA_FLAGS', ''))
  return dict(os.environ, XLA_FLAGS=f'{flags} {rest}'.strip(),
              JAX_PLATFORMS='cpu', CUDA_VISIBLE_DEVICES='',
              TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=str(_REPO))


def _main(workdir: pathlib.Path, *flags: str, num_devices: int,
          log: pathlib.Path) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, '-m', 'ama_jax.main', f'--config={_CONFIG}',
       f'--workdir={workdir}', *flags],
      cwd=_REPO, env=_env(num_devices), stdout=subprocess.PIPE,
      stderr=log.open('w'), text=True)


def _latest(workdir: pathlib.Path):
  config = default.get_config('runlocal')
  abstract = jax.eval_shape(lambda: train_state.create_train_state(
      jax.random.key(0), config, (28, 28, 1)))
  return checkpoint_reading.restore(str(workdir), abstract, kind='latest')


class MultiHostTest(absltest.TestCase):

  @absltest.skipIf(_gloo_missing(), _gloo_missing() or 'gloo available')
  def test_two_processes_match_one_process_with_as_many_devices(self):
    tmp = pathlib.Path(self.create_tempdir().full_path)
    multi, single = tmp / 'two_processes', tmp / 'one_process'
    coordinator = f'--coordinator_address=127.0.0.1:{_free_port()}'
    runs = {
        'process 0': _main(multi, '--multihost', coordinator,
                           '--num_processes=2', '--process_id=0',
                           num_devices=2, log=tmp / 'p0.log'),
        'process 1': _main(multi, '--multihost', coordinator,
                           '--num_processes=2', '--process_id=1',
                           num_devices=2, log=tmp / 'p1.log'),
        'single': _main(single, num_devices=4, log=tmp / 'single.log'),
    }
    deadline = time.time() + _TIMEOUT_S
    stdout = {}
    try:
      for name, proc in runs.items():
        stdout[name] = proc.communicate(
            timeout=max(1, deadline - time.time()))[0]
    finally:
      for proc in runs.values():
        if proc.poll() is None:
          proc.kill()
          proc.wait()
    logs = {name: (tmp / f'{log}.log').read_text() for name, log in
            zip(runs, ('p0', 'p1', 'single'))}
    for name, proc in runs.items():
      self.assertEqual(proc.returncode, 0, f'{name}:\n{logs[name][-3000:]}')

    # The plan is logged by each process; only process 0 reports and writes.
    for name in ('process 0', 'process 1'):
      self.assertIn('Global batch 16 = 4 per device x 4 devices (2 local '
                    'device(s) x 2 process(es))', logs[name])
    self.assertIn('Global batch 16 = 4 per device x 4 devices (4 local '
                  'device(s) x 1 process(es))', logs['single'])
    self.assertIn('test (best state): AUROC', stdout['process 0'])
    self.assertNotIn('AUROC', stdout['process 1'])
    results = json.loads((multi / 'results.json').read_text())
    self.assertEqual((results['processes'], results['devices'],
                      results['local_devices']), (2, 4, 2))
    self.assertLen(list(multi.glob('events.out.tfevents.*')), 1)
    written = lambda d: sorted(p.name for p in d.iterdir()
                               if not p.name.startswith('events.'))
    self.assertEqual(written(multi), written(single))  # Figures too.

    # Both checkpoints restore here (one fresh process), to the same state.
    (mstate, mmeta), (sstate, smeta) = _latest(multi), _latest(single)
    self.assertEqual((mmeta['step'], smeta['step']), (8, 8))
    # The sums over 2 x 2 and 1 x 4 devices round differently; Adam turns a
    # near-zero gradient's rounding into a step of up to lr, so a rare
    # parameter may differ by a few lr (3e-4) after 8 steps. Nearly all
    # agree to 1e-4.
    off = total = 0
    for a, b in zip(jax.tree.leaves(mstate), jax.tree.leaves(sstate)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=8 * 3e-4)
      far = ~np.isclose(a, b, rtol=1e-4, atol=1e-4)
      off, total = off + int(far.sum()), total + far.size
    self.assertLess(off, 1e-4 * total)
    # Validation and test scores (split over processes, then gathered).
    single_results = json.loads((single / 'results.json').read_text())
    self.assertEqual(results['best_step'], single_results['best_step'])
    for name in ('best', 'last'):
      for key, value in single_results['test'][name].items():
        self.assertAlmostEqual(results['test'][name][key], value, places=4,
                               msg=f'test {name} {key}')
      # Relative: mu sums R over the training set in another order.
      mu = single_results['calibration'][name]['mu']
      self.assertAlmostEqual(results['calibration'][name]['mu'], mu,
                             delta=1e-4 * abs(mu))


class PlanTest(absltest.TestCase):

  def test_batch_that_does_not_divide_names_numbers_and_fix(self):
    config = default.get_config('runlocal')
    with config.unlocked():
      config.train.batch_size = 18
    with self.assertRaisesRegex(
        ValueError, r'batch_size=18 .* 4 devices \(2 process\(es\) x 2 '
        r'device\(s\) each\).*multiple of 4, e.g. 16 or 20'):
      run_plan.plan(config, num_train=128, num_devices=4, num_processes=2)
    self.assertEqual(run_plan.plan(config, 128, num_devices=2), (9, 4))


class DetectionTest(absltest.TestCase):

  def test_flag_environment_and_coordinator_select_multihost(self):
    cases = [  # (flags, environment, expected)
        ([], {}, False),
        ([], {'SLURM_STEP_NUM_TASKS': '1'}, False),
        ([], {'SLURM_STEP_NUM_TASKS': '8'}, True),
        ([], {'TPU_WORKER_HOSTNAMES': 'w0,w1'}, True),
        ([], {'TPU_WORKER_HOSTNAMES': 'w0'}, False),
        (['--coordinator_address=h:1234'], {}, True),
        (['--multihost'], {}, True),
        (['--nomultihost'], {'SLURM_STEP_NUM_TASKS': '8'}, False),
    ]
    # In a subprocess: `ama_jax.main` defines flags other modules also do.
    code = """if True:
      import json, os, sys
      from absl import flags
      from ama_jax import main
      for argv, environ, _ in json.loads(sys.argv[1]):
        for k in [k for k in os.environ if k.startswith(('SLURM_', 'TPU_'))]:
          del os.environ[k]
        os.environ.update(environ)
        flags.FLAGS.unparse_flags()
        flags.FLAGS(['main', '--config=configs/default.py',
                     '--workdir=/tmp/unused', *argv])
        print(main.multihost())
    """
    out = subprocess.run(
        [sys.executable, '-c', code, json.dumps(cases)], cwd=_REPO,
        env=dict(os.environ, PYTHONPATH=str(_REPO)), capture_output=True,
        text=True, timeout=300)
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    self.assertEqual(out.stdout.split(),
                     [str(expected) for _, _, expected in cases])


if __name__ == '__main__':
  absltest.main()
