"""Reading checkpoints without a manager (scoring programs, resuming).

A program that scores new data reads a step's `meta` alone first
(`read_meta`), then rebuilds the abstract state from `meta['config']`
(`json_safe.config_from_dict`) and restores `state` into it (`restore`); it
needs nothing else:

  meta = checkpoint_reading.read_meta(workdir, kind='best')
  state, meta = checkpoint_reading.restore(workdir, abstract_state,
                                           kind='best')

These functions skip damaged steps when choosing the best or latest one
(with a warning) and raise for an explicit damaged step; they never change
files. `read_meta_dir` and `restore_dir` read one step directory after
checking it (`checkpoint_files.step_problem`); the managers of
`checkpointing` restore through them too.
"""
import math
import pathlib
from typing import Any, Optional

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from ama_jax.checkpoints import checkpoint_files
from ama_jax import errors
from ama_jax.training import train_state

PathLike = checkpoint_files.PathLike
PyTree = Any
Meta = dict[str, Any]


# ----------------------------------------------------------------------------
# Reading one step.
# ----------------------------------------------------------------------------
def _checkpointer() -> ocp.Checkpointer:
  """Reads one step directory, without a manager (which scans them all)."""
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler(
      state=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler(),
      metrics=ocp.JsonCheckpointHandler()))


def _abstract(tree: PyTree) -> PyTree:
  """Restore target: arrays -> ShapeDtypeStruct; ShapeDtypeStructs kept."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _check_fits(stored: Any, abstract_state: PyTree, step: int,
                step_dir: pathlib.Path) -> None:
  """Raises CheckpointMismatchError if the saved arrays differ from the target.

  Checked before restoring: a failed orbax restore reports a long TensorStore
  error and leaves unfinished reads behind.
  """
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
    raise errors.CheckpointMismatchError(
        f'Checkpoint step {step} in {step_dir.parent} does not match the '
        'expected state (was it written with another model or optimizer '
        f'config?): {shown}.')


def read_meta_dir(step: int, step_dir: pathlib.Path) -> Meta:
  """The `meta` item of a step directory (checked first)."""
  problem = checkpoint_files.step_problem(step_dir)
  if problem:
    raise checkpoint_files.damaged_error(step, step_dir, problem)
  checkpointer = _checkpointer()
  try:
    return checkpointer.restore(step_dir, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise checkpoint_files.damaged_error(
        step, step_dir, errors.one_line(e)[:300]) from e
  finally:
    checkpointer.close()


def restore_dir(step: int, step_dir: pathlib.Path,
                abstract_state: PyTree) -> tuple[PyTree, Meta]:
  """(state, meta) of a step directory: checked, fitted, then restored.

  Raises:
    CheckpointDamagedError: the files are damaged or cannot be read.
    CheckpointMismatchError: they hold another model's state.
  """
  problem = checkpoint_files.step_problem(step_dir)
  if problem:
    raise checkpoint_files.damaged_error(step, step_dir, problem)
  abstract_state = _abstract(abstract_state)
  checkpointer = _checkpointer()
  try:
    try:
      stored = checkpointer.metadata(step_dir).item_metadata['state']
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise checkpoint_files.damaged_error(
          step, step_dir,
          'state metadata unreadable: ' + errors.one_line(e)[:300]) from e
    _check_fits(stored, abstract_state, step, step_dir)
    try:
      restored = checkpointer.restore(step_dir, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          meta=ocp.args.JsonRestore()))
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise checkpoint_files.damaged_error(
          step, step_dir, errors.one_line(e)[:300]) from e
  finally:
    checkpointer.close()
  return restored.state, restored.meta


# ----------------------------------------------------------------------------
# Choosing a step (read-only).
# ----------------------------------------------------------------------------
def available_steps(workdir: PathLike, kind: str) -> list[int]:
  """Committed steps of `kind` in `workdir` ([] if none or no directory).

  Damaged steps are listed too; `read_meta` and `restore` check them.
  """
  return sorted(checkpoint_files.step_dirs(
      checkpoint_files.kind_dir(workdir, kind)))


def _choose_step(workdir: PathLike, kind: str, step: Optional[int]
                 ) -> tuple[int, pathlib.Path]:
  """(step, directory) to read: `step`, else the best or newest readable.

  Raises:
    FileNotFoundError: no such step (the message lists saved steps).
    CheckpointDamagedError: the step, or every candidate, is damaged.
  """
  directory = checkpoint_files.kind_dir(workdir, kind)
  if not directory.is_dir():
    raise FileNotFoundError(f'No {kind} checkpoints in {workdir}: '
                            f'{directory} does not exist.')
  steps = checkpoint_files.step_dirs(directory)
  if step is not None and step in steps:
    problem = checkpoint_files.step_problem(steps[step])
    if problem:
      raise checkpoint_files.damaged_error(step, steps[step], problem)
    return step, steps[step]
  if step is not None or not steps:
    what = 'no saved step' if not steps else f'steps {sorted(steps)}'
    raise FileNotFoundError(
        f'No {kind} checkpoint{"" if step is None else f" at step {step}"} '
        f'in {directory} ({what}).')
  readable, failures = {}, []
  for s in sorted(steps, reverse=True):
    try:
      readable[s] = read_meta_dir(s, steps[s])
    except errors.CheckpointDamagedError as e:
      failures.append(e)
  if not readable:
    raise checkpoint_files.none_readable_error(directory, failures)
  if kind == checkpoint_files.BEST:
    chosen = max(readable, key=lambda s: (
        readable[s].get(checkpoint_files.BEST_METRIC) or -math.inf, s))
  else:
    chosen = max(readable)
  for e in failures:
    if kind == checkpoint_files.BEST or e.step > chosen:
      logging.warning('%s; using step %d instead.', e, chosen)
  return chosen, steps[chosen]


def read_meta(workdir: PathLike, *, kind: str = checkpoint_files.BEST,
              step: Optional[int] = None) -> Meta:
  """The `meta` item of a step, without reading the state.

  Args:
    workdir: the run's workdir.
    kind: 'best' or 'latest'.
    step: a saved step of that kind; None: the best (kind='best') or the
      newest (kind='latest') readable one; damaged steps are skipped with a
      warning.

  Raises:
    FileNotFoundError: no such checkpoint (the message lists saved steps).
    CheckpointDamagedError: the step is damaged, or (step None) every step.
  """
  step, step_dir = _choose_step(workdir, kind, step)
  return read_meta_dir(step, step_dir)


def restore(workdir: PathLike, abstract_state: PyTree, *,
            kind: str = checkpoint_files.BEST, step: Optional[int] = None
            ) -> tuple[PyTree, Meta]:
  """(state, meta) of a saved step (see `read_meta` for `kind`, `step`).

  Args:
    workdir: the run's workdir.
    abstract_state: restore target (a state or its ShapeDtypeStruct tree,
      e.g. `jax.eval_shape` of `train_state.create_train_state`); leaves
      without a sharding come back as numpy arrays.
    kind: 'best' or 'latest'.
    step: the step; None: best or newest readable.

  Raises:
    FileNotFoundError: no such checkpoint.
    CheckpointDamagedError: the checkpoint cannot be read.
    CheckpointMismatchError (a ValueError): it does not fit
      `abstract_state`.
  """
  step, step_dir = _choose_step(workdir, kind, step)
  return restore_dir(step, step_dir, abstract_state)
