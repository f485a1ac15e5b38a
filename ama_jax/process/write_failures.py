"""Writes that fail for want of room or permission: one line, nothing lost.

A full disk, an exceeded quota, a file-size limit or a workdir made
read-only (or unwritable) while a run writes ends the run in one
`WriteFailedError`, printed as one line: what was being written (the
checkpoint of a step, history.jsonl, results.json, a figure, the lock) and
where, why, which checkpoint is the last good one, and the fix.

Nothing earlier is lost, and nothing half-written is ever read as good:

- checkpoints are written into `<step>.orbax-checkpoint-tmp` and renamed
  when complete (`checkpointing`), so a failed save leaves the previous
  steps as they were; the leftover is removed when the workdir is opened
  again. A step whose files are incomplete anyway (e.g. orbax's step
  metadata cut short while committing) fails its checksums and is set aside
  (`checkpoint_files.step_problem`);
- results.json is replaced atomically (a failed write leaves
  `results.json.tmp`, never read), and history.jsonl drops a line cut short
  when the run resumes.

Orbax reports a failed asynchronous save from its threads with a logged
traceback, then raises it in the main thread; `guard` logs those as one
line each (all of it with --verbose), silences the "event loop is closed"
reports of the writes the failed save abandoned, and turns the raised error
into the `WriteFailedError`.

  with write_failures.guard(workdir):
    ...  # The run.
"""
import contextlib
import errno
import logging as std_logging
import pathlib
import re
import sys
from typing import Iterator, Optional

from ama_jax import errors

# errno -> (why, the fix's verb phrase).
_CAUSES = {
    errno.ENOSPC: ('no space left on the device', 'free space'),
    errno.EDQUOT: ('the disk quota is exceeded',
                   'free space or raise the quota'),
    errno.EFBIG: ('the file is larger than the filesystem or the process '
                  'allows (ulimit -f)', 'raise the limit or free space'),
    errno.EROFS: ('the filesystem is read-only', 'make it writable'),
    errno.EACCES: ('permission denied', 'make it writable'),
    errno.EPERM: ('operation not permitted', 'make it writable'),
}
# How those errors read inside other libraries' messages (TensorStore,
# TensorFlow), without an errno attribute.
_TEXTS = {'No space left on device': errno.ENOSPC,
          'Disk quota exceeded': errno.EDQUOT,
          'File too large': errno.EFBIG,
          'Read-only file system': errno.EROFS,
          'Permission denied': errno.EACCES}
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
_QUOTED_PATH = re.compile(r'"(/[^"]+)"|\'(/[^\']+)\'')


class WriteFailedError(errors.WorkdirError):
  """A write failed for want of space, quota or permission.

  Attributes:
    path: what could not be written (None: unknown).
  """

  def __init__(self, message: str, path: Optional[str] = None):
    super().__init__(message)
    self.path = path


def _chain(error: BaseException) -> Iterator[BaseException]:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def cause(error: BaseException) -> Optional[int]:
  """The errno of a failed write in `error` or its causes; None: another
  kind of error (e.g. device memory exhausted is not a write)."""
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno in _CAUSES:
      return e.errno
    text = str(e)
    code = _OS_ERROR_CODE.search(text)
    if code and int(code.group(1)) in _CAUSES:
      return int(code.group(1))
    for phrase, number in _TEXTS.items():
      if phrase in text:
        return number
  return None


@contextlib.contextmanager
def naming(path, what: Optional[str] = None) -> Iterator[None]:
  """Names what a block writes in its failed writes: an OSError of a
  write() call carries no file name."""
  try:
    yield
  except OSError as e:
    if e.filename is None:
      e.filename = str(path)
    if what and not hasattr(e, 'ama_writing'):
      e.ama_writing = what
    raise


def _path(error: BaseException) -> Optional[str]:
  """The file a failed write names (the most specific one)."""
  for e in _chain(error):
    if isinstance(e, OSError) and e.filename:
      return str(e.filename)
    found = [a or b for a, b in _QUOTED_PATH.findall(str(e))]
    if found:
      return found[-1]
  return None


def _inside(path: str, workdir: pathlib.Path) -> bool:
  return pathlib.Path(path).absolute().is_relative_to(workdir.absolute())


def _what(path: Optional[str], workdir: pathlib.Path) -> str:
  """What a path of the workdir holds, in words."""
  if path is None:
    return 'the run\'s outputs'
  try:
    parts = pathlib.Path(path).absolute().relative_to(
        workdir.absolute()).parts
  except ValueError:
    return path
  if not parts:
    return 'the workdir'
  head = parts[0]
  step = parts[1].split('.')[0] if len(parts) > 1 else '?'
  if head == 'checkpoints':
    return f'the checkpoint of step {step}'
  if head == 'best':
    return f'the best checkpoint (step {step})'
  if head == '.locks':
    return 'the workdir lock'
  for prefix, name in (('history.jsonl', 'the training history'),
                       ('results.json', 'the results'),
                       ('metrics.jsonl', 'the metrics'),
                       ('events.out.tfevents', 'the TensorBoard events')):
    if head.startswith(prefix):
      return name
  if head.endswith('.png'):
    return f'the figure {head}'
  return head


def last_good_step(workdir: pathlib.Path) -> Optional[int]:
  """The newest intact latest checkpoint of `workdir` (None: none)."""
  from ama_jax.checkpoints import checkpoint_files  # pylint: disable=g-import-not-at-top
  directory = checkpoint_files.kind_dir(workdir, checkpoint_files.LATEST)
  for step, path in sorted(checkpoint_files.step_dirs(directory).items(),
                           reverse=True):
    if checkpoint_files.step_problem(path) is None:
      return step
  return None


def error_for(error: BaseException, workdir) -> Optional[WriteFailedError]:
  """The one-line error of a failed write in `workdir`; None: not one."""
  number = cause(error)
  if number is None:
    return None
  what = next((e.ama_writing for e in _chain(error)
               if hasattr(e, 'ama_writing')), None)
  workdir = pathlib.Path(workdir)
  why, fix = _CAUSES[number]
  path = _path(error)
  if number in (errno.EACCES, errno.EPERM) and path and not _inside(
      path, workdir):
    return None  # E.g. an unreadable data file: not a write of the run.
  try:
    good = last_good_step(workdir)
  except OSError:
    good = None
  kept = (f'the last good checkpoint, step {good} in '
          f'{workdir / "checkpoints"}, and the earlier outputs are intact'
          if good is not None else 'no checkpoint had been written')
  resume = (f'resume from step {good}' if good is not None
            else 'start the run')
  return WriteFailedError(
      f'Cannot write {what or _what(path, workdir)} ({path or workdir}): '
      f'{why}; '
      f'{kept}. On the filesystem of {workdir}, {fix}, then run the same '
      f'command to {resume}.', path=path)


class _OneLineTracebacks(std_logging.Filter):
  """Logs a failed write that another thread reports as one line (and
  drops asyncio's reports of the same failure for each abandoned array)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.exc_info and record.exc_info[1] is not None and cause(
        record.exc_info[1]) is not None:
      if record.name == 'asyncio':  # The same failure, once per array.
        return False
      record.msg = f'{record.getMessage()} ({record.exc_info[0].__name__})'
      record.args = None
      record.exc_info = None
      record.exc_text = None
    return True


def _quiet_abandoned_writes(previous):
  """An unraisable-exception hook that drops the errors of writes that a
  failed save abandoned (their callbacks find orbax's event loop closed)."""

  def hook(unraisable) -> None:
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and 'Event loop is closed' in str(
        value):
      return
    previous(unraisable)

  return hook


def _verbose() -> bool:
  from ama_jax.tools import cli  # pylint: disable=g-import-not-at-top
  return cli.verbose()


@contextlib.contextmanager
def guard(workdir) -> Iterator[None]:
  """Turns a failed write in the block into `WriteFailedError` (one line).

  Also shortens the tracebacks that other threads log for such failures,
  unless --verbose.
  """
  # orbax logs through absl, asyncio ("Task exception was never
  # retrieved") through its own logger: both reach the root's handlers.
  handlers = [h for name in ('', 'absl', 'asyncio')
              for h in std_logging.getLogger(name).handlers]
  quiet = not _verbose()
  one_line, hook = _OneLineTracebacks(), sys.unraisablehook
  if quiet:
    for handler in handlers:
      handler.addFilter(one_line)
    sys.unraisablehook = _quiet_abandoned_writes(hook)
  failed = False
  try:
    yield
  except errors.UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    failure = error_for(e, workdir)
    if failure is None:
      raise
    failed = True  # Abandoned writes may report after the last line.
    raise failure from e
  finally:
    if quiet and not failed:
      for handler in handlers:
        handler.removeFilter(one_line)
      sys.unraisablehook = hook
