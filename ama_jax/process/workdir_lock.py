"""One owner per workdir: an exclusive lock that the OS releases at exit.

A training run holds `fcntl.flock(LOCK_EX)` on `<workdir>/.locks/process-<i>
.lock` (i = its JAX process index) for as long as it works on the workdir.
The lock belongs to the open file: the kernel drops it when the process
exits, however it exits (SIGKILL, OOM, a crash), so a killed run never
leaves a lock that blocks its restart; the file itself stays, holding the
last owner's description, which only matters while a live process holds it.

Several processes of one multi-host job each lock their own index, so they
cooperate; a second job on the same workdir collides on every index and
stops at once (`WorkdirLockedError`, naming the holder's process id and
host). The lock file is created with O_CLOEXEC: child processes never
inherit it.

  with workdir_lock.hold(workdir, process_index=jax.process_index()):
    ...  # train

Caveat: `flock` on network filesystems is only as good as the filesystem's
locking (NFSv4 and Lustre with `flock` mounts honour it across machines;
some FUSE filesystems do not lock at all). Where locking is unsupported the
run goes on with a warning.
"""
import contextlib
import dataclasses
import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
import sys
import time
from typing import Iterator, Optional, Union

from absl import logging

from ama_jax import errors

PathLike = Union[str, os.PathLike]
LOCK_DIR = '.locks'
# Error numbers of a filesystem that cannot lock (not: "locked by another").
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def lock_path(workdir: PathLike, process_index: int = 0) -> pathlib.Path:
  """The lock file of process `process_index` in `workdir`."""
  return pathlib.Path(workdir) / LOCK_DIR / f'process-{process_index}.lock'


@dataclasses.dataclass(frozen=True)
class Owner:
  """Who holds a lock, as written into the lock file."""
  pid: int
  host: str
  since: str  # ISO time, UTC.
  command: str = ''

  @classmethod
  def this_process(cls) -> 'Owner':
    return cls(pid=os.getpid(), host=socket.gethostname(),
               since=datetime.datetime.now(datetime.timezone.utc).isoformat(
                   timespec='seconds'),
               command=' '.join(sys.argv)[:500])

  def describe(self) -> str:
    return f'process {self.pid} on host {self.host} (since {self.since})'


def read_owner(path: PathLike, wait_s: float = 1.0) -> Optional[Owner]:
  """The owner recorded in a lock file; None if unreadable.

  A new owner writes its description right after locking: wait briefly for
  an empty file to be filled.
  """
  deadline = time.monotonic() + wait_s
  while True:
    try:
      text = pathlib.Path(path).read_text()
      if text.strip():
        fields = json.loads(text)
        return Owner(**{f.name: fields[f.name]
                        for f in dataclasses.fields(Owner) if f.name in fields})
    except (OSError, ValueError, TypeError):
      pass
    if time.monotonic() >= deadline:
      return None
    time.sleep(0.05)


class WorkdirLock:
  """The exclusive lock of one process on a workdir (see module docstring)."""

  def __init__(self, workdir: PathLike, process_index: int = 0):
    self.workdir = pathlib.Path(workdir)
    self.path = lock_path(workdir, process_index)
    self._fd: Optional[int] = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> None:
    """Takes the lock, or raises WorkdirLockedError naming its owner."""
    if self._fd is not None:
      return
    try:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
      raise errors.WorkdirError(
          f'Cannot use workdir {self.workdir}: {e.strerror or e} '
          f'({e.filename or self.path}); pass a folder you can write to.'
      ) from e
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        owner = read_owner(self.path)
        who = owner.describe() if owner else 'another process (unknown id)'
        raise errors.WorkdirLockedError(
            f'Workdir {self.workdir} is in use by {who}; lock file '
            f'{self.path}. Wait for that run to end or stop it, or pass '
            'another --workdir.') from e
      if e.errno in _UNSUPPORTED:
        logging.warning('Cannot lock %s (%s): this filesystem does not '
                        'support flock; make sure no other run uses %s.',
                        self.path, e, self.workdir)
        return
      raise
    # Locked: describe the owner for whoever collides with us.
    record = json.dumps(dataclasses.asdict(Owner.this_process()))
    os.ftruncate(fd, 0)
    os.pwrite(fd, record.encode() + b'\n', 0)
    self._fd = fd
    logging.info('Locked workdir %s (%s).', self.workdir, self.path.name)

  def release(self) -> None:
    """Releases the lock (the file stays, emptied)."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      os.ftruncate(fd, 0)
    except OSError:
      pass
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)

  def __enter__(self) -> 'WorkdirLock':
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()


@contextlib.contextmanager
def hold(workdir: PathLike, process_index: int = 0) -> Iterator[WorkdirLock]:
  """Holds the workdir's lock of `process_index` for the `with` block."""
  with WorkdirLock(workdir, process_index) as lock:
    yield lock


@contextlib.contextmanager
def hold_for_job(workdir: PathLike) -> Iterator[WorkdirLock]:
  """`hold` for this JAX process; all processes of the job agree.

  With several processes, each locks its own index, then they compare: if
  any could not, every process raises WorkdirLockedError (the others would
  otherwise wait for it at their first collective).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  lock = WorkdirLock(workdir, jax.process_index())
  failure = None
  try:
    lock.acquire()
  except errors.WorkdirLockedError as e:
    failure = e
  if jax.process_count() > 1:
    locked = np.asarray(multihost_utils.process_allgather(
        np.int32(failure is None))).reshape(-1)
    if failure is None and not locked.all():
      lock.release()
      failed = [int(i) for i in np.flatnonzero(locked == 0)]
      failure = errors.WorkdirLockedError(
          f'Workdir {workdir} is in use by another run: process(es) '
          f'{failed} of this job could not lock it (their error names the '
          'owner).')
  if failure is not None:
    raise failure
  try:
    yield lock
  finally:
    lock.release()
