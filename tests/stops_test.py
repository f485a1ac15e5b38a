"""Training runs stopped by signals, a time limit or a full disk, then resumed.

Every test drives `python -m ama_jax.main` in a subprocess on
`configs/fmnist_mnist.py:runlocal` (2 epochs x 4 steps, checkpoints every 4
steps) with 3 steps per compiled call: calls end at steps 3, 4 (the epoch
end), 7 and 8, so a stop lands on a call boundary. A stopped run must end
in one line `stopped: ...` (status 75) with a checkpoint of the step it
stopped at; a full disk in one line `error: ...` (status 1) with the last
good checkpoint intact; and the same command must then finish with the
uninterrupted run's results and parameters, bit for bit.

Signals are real: the training process sends them to itself at a chosen
step (`_PROGRAM` wraps the loop's compiled call), or the test sends them
while the process waits at a chosen step.
"""
import json
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

from absl.testing import absltest
import jax
import numpy as np
import orbax.checkpoint as ocp

from ama_jax.checkpoints import checkpoint_files
from ama_jax.checkpoints import checkpoint_reading

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGS = ('--config=configs/fmnist_mnist.py:runlocal',
         '--config.train.steps_per_call=3')
EXIT_STOPPED = 75
_ENV = dict(os.environ, PYTHONPATH=str(REPO))
# `ama_jax.main` with hooks, each set by an environment variable:
#   SIGNAL_AT=N (+ SIGNAL=SIGINT): signals itself in the call ending at N;
#   WAIT_AT=N: prints 'waiting at N' after that call, waits for a signal;
#   TIME_PASSES_AT=N: its wall clock jumps by a day in that call;
#   READ_ONLY_AT=N: mounts READ_ONLY_DIR read-only over itself in that call;
#   FILL_DISK_AT=N: after that call's checkpoints are committed, fills the
#     filesystem of FILL_DISK_DIR with one file, FILL_DISK_DIR/fill;
#   SIGNALS_IN_VALIDATION=K: signals itself K times in the first validation;
#   SIGNAL_IN_STOP_SAVE=1: signals itself again while the stop is saved.
_PROGRAM = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    from ama_jax.checkpoints import checkpointing
    from ama_jax.training import loop
    from ama_jax.tools import cli
    from ama_jax import main as program
    env = os.environ
    kind = getattr(signal, env.get('SIGNAL', 'SIGTERM'))
    call, validate = loop.Trainer._call, loop.Trainer.validate
    save_latest = loop.Trainer.save_latest
    write = checkpointing.CheckpointManagers.save_latest
    def hooked_call(self, data, n, k):
      call(self, data, n, k)
      end = str(self.step + n)
      if env.get('SIGNAL_AT') == end:
        os.kill(os.getpid(), kind)
      if env.get('READ_ONLY_AT') == end:  # A read-only view over it.
        workdir = env['READ_ONLY_DIR']
        self.run.ckpts.wait_until_finished()  # Step 4 is committed.
        if subprocess.run(['mount', '--bind', '-o', 'ro', workdir,
                           workdir]).returncode:
          os._exit(3)  # Cannot mount here.
      if env.get('FILL_DISK_AT') == end:
        self.run.ckpts.wait_until_finished()
        fd = os.open(os.path.join(env['FILL_DISK_DIR'], 'fill'),
                     os.O_WRONLY | os.O_CREAT)
        size = 1 << 20
        while size:  # Down to the last byte: no page is left.
          try:
            os.write(fd, bytes(size))
          except OSError:
            size //= 2
        os.close(fd)
      if env.get('TIME_PASSES_AT') == end:
        self.requests._t0 -= 86400
      if env.get('WAIT_AT') == end:
        print('waiting at', end, flush=True)
        deadline = time.monotonic() + 60
        while self.requests.reason is None and time.monotonic() < deadline:
          time.sleep(0.05)
    def hooked_validate(self, epoch):
      for _ in range(int(env.pop('SIGNALS_IN_VALIDATION', 0))):
        os.kill(os.getpid(), kind)
      validate(self, epoch)
    def hooked_save_latest(self, epoch, stopping=False):
      self.run.ckpts.stopping = stopping
      save_latest(self, epoch, stopping)
    def hooked_write(self, *args):
      if getattr(self, 'stopping', False) and env.get('SIGNAL_IN_STOP_SAVE'):
        os.kill(os.getpid(), kind)
      return write(self, *args)
    loop.Trainer._call, loop.Trainer.validate = hooked_call, hooked_validate
    loop.Trainer.save_latest = hooked_save_latest
    checkpointing.CheckpointManagers.save_latest = hooked_write
    sys.argv[0] = 'ama_jax.main'
    cli.run_main(program.main)
    """)


def _run(workdir, *flags, env=None, **kw) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, '-c', _PROGRAM, *FLAGS, f'--workdir={workdir}',
       *flags], cwd=REPO, capture_output=True, text=True, timeout=900,
      env={**_ENV, **(env or {})}, check=False, **kw)


def _state(workdir: pathlib.Path, kind: str):
  meta = checkpoint_reading.read_meta(str(workdir), kind=kind)
  path = checkpoint_files.kind_dir(workdir, kind) / str(meta['step'])
  return meta['step'], ocp.StandardCheckpointer().restore(path / 'state')


class StopsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = pathlib.Path(tempfile.mkdtemp(prefix='stops_test_'))
    cls.addClassCleanup(shutil.rmtree, cls.root, ignore_errors=True)
    cls.reference = cls.root / 'uninterrupted'
    proc = _run(cls.reference)
    assert proc.returncode == 0, proc.stderr[-3000:]

  def setUp(self):
    super().setUp()
    self.workdir = pathlib.Path(self.create_tempdir().full_path) / 'run'

  def assertLastLine(self, proc, status: int, pattern: str) -> None:
    """Exit status, no traceback, one final `stopped:`/`error:` line."""
    self.assertEqual(proc.returncode, status, proc.stderr[-3000:])
    self.assertNotIn('Traceback', proc.stderr)
    lines = proc.stderr.strip().splitlines()
    self.assertEqual(
        [l for l in lines if l.startswith(('stopped:', 'error:'))],
        lines[-1:], proc.stderr[-3000:])
    self.assertRegex(lines[-1], pattern)

  def assertStoppedAt(self, proc, step: int, reason: str) -> None:
    self.assertLastLine(
        proc, EXIT_STOPPED,
        rf'^stopped: {reason} at step {step} \(epoch \d of 2\); checkpoint '
        rf'{self.workdir}/checkpoints/{step}\. Run the same command to resume '
        r'\(exit status 75: stopped, resumable\)\.$')
    self.assertIsNone(checkpoint_files.step_problem(
        self.workdir / 'checkpoints' / str(step)))
    self.assertFalse((self.workdir / 'results.json').exists())

  def assertFinishesAsUninterrupted(self, resumed_from: int) -> None:
    proc = _run(self.workdir)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertIn(f'Resumed from step {resumed_from} ', proc.stderr)
    got, want = (json.loads((w / 'results.json').read_text())
                 for w in (self.workdir, self.reference))
    self.assertEqual((got['val'], got['test']), (want['val'], want['test']))
    for kind in ('latest', 'best'):
      (step, state), (want_step, want_state) = (
          _state(w, kind) for w in (self.workdir, self.reference))
      self.assertEqual(step, want_step, kind)
      jax.tree.map(np.testing.assert_array_equal, state, want_state)
    history = [json.loads(l) for l in
               (self.workdir / 'history.jsonl').read_text().splitlines()]
    self.assertEqual([r['step'] for r in history if r['kind'] == 'val'],
                     [4, 8])  # Each validation once.

  # --- Signals. ---

  def test_sigterm_mid_epoch_stops_at_the_call_and_resumes_bit_exactly(self):
    proc = _run(self.workdir, env={'SIGNAL_AT': '3'})
    self.assertStoppedAt(proc, 3, 'SIGTERM')
    self.assertFinishesAsUninterrupted(resumed_from=3)

  def test_ctrl_c_from_outside_at_an_epoch_end_resumes_with_its_validation(
      self):
    proc = subprocess.Popen(
        [sys.executable, '-c', _PROGRAM, *FLAGS, f'--workdir={self.workdir}'],
        cwd=REPO, env={**_ENV, 'WAIT_AT': '4'}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    self.addCleanup(lambda: proc.poll() is None and proc.kill())
    self.assertEqual(proc.stdout.readline().strip(), 'waiting at 4')
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=600)
    # Stopped before the epoch's validation: the resumed run does it first.
    self.assertStoppedAt(subprocess.CompletedProcess(
        proc.args, proc.returncode, out, err), 4, 'SIGINT')
    self.assertFinishesAsUninterrupted(resumed_from=4)

  def test_second_signal_while_the_stop_is_saved_leaves_it_intact(self):
    proc = _run(self.workdir, env={'SIGNAL_AT': '7',
                                   'SIGNAL_IN_STOP_SAVE': '1'})
    self.assertStoppedAt(proc, 7, 'SIGTERM')
    self.assertIn('SIGTERM received again while a checkpoint is being '
                  'written: the write is finished first', proc.stderr)
    self.assertEqual(checkpoint_reading.read_meta(
        str(self.workdir), kind='latest')['step'], 7)

  def test_second_signal_in_a_validation_stops_at_once(self):
    proc = _run(self.workdir, env={'SIGNALS_IN_VALIDATION': '2',
                                   'SIGNAL': 'SIGINT'})
    self.assertLastLine(
        proc, EXIT_STOPPED,
        r'^stopped: SIGINT received twice: stopped at once; the last '
        rf'checkpoint, step 4 in {self.workdir}/checkpoints, is intact: the '
        'same command resumes from it$')
    self.assertIsNone(checkpoint_files.step_problem(
        self.workdir / 'checkpoints' / '4'))

  # --- Time limit. ---

  def test_time_limit_stops_at_the_next_call_boundary(self):
    proc = _run(self.workdir, '--config.train.time_limit_s=3600',
                env={'TIME_PASSES_AT': '7'})
    self.assertStoppedAt(proc, 7, r'the time limit \(train\.time_limit_s='
                         r'3600\)')

  # --- Full disk. ---

  def test_full_disk_ends_in_one_line_keeping_the_last_good_checkpoint(self):
    # The disk fills up after step 7, its checkpoints of step 4 (latest and
    # best) committed: the next write (the history or step 8) fails.
    mount = self._tmpfs('64m')
    self.workdir = mount / 'run'
    proc = _run(self.workdir, env={'FILL_DISK_AT': '7',
                                   'FILL_DISK_DIR': str(mount)})
    self.assertLastLine(
        proc, 1, rf'^error: Cannot write .* \({self.workdir}(/\S+)?\): no '
        rf'space left on the device; the last good checkpoint, step 4 in '
        rf'{self.workdir}/checkpoints, and the earlier outputs are intact\. '
        'On the filesystem of '
        rf'{self.workdir}, free space, then run the same command to resume '
        r'from step 4\.$')
    self.assertEqual(sorted(checkpoint_files.step_dirs(
        self.workdir / 'checkpoints')), [4])
    self.assertIsNone(checkpoint_files.step_problem(
        self.workdir / 'checkpoints' / '4'))
    self.assertFalse((self.workdir / 'results.json').exists())
    # The scoring program reads committed checkpoints only: the best one,
    # of step 4's validation.
    self.assertEqual(sorted(checkpoint_files.step_dirs(
        self.workdir / 'best')), [4])
    images = mount.parent / 'images.npy'
    np.save(images, np.zeros((3, 28, 28), np.uint8))
    score = subprocess.run(
        [sys.executable, '-m', 'ama_jax.tools.score',
         f'--workdir={self.workdir}', f'--input={images}',
         f'--output={mount.parent / "scores.csv"}'], cwd=REPO, env=_ENV,
        capture_output=True, text=True, timeout=600, check=False)
    self.assertEqual(score.returncode, 0, score.stderr[-3000:])
    (mount / 'fill').unlink()
    self.assertFinishesAsUninterrupted(resumed_from=4)

  def test_workdir_made_read_only_mid_run_ends_in_one_line(self):
    if os.geteuid() != 0 or not shutil.which('mount'):
      self.skipTest('needs root to mount the workdir read-only')
    self.workdir.mkdir()
    # Undone by the hook's own mount, if it made one.
    self.addCleanup(subprocess.run, ['umount', '-l', str(self.workdir)],
                    capture_output=True, check=False)
    proc = _run(self.workdir, env={'READ_ONLY_AT': '7',
                                   'READ_ONLY_DIR': str(self.workdir)})
    if proc.returncode == 3:
      self.skipTest('cannot mount here')
    self.assertLastLine(
        proc, 1, rf'^error: Cannot write .* \({self.workdir}/\S*\): the '
        'filesystem is read-only; the last good checkpoint, step 4 in '
        rf'{self.workdir}/checkpoints, and the earlier outputs are intact\. '
        rf'On the filesystem of {self.workdir}, make it writable, then run '
        r'the same command to resume from step 4\.$')
    self.assertIsNone(checkpoint_files.step_problem(
        self.workdir / 'checkpoints' / '4'))
    self.assertFalse((self.workdir / 'results.json').exists())

  def _tmpfs(self, size: str) -> pathlib.Path:
    """A fresh tmpfs of `size` (the test is skipped without root)."""
    if os.geteuid() != 0 or not shutil.which('mount'):
      self.skipTest('needs root to mount a small tmpfs')
    mount = self.workdir.parent / 'disk'
    mount.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs',
                       str(mount)], capture_output=True,
                      check=False).returncode:
      self.skipTest('cannot mount a tmpfs here')
    self.addCleanup(subprocess.run, ['umount', '-l', str(mount)],
                    check=False)
    return mount


def _gloo_missing() -> str:
  """Why CPU cross-process collectives are unavailable ('' if they are)."""
  try:
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return f'jaxlib internals not importable: {e}'
  return ('' if hasattr(_jax, 'make_gloo_tcp_collectives')
          else 'this jaxlib has no gloo CPU collectives')


class MultiHostStopTest(absltest.TestCase):

  @absltest.skipIf(_gloo_missing(), _gloo_missing() or 'gloo available')
  def test_sigterm_to_one_process_stops_both_at_the_same_step(self):
    tmp = pathlib.Path(self.create_tempdir().full_path)
    workdir = tmp / 'run'
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      port = s.getsockname()[1]
    rest = re.sub(r'--xla_force_host_platform_device_count=\S+', '',
                  os.environ.get('XLA_FLAGS', ''))
    env = dict(_ENV, JAX_PLATFORMS='cpu', CUDA_VISIBLE_DEVICES='',
               XLA_FLAGS=f'--xla_force_host_platform_device_count=1 {rest}')
    procs = [subprocess.Popen(
        [sys.executable, '-c', _PROGRAM, *FLAGS, f'--workdir={workdir}',
         '--multihost', f'--coordinator_address=127.0.0.1:{port}',
         '--num_processes=2', f'--process_id={i}'], cwd=REPO,
        env=dict(env, **({'SIGNAL_AT': '3'} if i else {})),
        stdout=subprocess.DEVNULL, stderr=(tmp / f'p{i}.log').open('w'))
             for i in range(2)]
    try:
      for proc in procs:
        proc.wait(timeout=600)
    finally:
      for proc in procs:
        if proc.poll() is None:
          proc.kill()
          proc.wait()
    lines = []
    for i, proc in enumerate(procs):
      log = (tmp / f'p{i}.log').read_text()
      self.assertEqual(proc.returncode, EXIT_STOPPED, log[-3000:])
      self.assertNotIn('Traceback', log)
      lines.append(log.strip().splitlines()[-1])
    # Only process 1 got SIGTERM; JAX's preemption service stops both.
    step = re.match(r'^stopped: a preemption notice \(SIGTERM\) at step '
                    r'(\d+) ', lines[0])
    self.assertIsNotNone(step, lines)
    self.assertEqual(lines[0], lines[1])
    step = int(step.group(1))
    self.assertGreaterEqual(step, 3)
    self.assertEqual(checkpoint_reading.read_meta(
        str(workdir), kind='latest')['step'], step)
    self.assertIsNone(checkpoint_files.step_problem(
        workdir / 'checkpoints' / str(step)))


if __name__ == '__main__':
  absltest.main()
