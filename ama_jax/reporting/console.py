"""What the training program shows on the console, and its log file.

`quiet(flag_values)` (the programs' `main` calls it first) keeps absl
logging on the console at WARNING unless `--verbosity` is given
(`--verbosity=0`: INFO, as absl's default), while INFO records are still
made: with `keep=True` they are held until `log_file` writes them, and all
that follow, to `<workdir>/log.txt` (appended; process 0 only), whatever the
console shows. The training loop enters `log_file` once it holds the
workdir.

`say(...)` is a line worth seeing at any verbosity (a resume, the plan, the
validation figures of an epoch): logged at INFO (so in log.txt, and on a
console at INFO) and printed as plain text on stderr when the console is
quiet. `training_bar` is the loop's progress line on stderr (`progress`),
shown as `configure(progress_mode)` says (`--progress`; off by default, so
that other programs running the loop show none).
"""
import contextlib
import logging as std_logging
from logging import handlers as std_handlers
import math
import os
import sys
from typing import Iterator, Optional

from absl import flags
from absl import logging
from absl.logging import converter

from ama_jax.reporting import progress

LOG_FILE = 'log.txt'
PROGRESS_MODES = ('auto', 'on', 'off')


class _State:
  quiet = False  # The console shows WARNING and above only.
  held: Optional[std_handlers.MemoryHandler] = None  # Records for log.txt.
  progress = 'off'


_STATE = _State()


class _LogFile(std_logging.FileHandler):
  """`<workdir>/log.txt`; a write that fails (a full disk) drops the
  record silently: the run's own writes report the problem."""

  def handleError(self, record):
    del record


def quiet(flag_values: flags.FlagValues = flags.FLAGS,
          keep: bool = False) -> None:
  """Console at WARNING unless --verbosity is given; INFO records made.

  Args:
    flag_values: where absl's --verbosity is.
    keep: hold the INFO records until `log_file` writes them.
  """
  handler = logging.get_absl_handler()
  level = std_logging.WARNING
  if flag_values['verbosity'].present:
    level = converter.absl_to_standard(logging.get_verbosity())
  if logging.get_verbosity() < logging.INFO:
    logging.set_verbosity(logging.INFO)
  handler.setLevel(level)
  _STATE.quiet = level > std_logging.INFO
  if keep and _STATE.held is None:
    _STATE.held = std_handlers.MemoryHandler(
        capacity=10**6, flushLevel=std_logging.CRITICAL + 1)
    _STATE.held.setLevel(std_logging.INFO)
    std_logging.getLogger().addHandler(_STATE.held)


def configure(progress_mode: str = 'off') -> None:
  """How the training progress line shows: auto (when the console is
  quiet), on, off."""
  if progress_mode not in PROGRESS_MODES:
    raise ValueError(f'progress {progress_mode!r}: expected one of '
                     f'{", ".join(PROGRESS_MODES)}')
  _STATE.progress = progress_mode


def is_quiet() -> bool:
  return _STATE.quiet


@contextlib.contextmanager
def log_file(workdir: os.PathLike | str, chief: bool) -> Iterator[None]:
  """Writes the INFO log to `<workdir>/log.txt` while entered (process 0:
  `chief`); the records held since `quiet(keep=True)` go first."""
  held, _STATE.held = _STATE.held, None
  root = std_logging.getLogger()
  if held is not None:
    root.removeHandler(held)
  handler = None
  if chief:
    path = os.path.join(workdir, LOG_FILE)
    try:
      handler = _LogFile(path, mode='a', encoding='utf-8')
    except OSError as e:
      logging.warning('Cannot write the log %s (%s); it is not kept.', path,
                      e.strerror or e)
  if handler is not None:
    handler.setFormatter(logging.PythonFormatter())
    handler.setLevel(std_logging.INFO)
    for record in held.buffer if held is not None else ():
      handler.handle(record)
    root.addHandler(handler)
  try:
    yield
  finally:
    if handler is not None:
      root.removeHandler(handler)
      handler.close()


def say(message: str, *args, everywhere: bool = False) -> None:
  """Logs `message % args` at INFO and, on a quiet console, prints it.

  Args:
    message: %-format.
    *args: its values.
    everywhere: print on every process (default: process 0 only).
  """
  logging.info(message, *args)
  if not _STATE.quiet:
    return
  if not everywhere:
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_index() != 0:
      return
  progress.clear_lines()
  sys.stderr.write((message % args if args else message) + '\n')
  sys.stderr.flush()


def plan(config, local_batch: int, num_devices: int, num_local: int,
         num_train: int, steps_per_epoch: int) -> None:
  """The line of the run's plan (every process: its local devices)."""
  import jax  # pylint: disable=g-import-not-at-top
  say('Global batch %d = %d per device x %d devices (%d local device(s) x '
      '%d process(es)); %d training images, %d steps/epoch, %d epochs.',
      config.train.batch_size, local_batch, num_devices, num_local,
      jax.process_count(), num_train, steps_per_epoch,
      config.train.num_epochs, everywhere=True)


def training_bar(run, step: int) -> progress.Progress:
  """The loop's progress line over the steps of `run` (a `run_setup.Run`) from
  `step`, on process 0."""
  shown = _STATE.progress == 'on' or (_STATE.progress == 'auto'
                                      and _STATE.quiet)
  return progress.Progress(run.steps_per_epoch * run.num_epochs,
                           run.is_chief and shown, label='training',
                           unit='steps', done=step)


def validation(epoch: int, step: int, metrics: dict, score: str) -> None:
  """The line of the validation after epoch `epoch` (1-based)."""
  auroc = metrics['auroc']
  say('epoch %d step %d: val AUROC %.4f (%s score; raw R %.4f)%s', epoch,
      step, auroc, score, metrics['raw_auroc'], '' if math.isfinite(auroc)
      else ' -- no anomalies in validation: the last state is kept')


# Log records name the caller of these (loop.py, run_setup.py), not this
# file.
for _name in ('say', 'plan', 'validation'):
  logging.ABSLLogger.register_frame_to_skip(__file__, _name)
