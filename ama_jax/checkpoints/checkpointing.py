"""Orbax checkpoints of a run: `latest` (resume) and `best` (validation AUROC).

Layout of a workdir (decided up front: a manager that once saved a single
unnamed item cannot later save a Composite):

  <workdir>/checkpoints/<step>/{state,meta}  latest steps, max_to_keep=2
  <workdir>/best/<step>/{state,meta}         best val_auroc, max_to_keep=1

Every step holds two items:

- `state`: `ocp.args.StandardSave` of a host copy (`jax.device_get`) of the
  training state (`train_state.AMAState`: params, batch stats, optimizer
  states and step of both players).
- `meta`: `ocp.args.JsonSave` of a dict: `config`
  (`json_safe.config_to_dict`), `step`, `epoch`, `mu`, `sigma`,
  `threshold`, `threshold_fpr` (the calibration, when one exists),
  `image_shape` [H, W, C], `val_auroc` and anything else the caller adds
  (`json_safe.to_json`). Non-finite floats are kept (Python's json writes
  `NaN`/`Infinity` and reads them back), so `-inf` round-trips.

A program that scores new data needs nothing else: it reads `meta` alone,
rebuilds the abstract state from `meta['config']` and restores `state` into
it (`checkpoint_reading`).

Atomic writes. A save is written to `<step>.orbax-checkpoint-tmp` and renamed
when complete, so a run killed mid-save never leaves a half-written step as
the latest one: `latest_step()` ignores the tmp directory and the previous
step restores. Everything of a step lives inside it: its `meta` item and
`ama_checksums.json` (`checkpoint_files.seal`), written before the rename.
`CheckpointManagers` removes tmp leftovers when it opens a workdir.
Replacing the best step by an earlier one sets the old one aside until the
new one is committed. Saves are asynchronous: call `wait_until_finished()`
(or `close()`, or use the managers as a context manager) before exiting.
Every process of a multi-host run must make the same calls; only process 0
writes, renames and deletes.

Damage. A step whose files are missing, truncated, corrupt or whose JSON
does not parse (`checkpoint_files.step_problem`) is never restored: training
resumes from the newest readable latest step and moves the damaged ones
aside as `<step>.damaged` (orbax ignores the name); with none readable it
raises `errors.CheckpointDamagedError` and moves nothing. A damaged best
step is set aside when the managers open.

  ckpts = checkpointing.CheckpointManagers(workdir)   # training
  restored = ckpts.restore_latest(state)              # None, or (state, meta)
  ckpts.save_latest(step, state, meta)
  ckpts.save_best(step, state, meta)                  # only if val_auroc beats
  ckpts.close()

The parts: `json_safe` (meta and configs as JSON), `checkpoint_files` (a
step's directory: layout, checksums, damage), `checkpoint_reading` (reading
steps without a manager: `read_meta`, `restore`) and this module (the
managers that write).
"""
import math
import os
import pathlib
import shutil
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from ama_jax.checkpoints import checkpoint_files
from ama_jax.checkpoints import checkpoint_reading
from ama_jax import errors
from ama_jax.reporting import json_safe
from ama_jax.training import train_state

PathLike = checkpoint_files.PathLike
PyTree = Any
Meta = dict[str, Any]

LATEST, BEST = checkpoint_files.LATEST, checkpoint_files.BEST
MAX_TO_KEEP = {LATEST: 2, BEST: 1}


def _is_chief() -> bool:
  return jax.process_index() == 0


def _sync(name: str) -> None:
  """A barrier of every process (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'ama_jax checkpointing: {name}')


def _options(kind: str, reader: bool,
             on_commit: Optional[Callable[[], None]] = None
             ) -> ocp.CheckpointManagerOptions:
  """Options of a writer, or of a reader that never saves nor deletes.

  Readers do not use orbax's `read_only` mode, which logs warnings on every
  construction; they create and clean up nothing. `on_commit` runs when a
  save's files are complete, before orbax commits it by renaming.
  """
  best = kind == BEST
  return ocp.CheckpointManagerOptions(
      max_to_keep=MAX_TO_KEEP[kind],
      best_fn=((lambda metrics: metrics[checkpoint_files.BEST_METRIC])
               if best else None),
      best_mode='max',
      # A step saved without metrics would never be deleted.
      keep_checkpoints_without_metrics=not best,
      create=not reader,
      cleanup_tmp_directories=not reader,
      async_options=ocp.AsyncOptions(post_finalization_callback=on_commit))


def _manager(workdir: PathLike, kind: str, reader: bool = False,
             on_commit: Optional[Callable[[], None]] = None
             ) -> ocp.CheckpointManager:
  # Handlers (not just item names) so that `item_metadata` can be read.
  return ocp.CheckpointManager(
      checkpoint_files.kind_dir(workdir, kind),
      options=_options(kind, reader, on_commit),
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'meta': ocp.JsonCheckpointHandler()})


def _meta_json(step: int, meta: Mapping[str, Any]) -> Meta:
  """JSON-safe meta whose `step` is the saved step."""
  meta = json_safe.to_json(dict(meta))
  if meta.setdefault('step', int(step)) != int(step):
    raise ValueError(f'meta["step"]={meta["step"]} differs from the saved '
                     f'step {step}.')
  return meta


def _save_args(state: PyTree, meta: Meta) -> ocp.args.Composite:
  # A host copy: the arrays are small, and no device buffer is held (or
  # donated away) while the asynchronous save writes them.
  return ocp.args.Composite(state=ocp.args.StandardSave(jax.device_get(state)),
                            meta=ocp.args.JsonSave(meta))


class CheckpointManagers:
  """The `latest` and `best` managers of one workdir.

  Opening removes `*.orbax-checkpoint-tmp` leftovers of an interrupted save,
  puts damaged `best` steps aside (`<step>.damaged`) and finishes an
  interrupted replacement of the best step (see `save_best`). `save_*` take
  the state as it lives in training (device arrays are copied to the host)
  and return whether a checkpoint was written; every save is sealed with
  checksums before orbax commits it. A context manager: leaving the block
  (also by an exception) waits for pending saves and closes the managers,
  so no orbax thread outlives the program's last line.
  """

  def __init__(self, workdir: PathLike):
    self.workdir = pathlib.Path(workdir)
    self._dirs = {kind: checkpoint_files.kind_dir(workdir, kind)
                  for kind in checkpoint_files.SUBDIRS}
    self._in_flight: dict[str, Optional[int]] = {
        k: None for k in checkpoint_files.SUBDIRS}
    self._closed = False
    _sync('open')
    if _is_chief():
      self._repair_best()
    _sync('opened')
    self.latest = _manager(workdir, LATEST, on_commit=self._sealer(LATEST))
    self.best = _manager(workdir, BEST, on_commit=self._sealer(BEST))
    for manager in (self.latest, self.best):
      # Orbax removes tmp leftovers in a background thread and only waits for
      # it in the next save; wait now, so the workdir is clean on return and
      # no thread is still deleting when the caller moves on.
      getattr(manager, '_maybe_await_cleanup_tmp_directory', lambda: None)()

  def __enter__(self) -> 'CheckpointManagers':
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is None:
      self.close()
      return
    try:  # Finish what was started (those states were checked) and close.
      self.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('Closing the checkpoint managers of %s failed while '
                      'handling another error: %s', self.workdir,
                      errors.one_line(e))

  # --- Sealing and setting steps aside. ---

  def _sealer(self, kind: str) -> Callable[[], None]:
    """The on-commit callback: checksums of the step being committed."""

    def seal_in_flight() -> None:
      step = self._in_flight[kind]
      if step is None or not _is_chief():
        return
      directory = self._dirs[kind]
      found = sorted(directory.glob(f'{step}.orbax-checkpoint-tmp*'))
      step_dir = found[-1] if found else directory / str(step)
      try:
        checkpoint_files.seal(step_dir)
      except Exception as e:  # pylint: disable=broad-except
        # Never fail the save: an unsealed step gets structural checks.
        logging.warning('Could not write the checksums of %s: %s', step_dir,
                        e)

    return seal_in_flight

  def _set_aside(self, kind: str, steps: Sequence[int], label: str
                 ) -> dict[int, pathlib.Path]:
    """Renames steps to `<step>.<label>` (chief only); {step: new path}."""
    manager = getattr(self, kind)
    manager.wait_until_finished()
    moved = {step: checkpoint_files.aside_path(self._dirs[kind] / str(step),
                                               label)
             for step in steps}
    _sync(f'set aside {kind}')
    if _is_chief():
      for step, path in moved.items():
        os.replace(self._dirs[kind] / str(step), path)
    _sync(f'set aside {kind} done')
    manager.reload()
    return moved

  def _repair_best(self) -> None:
    """Chief, before the managers open: damaged best steps go aside, and an
    interrupted replacement of the best step is undone or completed."""
    directory = self._dirs[BEST]
    steps = checkpoint_files.step_dirs(directory)
    for step, path in sorted(steps.items()):
      problem = checkpoint_files.step_problem(path)
      if problem:
        aside = checkpoint_files.aside_path(path, checkpoint_files.DAMAGED)
        os.replace(path, aside)
        del steps[step]
        logging.warning('Best checkpoint step %d in %s is damaged (%s); '
                        'moved to %s. A later validation saves a new best.',
                        step, directory, problem, aside.name)
    superseded = sorted(p for p in directory.glob(
        f'*.{checkpoint_files.SUPERSEDED}*')
                        if p.is_dir()) if directory.is_dir() else []
    if superseded and not steps:
      # Killed between setting the old best aside and committing the new
      # one: the old one is still the best.
      old = superseded[-1]
      step = old.name.split('.')[0]
      os.replace(old, directory / step)
      superseded = superseded[:-1]
      logging.warning('Restored best checkpoint step %s of %s (its '
                      'replacement was never committed).', step, directory)
    for path in superseded:
      shutil.rmtree(path, ignore_errors=True)

  def _drop_superseded(self) -> None:
    """Deletes best steps set aside once their replacement is committed."""
    directory = self._dirs[BEST]
    if not _is_chief() or not directory.is_dir() or not self.best.all_steps():
      return
    for path in directory.glob(f'*.{checkpoint_files.SUPERSEDED}*'):
      if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)

  # --- Saving. ---

  def _save(self, kind: str, step: int, state: PyTree, meta: Meta,
            **kwargs) -> bool:
    manager = getattr(self, kind)
    manager.wait_until_finished()  # The previous step's seal is done.
    self._in_flight[kind] = int(step)
    return manager.save(int(step), args=_save_args(state, meta), **kwargs)

  def save_latest(self, step: int, state: PyTree,
                  meta: Mapping[str, Any]) -> bool:
    """Saves `step` (asynchronously); False if it is not after the latest."""
    meta = _meta_json(step, meta)
    saved = self._save(LATEST, step, state, meta)
    if not saved:
      logging.info('Latest checkpoint not written at step %d (latest is %s).',
                   step, self.latest.latest_step())
    return saved

  def best_val_auroc(self) -> Optional[float]:
    """val_auroc of the kept best step, None if there is none."""
    step = self.best.best_step()
    if step is None:
      return None
    self.best.wait_until_finished()
    meta = checkpoint_reading.read_meta_dir(step,
                                            self._dirs[BEST] / str(step))
    return meta.get(checkpoint_files.BEST_METRIC)

  def save_best(self, step: int, state: PyTree,
                meta: Mapping[str, Any]) -> bool:
    """Saves `step` if `meta['val_auroc']` beats the kept best step.

    A non-finite or missing val_auroc is never saved. Kept steps at or after
    `step` (left by a run that was resumed from an earlier latest step) are
    replaced when the new value is higher: set aside (`<step>.superseded`)
    until the new step is committed, so a kill in between leaves them.

    Returns:
      Whether a checkpoint was written.
    """
    meta = _meta_json(step, meta)
    value = meta.get(checkpoint_files.BEST_METRIC)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
      logging.warning('Not saving a best checkpoint at step %d: %s=%r.', step,
                      checkpoint_files.BEST_METRIC, value)
      return False
    kept = self.best_val_auroc()
    if kept is not None and not value > kept:
      logging.info('Best checkpoint kept (%s %.4f >= %.4f at step %d).',
                   checkpoint_files.BEST_METRIC, kept, value, step)
      return False
    self._drop_superseded()
    later = [old for old in self.best.all_steps() if old >= step]
    if later:
      self._set_aside(BEST, later, checkpoint_files.SUPERSEDED)
    return self._save(BEST, step, state, meta,
                      metrics={checkpoint_files.BEST_METRIC: float(value)})

  # --- Restoring. ---

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def best_step(self) -> Optional[int]:
    return self.best.best_step()

  def restore_latest(self, abstract_state: PyTree
                     ) -> Optional[tuple[PyTree, Meta]]:
    """(state, meta) of the newest readable latest step; None if none saved.

    Damaged steps newer than it are reported (step, path, what is wrong) and
    set aside as `<step>.damaged`, never deleted.

    Args:
      abstract_state: the restore target: a state (e.g. a fresh
        `create_train_state`) or its `jax.ShapeDtypeStruct` tree. Leaves with
        a sharding come back as jax.Arrays placed like it, leaves without one
        (e.g. from `jax.eval_shape`) as numpy arrays.

    Raises:
      CheckpointDamagedError: there are steps but none is readable (then
        nothing is moved).
      CheckpointMismatchError: the newest readable step holds another
        model's state.
    """
    self.latest.wait_until_finished()
    steps = sorted(self.latest.all_steps(), reverse=True)
    if not steps:
      return None
    failures = []
    for step in steps:
      try:
        restored = checkpoint_reading.restore_dir(
            step, self._dirs[LATEST] / str(step),
                                abstract_state)
      except errors.CheckpointDamagedError as e:
        logging.warning('%s', e)
        failures.append(e)
        continue
      if failures:
        moved = self._set_aside(LATEST, [e.step for e in failures],
                                checkpoint_files.DAMAGED)
        for e in failures:
          logging.warning(
              'Resuming from step %d, the newest readable checkpoint: step %d '
              'was damaged and is kept aside as %s.', step, e.step,
              moved[e.step])
      return restored
    raise checkpoint_files.none_readable_error(self._dirs[LATEST], failures,
                                               training=True)

  def restore_best(self, abstract_state: PyTree
                   ) -> Optional[tuple[PyTree, Meta]]:
    """(state, meta) of the best step; None if there is none or it is
    damaged (then a warning says so)."""
    step = self.best.best_step()
    if step is None:
      return None
    self.best.wait_until_finished()
    try:
      return checkpoint_reading.restore_dir(
          step, self._dirs[BEST] / str(step), abstract_state)
    except errors.CheckpointDamagedError as e:
      logging.warning('%s; no best state to evaluate.', e)
      return None

  def wait_until_finished(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()
    self._drop_superseded()

  def close(self) -> None:
    """Waits for pending saves and releases the managers (idempotent)."""
    if self._closed:
      return
    self._closed = True
    try:
      self.wait_until_finished()
    finally:
      self.latest.close()
      self.best.close()
