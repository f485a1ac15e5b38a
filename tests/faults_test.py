"""The command lines under faults and misuse: one owner per workdir, damaged
checkpoints, kills mid-write, divergence, bad configs.

Every test drives `python -m ama_jax.<command>` in a subprocess, as a user
would, on `configs/fmnist_mnist.py:runlocal` (seconds of training). A known
error must end the command in exactly one line `error: ...` on stderr, with
exit status 1, no traceback and nothing printed after it, and leave no
results.json behind.
"""
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from ama_jax.checkpoints import checkpoint_files

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = '--config=configs/fmnist_mnist.py:runlocal'
# Keeps checkpoints at steps 2, 4, 6, 8 (the last two kept); best at step 4.
EVERY_2 = '--config.log.checkpoint_every_steps=2'
_ENV = dict(os.environ, PYTHONPATH=str(REPO))
# Runs `ama_jax.main` with orbax's commit of step $KILL_AT interrupted by
# SIGKILL: its files are written, the rename that commits it is not done.
_KILL_MID_WRITE = textwrap.dedent("""
    import os, signal, sys
    from ama_jax.checkpoints import checkpoint_files
    from ama_jax.tools import cli
    from ama_jax import main as program
    seal = checkpoint_files.seal
    def seal_or_die(step_dir):
      if os.path.basename(str(step_dir)).startswith(os.environ['KILL_AT']
                                                    + '.'):
        os.kill(os.getpid(), signal.SIGKILL)
      seal(step_dir)
    checkpoint_files.seal = seal_or_die
    sys.argv[0] = 'ama_jax.main'
    cli.run_main(program.main)
    """)
_HOLDER = textwrap.dedent("""
    import sys, time
    from ama_jax.process import workdir_lock
    workdir_lock.WorkdirLock(sys.argv[1]).acquire()
    print('locked', flush=True)
    time.sleep(600)
    """)


def _run(*args, env=None, timeout=900) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env={**_ENV, **(env or {})}, check=False)


def _main(workdir, *flags, **kw) -> subprocess.CompletedProcess:
  return _run('-m', 'ama_jax.main', CONFIG, f'--workdir={workdir}', *flags,
              **kw)


def _listing(directory: pathlib.Path) -> list[str]:
  return sorted(p.name for p in directory.iterdir())


def _truncate_state(step_dir: pathlib.Path) -> None:
  """Cuts the largest data file of a step's state in half."""
  data = max((step_dir / 'state').rglob('d/*'), key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:data.stat().st_size // 2])


class FaultsTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = pathlib.Path(tempfile.mkdtemp(prefix='faults_test_'))
    cls.addClassCleanup(shutil.rmtree, cls.root, ignore_errors=True)
    # A run stopped after step 8: latest steps 6 and 8, best step 4.
    cls.base = cls.root / 'base'
    proc = _main(cls.base, EVERY_2, '--config.train.halt_after_steps=8')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'halted at step 8' in proc.stdout, proc.stdout
    cls.images = cls.root / 'images.npy'
    np.save(cls.images, np.random.default_rng(0).integers(
        0, 256, (5, 28, 28), dtype=np.uint8))

  def setUp(self):
    super().setUp()
    self.tmp = pathlib.Path(self.create_tempdir().full_path)

  def _copy_base(self) -> pathlib.Path:
    workdir = self.tmp / 'run'
    shutil.copytree(self.base, workdir)
    return workdir

  def assertOneLineError(self, proc, pattern: str, status: int = 1) -> str:
    """The command failed with exactly one `error:` line, printed last."""
    self.assertEqual(proc.returncode, status, proc.stderr[-3000:])
    self.assertNotIn('Traceback', proc.stderr)
    lines = proc.stderr.strip().splitlines()
    self.assertEqual([l for l in lines if l.startswith('error:')], lines[-1:],
                     proc.stderr[-3000:])
    self.assertRegex(lines[-1], '^error: (.* )?' + pattern)
    return lines[-1]

  # --- One owner per workdir. ---

  def test_second_run_on_a_live_workdir_stops_at_once_naming_the_owner(self):
    workdir = self._copy_base()
    before = _listing(workdir / 'checkpoints')
    holder = subprocess.Popen([sys.executable, '-c', _HOLDER, str(workdir)],
                              cwd=REPO, env=_ENV, stdout=subprocess.PIPE,
                              text=True)
    self.addCleanup(lambda: (holder.kill(), holder.wait()))
    self.assertEqual(holder.stdout.readline().strip(), 'locked')
    proc = _main(workdir)
    self.assertOneLineError(
        proc, rf'Workdir {workdir} is in use by process {holder.pid} on host '
        rf'{re.escape(socket.gethostname())} ')
    self.assertNotIn('Protocol', proc.stderr)  # No data was loaded.
    self.assertEqual(_listing(workdir / 'checkpoints'), before)
    self.assertFalse((workdir / 'results.json').exists())

  def test_kill_in_a_checkpoint_write_resumes_from_the_previous_one(self):
    workdir = self.tmp / 'killed'
    proc = _run('-c', _KILL_MID_WRITE, CONFIG, f'--workdir={workdir}',
                EVERY_2, env={'KILL_AT': '4'})
    self.assertEqual(proc.returncode, -signal.SIGKILL, proc.stderr[-3000:])
    checkpoints = workdir / 'checkpoints'
    self.assertEqual(_listing(checkpoints), ['2', '4.orbax-checkpoint-tmp'])
    # The killed run owned the workdir; the OS released its lock.
    self.assertIn('ama_jax.main', (workdir / '.locks' /
                                   'process-0.lock').read_text())
    proc = _main(workdir, EVERY_2, '--config.train.halt_after_steps=4')
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn('Resumed from step 2', proc.stderr)
    self.assertIn('halted at step 4', proc.stdout)
    self.assertEqual(_listing(checkpoints), ['2', '4'])
    self.assertIsNone(checkpoint_files.step_problem(checkpoints / '4'))

  # --- Damaged checkpoints. ---

  def test_damaged_latest_resumes_from_the_newest_readable_one(self):
    workdir = self._copy_base()
    _truncate_state(workdir / 'checkpoints' / '8')
    proc = _main(workdir, EVERY_2, '--config.train.halt_after_steps=8')
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertRegex(proc.stderr, rf'Checkpoint step 8 in {workdir}/'
                     r'checkpoints/8 is damaged: state/\S+ has \d+ bytes')
    self.assertRegex(proc.stderr, r'Resuming from step 6, the newest readable'
                     rf' checkpoint: step 8 .* aside as .*/8\.damaged')
    self.assertIn('halted at step 8', proc.stdout)
    self.assertEqual(_listing(workdir / 'checkpoints'),
                     ['6', '8', '8.damaged'])
    self.assertIsNone(checkpoint_files.step_problem(
        workdir / 'checkpoints' / '8'))

  def test_no_readable_checkpoint_stops_before_loading_data(self):
    workdir = self._copy_base()
    shutil.rmtree(workdir / 'checkpoints' / '6' / 'meta')
    (workdir / 'checkpoints' / '8' / '_CHECKPOINT_METADATA').write_text('{')
    proc = _main(workdir)
    self.assertOneLineError(
        proc, rf'No readable checkpoint in {workdir}/checkpoints: step 8 '
        r'\(.*\): _CHECKPOINT_METADATA is not valid JSON .*; step 6 \(.*\): '
        r'.*meta/metadata is missing\. Nothing was moved or deleted')
    self.assertNotIn('Protocol', proc.stderr)
    self.assertEqual(_listing(workdir / 'checkpoints'), ['6', '8'])
    self.assertFalse((workdir / 'results.json').exists())

  def test_score_refuses_a_damaged_best_and_skips_a_damaged_latest(self):
    workdir = self._copy_base()
    (workdir / 'best' / '4' / 'meta' / 'metadata').write_text('{"config"')
    _truncate_state(workdir / 'checkpoints' / '8')
    csv = self.tmp / 'scores.csv'
    score = lambda *flags: _run('-m', 'ama_jax.tools.score',
                                f'--workdir={workdir}',
                                f'--input={self.images}', f'--output={csv}',
                                *flags)
    self.assertOneLineError(
        score(), rf'No readable checkpoint in {workdir}/best: step 4 \(.*\): '
        r'meta/metadata has 9 bytes, \d+ were written\. Score another '
        r'checkpoint \(--kind=latest, or --step=N\)\.$')
    self.assertOneLineError(
        score('--kind=latest', '--step=8'),
        rf'Checkpoint step 8 in {workdir}/checkpoints/8 is damaged: ')
    self.assertFalse(csv.exists())
    proc = score('--kind=latest')
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertRegex(proc.stderr, r'step 8 in .* is damaged: .*; using step 6')
    self.assertLen(csv.read_text().strip().splitlines(), 6)
    self.assertEqual(_listing(workdir / 'checkpoints'), ['6', '8'])

  # --- Divergence. ---

  def test_divergence_ends_in_one_line_naming_steps_and_the_good_checkpoint(
      self):
    workdir = self._copy_base()
    # Resumed with a diverging rate (allowed explicitly: it changes the run).
    proc = _main(workdir, '--config.train.num_epochs=3',
                 '--config.optim.lr=1e38', '--config.loss.lambda_gp=0',
                 '--config.train.allow_resume_changes=True')
    self.assertOneLineError(
        proc, r'Non-finite loss between steps 9 and 10 .*; the last good '
        rf'checkpoint, step 8 in {workdir}/checkpoints, is intact\. Lower '
        'optim.lr')
    self.assertEqual(_listing(workdir / 'checkpoints'), ['6', '8'])
    self.assertIsNone(checkpoint_files.step_problem(
        workdir / 'checkpoints' / '8'))
    self.assertFalse((workdir / 'results.json').exists())

  # --- Config validated before any work. ---

  def test_bad_values_in_every_section_are_all_named_before_any_work(self):
    workdir = self.tmp / 'never'
    bad = {'seed': '-1', 'data.protocol': 'two_class',
           'data.max_test': '1', 'model.arch': 'vgg', 'model.width': '0',
           'loss.lambda_gp': '-1', 'loss.num_inter': '1',
           'sampling.style': 'sideways', 'sampling.fraction': '1.5',
           'optim.lr': '0', 'optim.decay_at': '(0.9,0.3)',
           'train.batch_size': '-1', 'train.n_critic': '0',
           'eval.threshold_fpr': '1.5', 'eval.every_epochs': '0',
           'log.every_steps': '0', 'log.checkpoint_every_steps': '-2'}
    start = time.monotonic()
    proc = _main(workdir, *(f'--config.{k}={v}' for k, v in bad.items()))
    line = self.assertOneLineError(
        proc, rf'Invalid config \({len(bad)} problems\): ')
    for field in bad:
      self.assertIn(f' {field}=', line)
    self.assertFalse(workdir.exists())  # Not even created.
    self.assertLess(time.monotonic() - start, 300)

  @parameterized.named_parameters(
      ('unknown_sampling_style', ['--config.sampling.style=sideways'],
       r"Invalid config \(1 problem\): sampling\.style='sideways': must be "
       r"one of 'inward', 'outward', 'radial', 'cube', 'rotate', 'none'\.$"),
      ('negative_batch', ['--config.train.batch_size=-1'],
       r'train\.batch_size=-1: must be an integer >= 1'),
      ('nothing_to_train', ['--config.train.num_epochs=0'],
       r'train\.num_epochs=0: must be an integer >= 1'),
      ('unknown_field', ['--config.train.nope=1'],
       r"--config\.train\.nope=1: the config has no field 'nope'"),
      ('data_too_small', ['--config.data.num_val_normal=70000'],
       r'data\.num_val_normal=70000 is too large: the fashion_mnist train '
       'split holds 60000'),
  )
  def test_bad_value_ends_in_one_line(self, flags, pattern):
    workdir = self.tmp / 'run'
    proc = _main(workdir, *flags)
    self.assertOneLineError(proc, pattern)
    self.assertFalse((workdir / 'checkpoints').exists())
    self.assertFalse((workdir / 'results.json').exists())

  def test_reproduce_ends_a_bad_override_in_one_line(self):
    proc = _run('-m', 'ama_jax.tools.reproduce', '--table=fmnist_mnist',
                '--runlocal', '--epochs=2', '--nobaselines',
                '--override=optim.lr=-0.1', f'--out={self.tmp / "out"}')
    self.assertOneLineError(proc, r'Invalid config \(1 problem\): '
                            r'optim\.lr=-0\.1: must be a finite number > 0')


if __name__ == '__main__':
  absltest.main()
