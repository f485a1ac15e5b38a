"""A checkpoint step's directory on disk: layout, checksums and damage.

Every kind of checkpoint lives in its own subdirectory of the workdir
(`kind_dir`), one directory per committed step named by its digits
(`step_dirs`):

  <workdir>/checkpoints/<step>/{state,meta}  latest steps (resume)
  <workdir>/best/<step>/{state,meta}         the best val_auroc

Checksums. Everything of a step lives inside it: its items and
`ama_checksums.json` (`seal`: size and sha256 of each of its files), written
atomically while orbax commits the step, before the rename that gives the
step its final name.

Damage. A step whose files are missing, truncated, corrupt or whose JSON
does not parse is named by `step_problem` (None: it looks intact). Damaged
or replaced steps are set aside as `<step>.<label>` (`aside_path`; orbax
ignores the name), never deleted unread. `check_resumable` says, before a
run loads data, whether a workdir with latest steps has an intact one.
"""
import hashlib
import json
import os
import pathlib
from typing import Optional, Sequence, Union

import tensorstore as ts

from ama_jax import errors

PathLike = Union[str, os.PathLike]

LATEST, BEST = 'latest', 'best'
# kind -> subdirectory of the workdir.
SUBDIRS = {LATEST: 'checkpoints', BEST: 'best'}
BEST_METRIC = 'val_auroc'
CHECKSUMS = 'ama_checksums.json'  # In each step directory.
DAMAGED, SUPERSEDED = 'damaged', 'superseded'  # `<step>.<label>` names.
# Orbax's own files at a step's top level, updated while it commits (after
# the checksums are written); _CHECKPOINT_METADATA must parse as JSON.
_ORBAX_STEP_FILES = ('_CHECKPOINT_METADATA', 'commit_success.txt')


# ----------------------------------------------------------------------------
# Layout.
# ----------------------------------------------------------------------------
def kind_dir(workdir: PathLike, kind: str) -> pathlib.Path:
  """The (absolute) subdirectory of `workdir` that holds `kind`'s steps."""
  if kind not in SUBDIRS:
    raise ValueError(f'Unknown checkpoint kind {kind!r}; valid: '
                     f'{list(SUBDIRS)}.')
  return pathlib.Path(workdir).absolute() / SUBDIRS[kind]


def step_dirs(directory: pathlib.Path) -> dict[int, pathlib.Path]:
  """Committed step directories (orbax's names: the step's digits)."""
  if not directory.is_dir():
    return {}
  return {int(p.name): p for p in directory.iterdir()
          if p.is_dir() and p.name.isdigit()}


def aside_path(step_dir: pathlib.Path, label: str) -> pathlib.Path:
  """`<step>.<label>` (orbax ignores it), numbered if it exists already."""
  path = step_dir.with_name(f'{step_dir.name}.{label}')
  n = 1
  while path.exists():
    n += 1
    path = step_dir.with_name(f'{step_dir.name}.{label}-{n}')
  return path


# ----------------------------------------------------------------------------
# Checksums.
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


# ----------------------------------------------------------------------------
# Damage.
# ----------------------------------------------------------------------------
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


def damaged_error(step: int, step_dir: pathlib.Path,
                  problem: str) -> errors.CheckpointDamagedError:
  """The error naming a damaged step, its directory and what is wrong."""
  return errors.CheckpointDamagedError(
      f'Checkpoint step {step} in {step_dir} is damaged: {problem}',
      step=step, path=step_dir)


def none_readable_error(directory: pathlib.Path,
                        failures: Sequence[errors.CheckpointDamagedError],
                        training: bool = False
                        ) -> errors.CheckpointDamagedError:
  """The error when no step of `directory` is readable (`failures`: each)."""
  listed = '; '.join(f'step {e.step} ({e.path}): '
                     f'{str(e).split(" is damaged: ", 1)[-1]}'
                     for e in failures)
  advice = (f' Nothing was moved or deleted: restore those files, or move '
            f'{directory.parent} away to train from scratch.' if training
            else '')
  return errors.CheckpointDamagedError(
      f'No readable checkpoint in {directory}: {listed}.{advice}')


def check_resumable(workdir: PathLike) -> None:
  """Raises CheckpointDamagedError if `workdir` has latest steps, none intact.

  A cheap check (checksums, no restore) before a run loads data: a workdir
  without checkpoints, or with at least one intact latest step, passes.
  """
  directory = kind_dir(workdir, LATEST)
  steps = step_dirs(directory)
  problems = {step: step_problem(path) for step, path in steps.items()}
  if steps and all(problems.values()):
    raise none_readable_error(directory, [
        damaged_error(step, steps[step], problems[step])
        for step in sorted(steps, reverse=True)], training=True)
