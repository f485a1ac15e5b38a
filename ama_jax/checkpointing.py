"""Orbax checkpoints of a run: `latest` (resume) and `best` (validation AUROC).

Layout of a workdir (decided up front: a manager that once saved a single
unnamed item cannot later save a Composite):

  <workdir>/checkpoints/<step>/{state,meta}  latest steps, max_to_keep=2
  <workdir>/best/<step>/{state,meta}         best val_auroc, max_to_keep=1

Every step holds two items:

- `state`: `ocp.args.StandardSave` of a host copy (`jax.device_get`) of the
  training state (`train.AMAState`: params, batch stats, optimizer states and
  step of both players).
- `meta`: `ocp.args.JsonSave` of a dict: `config` (`config_to_dict`), `step`,
  `epoch`, `mu`, `sigma`, `threshold`, `threshold_fpr` (the calibration,
  when one exists), `image_shape` [H, W, C], `val_auroc` and anything else
  the caller adds. Non-finite floats are kept (Python's json writes
  `NaN`/`Infinity` and reads them back), so `-inf` round-trips.

A program that scores new data reads `meta` alone first (`read_meta`), then
rebuilds the abstract state from `meta['config']` (`config_from_dict`) and
restores `state` into it (`restore`); it needs nothing else.

A save is written to `<step>.orbax-checkpoint-tmp` and renamed when complete,
so a run killed mid-save never leaves a half-written step as the latest one:
`latest_step()` ignores the tmp directory and the previous step restores.
`CheckpointManagers` removes such leftovers when it opens a workdir. Saves are
asynchronous: call `wait_until_finished()` (or `close()`) before exiting.
Every process of a multi-host run must make the same calls.

  ckpts = checkpointing.CheckpointManagers(workdir)   # training
  restored = ckpts.restore_latest(state)              # None, or (state, meta)
  ckpts.save_latest(step, state, meta)
  ckpts.save_best(step, state, meta)                  # only if val_auroc beats
  ckpts.close()

  meta = checkpointing.read_meta(workdir, kind='best')  # scoring
  state, meta = checkpointing.restore(workdir, abstract_state, kind='best')
"""
import math
import os
import pathlib
from typing import Any, Mapping, Optional, Union

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

PathLike = Union[str, os.PathLike]
PyTree = Any
Meta = dict[str, Any]

LATEST, BEST = 'latest', 'best'
# kind -> subdirectory of the workdir.
SUBDIRS = {LATEST: 'checkpoints', BEST: 'best'}
MAX_TO_KEEP = {LATEST: 2, BEST: 1}
BEST_METRIC = 'val_auroc'


# ----------------------------------------------------------------------------
# JSON-safe metadata and configs.
# ----------------------------------------------------------------------------
def to_json(value: Any, path: str = 'meta') -> Any:
  """Converts `value` to plain JSON types (dict, list, str, int, float, None).

  Tuples become lists, numpy/jax scalars and arrays Python numbers and
  lists, ConfigDicts dicts. Non-finite floats stay floats.

  Args:
    value: the object to convert.
    path: where `value` sits, for error messages.

  Returns:
    The converted object.

  Raises:
    TypeError: a value (named by its path) has no JSON equivalent.
  """
  if isinstance(value, ml_collections.ConfigDict):
    value = value.to_dict()
  if value is None or isinstance(value, (bool, str)):
    return value
  if isinstance(value, (int, float)):
    return value
  if isinstance(value, (np.generic, np.ndarray, jax.Array)):
    return np.asarray(value).tolist()
  if isinstance(value, Mapping):
    out = {}
    for k, v in value.items():
      if not isinstance(k, str):
        raise TypeError(f'{path}: key {k!r} is not a string; JSON needs '
                        'string keys.')
      out[k] = to_json(v, f'{path}.{k}')
    return out
  if isinstance(value, (list, tuple)):
    return [to_json(v, f'{path}[{i}]') for i, v in enumerate(value)]
  raise TypeError(f'{path}: {type(value).__name__} value {value!r} cannot be '
                  'written to JSON.')


def config_to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """JSON-safe dict of a config (tuples -> lists, None kept)."""
  return to_json(config, 'config')


def _lists_to_tuples(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _lists_to_tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_lists_to_tuples(v) for v in value)
  return value


def config_from_dict(config: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Inverse of `config_to_dict`: lists become tuples again.

  Config files only use tuples for sequences; JSON cannot tell them apart.
  """
  return ml_collections.ConfigDict(_lists_to_tuples(dict(config)))


def flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """`{'model.width': 64, ...}` with scalar values, for `write_hparams`."""
  out = {}

  def visit(prefix: str, value: Any) -> None:
    if isinstance(value, dict):
      for k, v in value.items():
        visit(f'{prefix}{k}.' if isinstance(v, dict) else f'{prefix}{k}', v)
    elif isinstance(value, (bool, int, float, str)):
      out[prefix] = value
    else:  # None, sequences: TensorBoard hparams only take scalars.
      out[prefix] = str(value)

  visit('', config_to_dict(config))
  return out


# ----------------------------------------------------------------------------
# Managers.
# ----------------------------------------------------------------------------
def _options(kind: str, reader: bool) -> ocp.CheckpointManagerOptions:
  """Options of a writer, or of a reader that never saves nor deletes.

  Readers do not use orbax's `read_only` mode, which logs warnings on every
  construction; they create and clean up nothing.
  """
  best = kind == BEST
  return ocp.CheckpointManagerOptions(
      max_to_keep=MAX_TO_KEEP[kind],
      best_fn=(lambda metrics: metrics[BEST_METRIC]) if best else None,
      best_mode='max',
      # A step saved without metrics would never be deleted.
      keep_checkpoints_without_metrics=not best,
      create=not reader,
      cleanup_tmp_directories=not reader)


def _manager(workdir: PathLike, kind: str,
             reader: bool = False) -> ocp.CheckpointManager:
  if kind not in SUBDIRS:
    raise ValueError(f'Unknown checkpoint kind {kind!r}; valid: '
                     f'{list(SUBDIRS)}.')
  directory = pathlib.Path(workdir).absolute() / SUBDIRS[kind]
  # Handlers (not just item names) so that `item_metadata` can be read.
  return ocp.CheckpointManager(
      directory, options=_options(kind, reader),
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'meta': ocp.JsonCheckpointHandler()})


def _abstract(tree: PyTree) -> PyTree:
  """Restore target: arrays -> ShapeDtypeStruct; ShapeDtypeStructs kept."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _meta_json(step: int, meta: Mapping[str, Any]) -> Meta:
  """JSON-safe meta whose `step` is the saved step."""
  meta = to_json(dict(meta))
  if meta.setdefault('step', int(step)) != int(step):
    raise ValueError(f'meta["step"]={meta["step"]} differs from the saved '
                     f'step {step}.')
  return meta


def _save_args(state: PyTree, meta: Meta) -> ocp.args.Composite:
  # A host copy: the arrays are small, and no device buffer is held (or
  # donated away) while the asynchronous save writes them.
  return ocp.args.Composite(state=ocp.args.StandardSave(jax.device_get(state)),
                            meta=ocp.args.JsonSave(meta))


def _check_fits(manager: ocp.CheckpointManager, step: int,
                abstract_state: PyTree) -> None:
  """Raises a readable ValueError if the saved arrays differ from the target.

  Checked before restoring: a failed orbax restore reports a long TensorStore
  error and leaves unfinished reads behind.
  """
  stored = manager.item_metadata(step)['state']
  if stored is None:  # Unknown: let the restore itself decide.
    return
  saved = {m.name: tuple(m.shape) for m in jax.tree.leaves(stored)
           if hasattr(m, 'name') and hasattr(m, 'shape')}
  wanted = {name: tuple(np.shape(x)) for name, x in
            ocp.tree.to_flat_dict(abstract_state, sep='.').items()}
  problems = [f'{n} missing' for n in sorted(set(wanted) - set(saved))]
  problems += [f'{n} not expected' for n in sorted(set(saved) - set(wanted))]
  problems += [f'{n} is {saved[n]}, expected {wanted[n]}'
               for n in sorted(set(saved) & set(wanted))
               if saved[n] != wanted[n]]
  if problems:
    shown = '; '.join(problems[:3]) + (
        f' (+{len(problems) - 3} more)' if len(problems) > 3 else '')
    raise ValueError(
        f'Checkpoint step {step} in {manager.directory} does not match the '
        'expected state (was it written with another model or optimizer '
        f'config?): {shown}.')


def _restore(manager: ocp.CheckpointManager, step: int,
             abstract_state: PyTree) -> tuple[PyTree, Meta]:
  abstract_state = _abstract(abstract_state)
  _check_fits(manager, step, abstract_state)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore()))
  except (ValueError, KeyError, TypeError) as e:
    first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise ValueError(
        f'Checkpoint step {step} in {manager.directory} does not match the '
        f'expected state (was it written with another model or optimizer '
        f'config?): {first_line}') from e
  return restored.state, restored.meta


class CheckpointManagers:
  """The `latest` and `best` managers of one workdir.

  Opening removes `*.orbax-checkpoint-tmp` leftovers of an interrupted save.
  `save_*` take the state as it lives in training (device arrays are copied
  to the host) and return whether a checkpoint was written.
  """

  def __init__(self, workdir: PathLike):
    self.workdir = pathlib.Path(workdir)
    self.latest = _manager(workdir, LATEST)
    self.best = _manager(workdir, BEST)
    for manager in (self.latest, self.best):
      # Orbax removes tmp leftovers in a background thread and only waits for
      # it in the next save; wait now, so the workdir is clean on return and
      # no thread is still deleting when the caller moves on.
      getattr(manager, '_maybe_await_cleanup_tmp_directory', lambda: None)()

  def save_latest(self, step: int, state: PyTree,
                  meta: Mapping[str, Any]) -> bool:
    """Saves `step` (asynchronously); False if it is not after the latest."""
    meta = _meta_json(step, meta)
    saved = self.latest.save(int(step), args=_save_args(state, meta))
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
    meta = self.best.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta
    return meta.get(BEST_METRIC)

  def save_best(self, step: int, state: PyTree,
                meta: Mapping[str, Any]) -> bool:
    """Saves `step` if `meta['val_auroc']` beats the kept best step.

    A non-finite or missing val_auroc is never saved. Kept steps at or after
    `step` (left by a run that was resumed from an earlier latest step) are
    replaced when the new value is higher.

    Returns:
      Whether a checkpoint was written.
    """
    meta = _meta_json(step, meta)
    value = meta.get(BEST_METRIC)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
      logging.warning('Not saving a best checkpoint at step %d: %s=%r.', step,
                      BEST_METRIC, value)
      return False
    kept = self.best_val_auroc()
    if kept is not None and not value > kept:
      logging.info('Best checkpoint kept (%s %.4f >= %.4f at step %d).',
                   BEST_METRIC, kept, value, step)
      return False
    for old in self.best.all_steps():
      if old >= step:
        self.best.delete(old)
    return self.best.save(int(step), args=_save_args(state, meta),
                          metrics={BEST_METRIC: float(value)})

  def latest_step(self) -> Optional[int]:
    return self.latest.latest_step()

  def best_step(self) -> Optional[int]:
    return self.best.best_step()

  def restore_latest(self, abstract_state: PyTree
                     ) -> Optional[tuple[PyTree, Meta]]:
    """(state, meta) of the latest step, None if there is none.

    Args:
      abstract_state: the restore target: a state (e.g. a fresh
        `create_train_state`) or its `jax.ShapeDtypeStruct` tree. Leaves with
        a sharding come back as jax.Arrays placed like it, leaves without one
        (e.g. from `jax.eval_shape`) as numpy arrays.
    """
    step = self.latest.latest_step()
    if step is None:
      return None
    self.latest.wait_until_finished()
    return _restore(self.latest, step, abstract_state)

  def restore_best(self, abstract_state: PyTree
                   ) -> Optional[tuple[PyTree, Meta]]:
    """(state, meta) of the best step, None if there is none."""
    step = self.best.best_step()
    if step is None:
      return None
    self.best.wait_until_finished()
    return _restore(self.best, step, abstract_state)

  def wait_until_finished(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the managers."""
    self.latest.close()
    self.best.close()


# ----------------------------------------------------------------------------
# Read-only access (scoring programs).
# ----------------------------------------------------------------------------
def available_steps(workdir: PathLike, kind: str) -> list[int]:
  """Completed steps of `kind` in `workdir` ([] if none or no directory)."""
  directory = pathlib.Path(workdir) / SUBDIRS[kind]
  if not directory.is_dir():
    return []
  manager = _manager(workdir, kind, reader=True)
  try:
    return sorted(manager.all_steps())
  finally:
    manager.close()


def _open_step(workdir: PathLike, kind: str, step: Optional[int]
               ) -> tuple[ocp.CheckpointManager, int]:
  """A read-only manager and the step to read, or FileNotFoundError."""
  if kind not in SUBDIRS:
    raise ValueError(f'Unknown checkpoint kind {kind!r}; valid: '
                     f'{list(SUBDIRS)}.')
  directory = pathlib.Path(workdir) / SUBDIRS[kind]
  if not directory.is_dir():
    raise FileNotFoundError(f'No {kind} checkpoints in {workdir}: '
                            f'{directory} does not exist.')
  manager = _manager(workdir, kind, reader=True)
  steps = sorted(manager.all_steps())
  if step is None:
    step = manager.best_step() if kind == BEST else manager.latest_step()
  if step is None or step not in steps:
    manager.close()
    what = 'no saved step' if not steps else f'steps {steps}'
    raise FileNotFoundError(
        f'No {kind} checkpoint{"" if step is None else f" at step {step}"} '
        f'in {directory} ({what}).')
  return manager, step


def read_meta(workdir: PathLike, *, kind: str = BEST,
              step: Optional[int] = None) -> Meta:
  """The `meta` item of a step, without reading the state.

  Args:
    workdir: the run's workdir.
    kind: 'best' or 'latest'.
    step: a saved step of that kind; None: the best (kind='best') or the
      latest (kind='latest') one.

  Raises:
    FileNotFoundError: no such checkpoint (the message lists saved steps).
  """
  manager, step = _open_step(workdir, kind, step)
  try:
    return manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta
  finally:
    manager.close()


def restore(workdir: PathLike, abstract_state: PyTree, *, kind: str = BEST,
            step: Optional[int] = None) -> tuple[PyTree, Meta]:
  """(state, meta) of a saved step (see `read_meta` for `kind`, `step`).

  Args:
    workdir: the run's workdir.
    abstract_state: restore target (a state or its ShapeDtypeStruct tree,
      e.g. `jax.eval_shape` of `train.create_train_state`); leaves without a
      sharding come back as numpy arrays.
    kind: 'best' or 'latest'.
    step: the step; None: best or latest.

  Raises:
    FileNotFoundError: no such checkpoint.
    ValueError: the checkpoint does not fit `abstract_state`.
  """
  manager, step = _open_step(workdir, kind, step)
  try:
    return _restore(manager, step, abstract_state)
  finally:
    manager.close()
