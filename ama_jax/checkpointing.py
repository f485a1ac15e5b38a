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

Atomic writes. A save is written to `<step>.orbax-checkpoint-tmp` and renamed
when complete, so a run killed mid-save never leaves a half-written step as
the latest one: `latest_step()` ignores the tmp directory and the previous
step restores. Everything of a step lives inside it: its `meta` item and
`ama_checksums.json` (size and sha256 of each of its files), written before
the rename. `CheckpointManagers` removes tmp leftovers when it opens a
workdir. Replacing the best step by an earlier one sets the old one aside
until the new one is committed. Saves are asynchronous: call
`wait_until_finished()` (or `close()`, or use the managers as a context
manager) before exiting. Every process of a multi-host run must make the
same calls; only process 0 writes, renames and deletes.

Damage. A step whose files are missing, truncated, corrupt or whose JSON
does not parse (`step_problem`) is never restored: training resumes from
the newest readable latest step and moves the damaged ones aside as
`<step>.damaged` (orbax ignores the name); with none readable it raises
`errors.CheckpointDamagedError` and moves nothing. A damaged best step is
set aside when the managers open. The read-only functions (`read_meta`,
`restore`) skip damaged steps when choosing the best or latest one (with a
warning) and raise for an explicit damaged step; they never change files.

  ckpts = checkpointing.CheckpointManagers(workdir)   # training
  restored = ckpts.restore_latest(state)              # None, or (state, meta)
  ckpts.save_latest(step, state, meta)
  ckpts.save_best(step, state, meta)                  # only if val_auroc beats
  ckpts.close()

  meta = checkpointing.read_meta(workdir, kind='best')  # scoring
  state, meta = checkpointing.restore(workdir, abstract_state, kind='best')
"""
import hashlib
import json
import math
import os
import pathlib
import shutil
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts

from ama_jax import errors

PathLike = Union[str, os.PathLike]
PyTree = Any
Meta = dict[str, Any]

LATEST, BEST = 'latest', 'best'
# kind -> subdirectory of the workdir.
SUBDIRS = {LATEST: 'checkpoints', BEST: 'best'}
MAX_TO_KEEP = {LATEST: 2, BEST: 1}
BEST_METRIC = 'val_auroc'
CHECKSUMS = 'ama_checksums.json'  # In each step directory.
DAMAGED, SUPERSEDED = 'damaged', 'superseded'  # `<step>.<label>` names.
# Orbax's own files at a step's top level, updated while it commits (after
# the checksums are written); _CHECKPOINT_METADATA must parse as JSON.
_ORBAX_STEP_FILES = ('_CHECKPOINT_METADATA', 'commit_success.txt')


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
# Checksums and damage.
# ----------------------------------------------------------------------------
def _digest(path: pathlib.Path) -> str:
  sha = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      sha.update(block)
  return sha.hexdigest()


def _content_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  """The files a step's checksums cover: every file of its items."""
  return sorted(p for p in step_dir.rglob('*') if p.is_file() and not (
      p.parent == step_dir and (p.name in _ORBAX_STEP_FILES
                                or p.name.startswith(CHECKSUMS)
                                or p.name.startswith('.' + CHECKSUMS))))


def _write_atomic(path: pathlib.Path, text: str) -> None:
  """Writes `path` via a temporary file in its folder, fsync and rename."""
  tmp = path.with_name(f'.{path.name}.tmp')
  with open(tmp, 'w') as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def seal(step_dir: PathLike) -> None:
  """Writes `<step_dir>/ama_checksums.json`: size and sha256 of every file.

  Called while orbax commits a save (before the step directory gets its
  final name), so every committed step carries its checksums.
  """
  step_dir = pathlib.Path(step_dir)
  files = {str(p.relative_to(step_dir)): [p.stat().st_size, _digest(p)]
           for p in _content_files(step_dir)}
  _write_atomic(step_dir / CHECKSUMS, json.dumps(
      {'format': 1, 'algorithm': 'sha256', 'files': files}, indent=0))


def _json_problem(path: pathlib.Path, root: pathlib.Path) -> Optional[str]:
  name = str(path.relative_to(root))
  if not path.is_file():
    return f'{name} is missing'
  try:
    json.loads(path.read_text())
  except (OSError, ValueError) as e:
    return f'{name} is not valid JSON ({errors.one_line(e)[:80]})'
  return None


def _state_data_problem(state_dir: pathlib.Path) -> Optional[str]:
  """Reads every stored value of the state's OCDBT database, synchronously.

  For steps without checksums: finds truncated or missing data files
  without orbax's asynchronous restore, which leaves failed reads behind
  that print errors later (even after the program's last line).
  """
  try:
    store = ts.KvStore.open({'driver': 'ocdbt', 'base': {
        'driver': 'file', 'path': f'{state_dir}/'}}).result()
    keys = store.list().result()
    if not keys:
      return 'state/ holds no arrays'
    for key in keys:
      if store.read(key).result().state != 'value':
        return f'state/ value {key.decode()} is missing'
  except (ValueError, RuntimeError, OSError, TypeError) as e:
    return f'state/ data is unreadable ({errors.one_line(e)[:160]})'
  return None


def step_problem(step_dir: PathLike) -> Optional[str]:
  """What is wrong with a committed step's files; None if it looks intact.

  A sealed step (with `ama_checksums.json`) must match its checksums file
  for file. A step without one (saved by an older ama_jax, or where the
  checksums could not be written) gets structural checks (its JSON files
  parse, `meta` names the step) and every stored value of its state is
  read back; the restore itself finds the rest.
  """
  step_dir = pathlib.Path(step_dir)
  if not step_dir.is_dir():
    return 'the step directory is missing'
  found = []
  # Orbax reads (and complains about) its step metadata on every open.
  problem = _json_problem(step_dir / _ORBAX_STEP_FILES[0], step_dir)
  if problem:
    found.append(problem)
  sums = step_dir / CHECKSUMS
  if sums.exists():
    try:
      files = json.loads(sums.read_text())['files']
    except (OSError, ValueError, KeyError, TypeError) as e:
      return f'{CHECKSUMS} is unreadable ({errors.one_line(e)[:80]})'
    for name, (size, digest) in sorted(files.items()):
      path = step_dir / name
      if not path.is_file():
        found.append(f'{name} is missing')
      elif path.stat().st_size != size:
        found.append(f'{name} has {path.stat().st_size} bytes, '
                     f'{size} were written')
      elif _digest(path) != digest:
        found.append(f'{name} is corrupt (checksum differs)')
  else:
    for name in ('meta/metadata', 'state/_METADATA') + (
        ('metrics/metrics',) if (step_dir / 'metrics').exists() else ()):
      problem = _json_problem(step_dir / name, step_dir)
      if problem:
        found.append(problem)
    if not (step_dir / 'state' / 'manifest.ocdbt').is_file():
      found.append('state/manifest.ocdbt is missing')
    if not found:
      meta = json.loads((step_dir / 'meta' / 'metadata').read_text())
      if not isinstance(meta, dict) or str(meta.get('step')) != step_dir.name:
        found.append(f'meta/metadata does not describe step {step_dir.name}')
    if not found:
      problem = _state_data_problem(step_dir / 'state')
      if problem:
        found.append(problem)
  if not found:
    return None
  return '; '.join(found[:3]) + (f' (+{len(found) - 3} more)'
                                 if len(found) > 3 else '')


def _step_dirs(directory: pathlib.Path) -> dict[int, pathlib.Path]:
  """Committed step directories (orbax's names: the step's digits)."""
  if not directory.is_dir():
    return {}
  return {int(p.name): p for p in directory.iterdir()
          if p.is_dir() and p.name.isdigit()}


def _aside_path(step_dir: pathlib.Path, label: str) -> pathlib.Path:
  """`<step>.<label>` (orbax ignores it), numbered if it exists already."""
  path = step_dir.with_name(f'{step_dir.name}.{label}')
  n = 1
  while path.exists():
    n += 1
    path = step_dir.with_name(f'{step_dir.name}.{label}-{n}')
  return path


def _is_chief() -> bool:
  return jax.process_index() == 0


def _sync(name: str) -> None:
  """A barrier of every process (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f'ama_jax checkpointing: {name}')


def _damaged(step: int, step_dir: pathlib.Path,
             problem: str) -> errors.CheckpointDamagedError:
  return errors.CheckpointDamagedError(
      f'Checkpoint step {step} in {step_dir} is damaged: {problem}',
      step=step, path=step_dir)


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


def _read_meta_dir(step: int, step_dir: pathlib.Path) -> Meta:
  """The `meta` item of a step directory (checked first)."""
  problem = step_problem(step_dir)
  if problem:
    raise _damaged(step, step_dir, problem)
  checkpointer = _checkpointer()
  try:
    return checkpointer.restore(step_dir, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore())).meta
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise _damaged(step, step_dir, errors.one_line(e)[:300]) from e
  finally:
    checkpointer.close()


def _restore_dir(step: int, step_dir: pathlib.Path,
                 abstract_state: PyTree) -> tuple[PyTree, Meta]:
  """(state, meta) of a step directory: checked, fitted, then restored.

  Raises:
    CheckpointDamagedError: the files are damaged or cannot be read.
    CheckpointMismatchError: they hold another model's state.
  """
  problem = step_problem(step_dir)
  if problem:
    raise _damaged(step, step_dir, problem)
  abstract_state = _abstract(abstract_state)
  checkpointer = _checkpointer()
  try:
    try:
      stored = checkpointer.metadata(step_dir).item_metadata['state']
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise _damaged(step, step_dir, 'state metadata unreadable: '
                     + errors.one_line(e)[:300]) from e
    _check_fits(stored, abstract_state, step, step_dir)
    try:
      restored = checkpointer.restore(step_dir, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          meta=ocp.args.JsonRestore()))
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise _damaged(step, step_dir, errors.one_line(e)[:300]) from e
  finally:
    checkpointer.close()
  return restored.state, restored.meta


# ----------------------------------------------------------------------------
# Managers.
# ----------------------------------------------------------------------------
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
      best_fn=(lambda metrics: metrics[BEST_METRIC]) if best else None,
      best_mode='max',
      # A step saved without metrics would never be deleted.
      keep_checkpoints_without_metrics=not best,
      create=not reader,
      cleanup_tmp_directories=not reader,
      async_options=ocp.AsyncOptions(post_finalization_callback=on_commit))


def _directory(workdir: PathLike, kind: str) -> pathlib.Path:
  if kind not in SUBDIRS:
    raise ValueError(f'Unknown checkpoint kind {kind!r}; valid: '
                     f'{list(SUBDIRS)}.')
  return pathlib.Path(workdir).absolute() / SUBDIRS[kind]


def _manager(workdir: PathLike, kind: str, reader: bool = False,
             on_commit: Optional[Callable[[], None]] = None
             ) -> ocp.CheckpointManager:
  # Handlers (not just item names) so that `item_metadata` can be read.
  return ocp.CheckpointManager(
      _directory(workdir, kind), options=_options(kind, reader, on_commit),
      item_handlers={'state': ocp.StandardCheckpointHandler(),
                     'meta': ocp.JsonCheckpointHandler()})


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


def check_resumable(workdir: PathLike) -> None:
  """Raises CheckpointDamagedError if `workdir` has latest steps, none intact.

  A cheap check (checksums, no restore) before a run loads data: a workdir
  without checkpoints, or with at least one intact latest step, passes.
  """
  directory = _directory(workdir, LATEST)
  steps = _step_dirs(directory)
  problems = {step: step_problem(path) for step, path in steps.items()}
  if steps and all(problems.values()):
    raise _none_readable(directory, [
        _damaged(step, steps[step], problems[step])
        for step in sorted(steps, reverse=True)], training=True)


def _none_readable(directory: pathlib.Path,
                   failures: Sequence[errors.CheckpointDamagedError],
                   training: bool = False) -> errors.CheckpointDamagedError:
  listed = '; '.join(f'step {e.step} ({e.path}): '
                     f'{str(e).split(" is damaged: ", 1)[-1]}'
                     for e in failures)
  advice = (f' Nothing was moved or deleted: restore those files, or move '
            f'{directory.parent} away to train from scratch.' if training
            else '')
  return errors.CheckpointDamagedError(
      f'No readable checkpoint in {directory}: {listed}.{advice}')


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
    self._dirs = {kind: _directory(workdir, kind) for kind in SUBDIRS}
    self._in_flight: dict[str, Optional[int]] = {k: None for k in SUBDIRS}
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
    except Exception:  # pylint: disable=broad-except
      logging.exception('Closing the checkpoint managers of %s failed while '
                        'handling another error.', self.workdir)

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
        seal(step_dir)
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
    moved = {step: _aside_path(self._dirs[kind] / str(step), label)
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
    steps = _step_dirs(directory)
    for step, path in sorted(steps.items()):
      problem = step_problem(path)
      if problem:
        aside = _aside_path(path, DAMAGED)
        os.replace(path, aside)
        del steps[step]
        logging.warning('Best checkpoint step %d in %s is damaged (%s); '
                        'moved to %s. A later validation saves a new best.',
                        step, directory, problem, aside.name)
    superseded = sorted(p for p in directory.glob(f'*.{SUPERSEDED}*')
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
    for path in directory.glob(f'*.{SUPERSEDED}*'):
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
    return _read_meta_dir(step, self._dirs[BEST] / str(step)).get(BEST_METRIC)

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
    self._drop_superseded()
    later = [old for old in self.best.all_steps() if old >= step]
    if later:
      self._set_aside(BEST, later, SUPERSEDED)
    return self._save(BEST, step, state, meta,
                      metrics={BEST_METRIC: float(value)})

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
        restored = _restore_dir(step, self._dirs[LATEST] / str(step),
                                abstract_state)
      except errors.CheckpointDamagedError as e:
        logging.warning('%s', e)
        failures.append(e)
        continue
      if failures:
        moved = self._set_aside(LATEST, [e.step for e in failures], DAMAGED)
        for e in failures:
          logging.warning(
              'Resuming from step %d, the newest readable checkpoint: step %d '
              'was damaged and is kept aside as %s.', step, e.step,
              moved[e.step])
      return restored
    raise _none_readable(self._dirs[LATEST], failures, training=True)

  def restore_best(self, abstract_state: PyTree
                   ) -> Optional[tuple[PyTree, Meta]]:
    """(state, meta) of the best step; None if there is none or it is
    damaged (then a warning says so)."""
    step = self.best.best_step()
    if step is None:
      return None
    self.best.wait_until_finished()
    try:
      return _restore_dir(step, self._dirs[BEST] / str(step), abstract_state)
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


# ----------------------------------------------------------------------------
# Read-only access (scoring programs).
# ----------------------------------------------------------------------------
def available_steps(workdir: PathLike, kind: str) -> list[int]:
  """Committed steps of `kind` in `workdir` ([] if none or no directory).

  Damaged steps are listed too; `read_meta` and `restore` check them.
  """
  return sorted(_step_dirs(_directory(workdir, kind)))


def _choose_step(workdir: PathLike, kind: str, step: Optional[int]
                 ) -> tuple[int, pathlib.Path]:
  """(step, directory) to read: `step`, else the best or newest readable.

  Raises:
    FileNotFoundError: no such step (the message lists saved steps).
    CheckpointDamagedError: the step, or every candidate, is damaged.
  """
  directory = _directory(workdir, kind)
  if not directory.is_dir():
    raise FileNotFoundError(f'No {kind} checkpoints in {workdir}: '
                            f'{directory} does not exist.')
  steps = _step_dirs(directory)
  if step is not None and step in steps:
    problem = step_problem(steps[step])
    if problem:
      raise _damaged(step, steps[step], problem)
    return step, steps[step]
  if step is not None or not steps:
    what = 'no saved step' if not steps else f'steps {sorted(steps)}'
    raise FileNotFoundError(
        f'No {kind} checkpoint{"" if step is None else f" at step {step}"} '
        f'in {directory} ({what}).')
  readable, failures = {}, []
  for s in sorted(steps, reverse=True):
    try:
      readable[s] = _read_meta_dir(s, steps[s])
    except errors.CheckpointDamagedError as e:
      failures.append(e)
  if not readable:
    raise _none_readable(directory, failures)
  if kind == BEST:
    chosen = max(readable, key=lambda s: (
        readable[s].get(BEST_METRIC) or -math.inf, s))
  else:
    chosen = max(readable)
  for e in failures:
    if kind == BEST or e.step > chosen:
      logging.warning('%s; using step %d instead.', e, chosen)
  return chosen, steps[chosen]


def read_meta(workdir: PathLike, *, kind: str = BEST,
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
  return _read_meta_dir(step, step_dir)


def restore(workdir: PathLike, abstract_state: PyTree, *, kind: str = BEST,
            step: Optional[int] = None) -> tuple[PyTree, Meta]:
  """(state, meta) of a saved step (see `read_meta` for `kind`, `step`).

  Args:
    workdir: the run's workdir.
    abstract_state: restore target (a state or its ShapeDtypeStruct tree,
      e.g. `jax.eval_shape` of `train.create_train_state`); leaves without a
      sharding come back as numpy arrays.
    kind: 'best' or 'latest'.
    step: the step; None: best or newest readable.

  Raises:
    FileNotFoundError: no such checkpoint.
    CheckpointDamagedError: the checkpoint cannot be read.
    CheckpointMismatchError (a ValueError): it does not fit
      `abstract_state`.
  """
  step, step_dir = _choose_step(workdir, kind, step)
  return _restore_dir(step, step_dir, abstract_state)
