"""Stopping a training run cleanly: signals, preemption notices, time limits.

A run stops at the next step boundary (after the compiled call that is
running; with `train.steps_per_call` > 1 the boundary of that call) when

- it receives SIGTERM (what SLURM, Kubernetes and preemptible VMs send
  before they stop a job) or SIGINT (Ctrl-C);
- a process of a multi-host job receives a preemption notice: JAX's
  preemption service (started by `jax.distributed.initialize`) catches
  SIGTERM on any process, and `multihost_utils.
  reached_preemption_sync_point` makes every process stop at the same step
  (a SIGINT or a time limit of one process is turned into such a notice);
- `train.time_limit_s` seconds of wall time have passed since training
  started (set-up included), for schedulers with hard limits.

It then writes a checkpoint of that step, waits until it is committed and
raises `Stopped`: `cli.run_main` prints one line, `stopped: ...`, naming the
step, its checkpoint and how to resume, and exits with `EXIT_STOPPED` (75,
EX_TEMPFAIL of sysexits.h: "temporary failure, try again"), which job
scripts can read as "stopped, requeue". The same command resumes from that
step and ends as an uninterrupted run does.

A second signal while a checkpoint is being written waits for the write to
finish; anywhere else (set-up, a validation, the final evaluation) it stops
at once, also with `EXIT_STOPPED`: the last committed checkpoint is intact
and the same command resumes from it.

  with stops.StopRequests(time_limit_s) as requests:
    ...
    reason = requests.due()        # At each step boundary: None or why.
    with requests.protect():       # A checkpoint write.
      ...

This module imports JAX only when it needs it (`cli` imports it).
"""
import contextlib
import os
import signal
import threading
import time
from typing import Callable, Optional

from absl import logging

# sysexits.h EX_TEMPFAIL: the run stopped before its end and resumes when
# started again with the same command.
EXIT_STOPPED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How processes agree on the step: alone, through JAX's preemption service,
# or by gathering every process's request at each boundary (a multi-host job
# without that service).
LOCAL, PREEMPTION, GATHER = 'local', 'preemption', 'gather'


_EARLY: list[str] = []  # Signals caught before a run's StopRequests.


class Stopped(Exception):
  """The run stopped before its end, resumably (exit status EXIT_STOPPED).

  Attributes:
    step: the step the run stopped at (None: stopped at once, see message).
    at_once: stopped by a second signal, without a checkpoint of its step.
  """

  def __init__(self, message: str, step: Optional[int] = None,
               at_once: bool = False):
    super().__init__(message)
    self.step = step
    self.at_once = at_once


def _preemption_service() -> bool:
  """Whether JAX's preemption sync manager runs (jax.distributed)."""
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  state = distributed.global_state
  return (getattr(state, 'client', None) is not None
          and getattr(state, 'preemption_sync_manager', None) is not None)


class StopRequests:
  """Stop requests of one run: signals, the time limit, other processes.

  A context manager: entering installs the signal handlers (in the main
  thread only; elsewhere only the time limit applies), leaving restores the
  previous ones. Every process of a job must make the same `due()` calls.
  """

  def __init__(self, time_limit_s: Optional[float] = None,
               clock: Callable[[], float] = time.monotonic):
    self._limit = time_limit_s
    self._clock = clock
    self._t0 = clock()
    self.reason: Optional[str] = None  # This process's request.
    self._protected = 0
    self._deferred: Optional[str] = None
    self._previous: dict[int, object] = {}
    self._checks = 0
    self._notified = False
    self.mode = LOCAL

  def __enter__(self) -> 'StopRequests':
    import jax  # pylint: disable=g-import-not-at-top
    if _preemption_service():
      self.mode = PREEMPTION  # JAX's service owns SIGTERM.
    elif jax.process_count() > 1:
      self.mode = GATHER
    if _EARLY:
      self.reason = _EARLY[0]
      _EARLY.clear()
      self._notify_others()
    if threading.current_thread() is threading.main_thread():
      for signum in SIGNALS:
        if signum == signal.SIGTERM and self.mode == PREEMPTION:
          continue
        self._previous[signum] = signal.signal(signum, self._on_signal)
    return self

  def __exit__(self, *exc_info) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  # --- Requests. ---

  def _on_signal(self, signum: int, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if self.reason is None:
      self.reason = name
      logging.warning('%s received: stopping after the current training '
                      'step, with a checkpoint of it (a second signal stops '
                      'at once, keeping the last checkpoint).', name)
      self._notify_others()
      return
    if self._protected:
      self._deferred = name
      logging.warning('%s received again while a checkpoint is being '
                      'written: the write is finished first.', name)
      return
    raise Stopped(f'{name} received twice: stopped at once', at_once=True)

  def _notify_others(self) -> None:
    """Turns this process's request into JAX's preemption notice."""
    if self.mode == PREEMPTION and not self._notified:
      self._notified = True
      os.kill(os.getpid(), signal.SIGTERM)

  def _time_up(self) -> bool:
    return (self._limit is not None
            and self._clock() - self._t0 >= self._limit)

  def due(self) -> Optional[str]:
    """Why the run stops at this boundary; None: it goes on.

    Every process gets the same answer at the same call (multi-host).
    """
    self._checks += 1
    if self.reason is None and self._time_up():
      self.reason = f'the time limit (train.time_limit_s={self._limit:g})'
      logging.warning('Reached %s: stopping.', self.reason)
      self._notify_others()
    if self.mode == LOCAL:
      return self.reason
    # pylint: disable=g-import-not-at-top
    from jax.experimental import multihost_utils
    import numpy as np
    # pylint: enable=g-import-not-at-top
    if self.mode == PREEMPTION:
      if multihost_utils.reached_preemption_sync_point(self._checks):
        return self.reason or 'a preemption notice (SIGTERM)'
      return None
    asked = np.asarray(multihost_utils.process_allgather(
        np.int32(self.reason is not None)))
    if asked.any():
      return self.reason or 'a stop request of another process'
    return None

  @contextlib.contextmanager
  def protect(self, stopping: bool = False):
    """A block (a checkpoint write) that a second signal does not cut.

    A second signal received inside it stops the run at once after it,
    unless the block is the write of a stop (`stopping`): that one ends in
    `Stopped` anyway.
    """
    self._protected += 1
    try:
      yield
    finally:
      self._protected -= 1
    if not self._protected and self._deferred:
      name, self._deferred = self._deferred, None
      if not stopping:
        raise Stopped(f'{name} received twice: stopped at once after a '
                      'checkpoint write', at_once=True)


def catch_early() -> None:
  """Catches SIGTERM and SIGINT from the program's start on (main thread).

  One received before training starts stops the run at its first step
  boundary (`StopRequests` takes it over); a second one stops at once.
  After the run they are noted and ignored: the program is finishing.
  """
  if threading.current_thread() is not threading.main_thread():
    return

  def note(signum: int, frame) -> None:
    del frame
    name = signal.Signals(signum).name
    if _EARLY:
      raise Stopped(f'{name} received twice: stopped at once, outside '
                    'training; the same command starts or resumes the run',
                    at_once=True)
    _EARLY.append(name)
    logging.warning('%s received outside training: a run stops before its '
                    'first step (a second signal stops at once).', name)

  for signum in SIGNALS:
    signal.signal(signum, note)


def message(reason: str, step: int, checkpoint: Optional[str],
            epoch: int, num_epochs: int) -> str:
  """The `Stopped` message of a clean stop at `step`."""
  where = (f'checkpoint {checkpoint}' if checkpoint
           else 'nothing to save before the first step')
  return (f'{reason} at step {step} (epoch {epoch} of {num_epochs}); '
          f'{where}. Run the same command to resume (exit status '
          f'{EXIT_STOPPED}: stopped, resumable).')


def resumes_from(step: Optional[int], directory) -> str:
  """How a restart continues after a stop at once (for its message)."""
  if step is None:
    return 'no checkpoint was written yet: the same command starts afresh'
  return (f'the last checkpoint, step {step} in {directory}, is intact: the '
          'same command resumes from it')


def stop_if_due(trainer, epoch: int) -> None:
  """At a step boundary of `trainer` (`loop.Trainer`, training 0-based
  `epoch`): if a stop is due, saves this step and raises `Stopped`. Every
  process calls it at the same boundaries."""
  reason = trainer.requests.due()
  if reason is None:
    return
  from ama_jax.checkpoints import checkpoint_files  # pylint: disable=g-import-not-at-top
  saved = None
  if trainer.step:
    trainer.save_latest(epoch, stopping=True)
    saved = checkpoint_files.kind_dir(trainer.run.workdir,
                                      checkpoint_files.LATEST) / str(
                                          trainer.run.ckpts.latest_step())
  raise Stopped(message(reason, trainer.step, saved, epoch + 1,
                        trainer.run.num_epochs), step=trainer.step)


@contextlib.contextmanager
def naming_the_resume(workdir):
  """Completes the message of a stop at once (around the checkpoint
  managers: their pending saves are finished when it runs)."""
  try:
    yield
  except Stopped as e:
    if not e.at_once:
      raise
    from ama_jax.checkpoints import checkpoint_files  # pylint: disable=g-import-not-at-top
    directory = checkpoint_files.kind_dir(workdir, checkpoint_files.LATEST)
    steps = checkpoint_files.step_dirs(directory)
    raise Stopped(f'{e}; ' + resumes_from(max(steps, default=None),
                                          directory),
                  at_once=True) from None


def validation_pending(config, meta: Optional[dict],
                       steps_per_epoch: int) -> bool:
  """Whether the checkpoint resumed from (its `meta`) ends an epoch whose
  validation was due but not done (the run stopped between the two): the
  resumed run does it first, as the uninterrupted run did."""
  from ama_jax.training import run_plan  # pylint: disable=g-import-not-at-top
  step = (meta or {}).get('step') or 0
  return bool(step and step % steps_per_epoch == 0
              and meta.get('validated_step') != step
              and run_plan.itstime(step // steps_per_epoch,
                                   every=config.eval.every_epochs,
                                   first=config.eval.first_epoch,
                                   last=config.train.num_epochs))
