"""Tests of the per-process workdir lock (`ama_jax.process.workdir_lock`)."""
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap

from absl.testing import absltest

from ama_jax import errors
from ama_jax.process import workdir_lock

REPO = pathlib.Path(__file__).resolve().parents[1]
# A process that takes the lock of process index argv[2] on workdir argv[1],
# says so, and sleeps until it is killed.
_HOLDER = textwrap.dedent("""
    import sys, time
    from ama_jax.process import workdir_lock
    workdir_lock.WorkdirLock(sys.argv[1], int(sys.argv[2])).acquire()
    print('locked', flush=True)
    time.sleep(600)
    """)


class WorkdirLockTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.workdir = pathlib.Path(self.create_tempdir().full_path) / 'run'

  def _holder(self, index: int = 0) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, '-c', _HOLDER, str(self.workdir), str(index)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    self.addCleanup(lambda: (proc.kill(), proc.wait()))
    self.assertEqual(proc.stdout.readline().strip(), 'locked')
    return proc

  def test_lock_held_by_a_live_process_names_its_pid_and_host(self):
    holder = self._holder()
    with self.assertRaisesRegex(
        errors.WorkdirLockedError,
        rf'in use by process {holder.pid} on host '
        rf'{socket.gethostname()} .*lock file .*process-0\.lock') as raised:
      workdir_lock.WorkdirLock(self.workdir).acquire()
    self.assertIsInstance(raised.exception, errors.UserError)

  def test_killed_holder_leaves_no_stale_lock(self):
    holder = self._holder()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    self.assertTrue(workdir_lock.lock_path(self.workdir).exists())
    with workdir_lock.hold(self.workdir) as lock:
      self.assertTrue(lock.held)
      owner = workdir_lock.read_owner(lock.path)
      self.assertEqual(owner.pid, os.getpid())

  def test_processes_of_one_job_lock_their_own_index(self):
    self._holder(index=1)  # Another process of the same job.
    with workdir_lock.hold(self.workdir, process_index=0):
      pass
    with self.assertRaises(errors.WorkdirLockedError):
      workdir_lock.WorkdirLock(self.workdir, process_index=1).acquire()

  def test_release_lets_the_next_run_in_and_repeats_safely(self):
    lock = workdir_lock.WorkdirLock(self.workdir)
    lock.acquire()
    lock.acquire()  # Already held: no-op.
    with self.assertRaises(errors.WorkdirLockedError):
      workdir_lock.WorkdirLock(self.workdir).acquire()  # Same process too.
    lock.release()
    lock.release()
    with workdir_lock.hold_for_job(self.workdir) as job_lock:
      self.assertTrue(job_lock.held)
    self.assertFalse(job_lock.held)
    self.assertEqual(workdir_lock.lock_path(self.workdir).read_text(), '')

  def test_unusable_workdir_is_a_workdir_error(self):
    self.workdir.parent.joinpath('a_file').write_text('not a folder')
    with self.assertRaisesRegex(errors.WorkdirError,
                                r'Cannot use workdir .*a_file/run: Not a '
                                'directory'):
      workdir_lock.WorkdirLock(self.workdir.parent / 'a_file' / 'run'
                               ).acquire()


if __name__ == '__main__':
  absltest.main()
