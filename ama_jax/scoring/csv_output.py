"""The scores' CSV: `check_output` before scoring, `write_csv` after.

Both write atomically (`write_atomically`, which the kNN reference's cache
uses too). A problem raises `score_error.ScoreError`.
"""
import csv
import os
import pathlib
import tempfile
from typing import Callable, Sequence

import numpy as np

from ama_jax.scoring import score_error


def check_output(path: os.PathLike | str) -> pathlib.Path:
  """Fails early (before any scoring) if `path` cannot be written."""
  path = pathlib.Path(path)
  folder = path.parent
  if path.is_dir():
    raise score_error.ScoreError(
        f'Output {path} is a folder; give a file name such as '
        f'{path / "scores.csv"}.')
  if not folder.is_dir():
    raise score_error.ScoreError(
        f'Output folder {folder} does not exist; create it first.')
  if not os.access(folder, os.W_OK | os.X_OK) or (
      path.exists() and not os.access(path, os.W_OK)):
    raise score_error.ScoreError(
        f'Output {path} is not writable (permission denied).')
  return path


def write_atomically(path: pathlib.Path, mode: str,
                     write: Callable[..., None], **open_kw) -> None:
  """`write(file)` into a temporary file beside `path`, then a rename: a
  reader never sees a partial file. The file gets the permissions of an
  ordinary new file (umask), not mkstemp's 0600. Raises OSError."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.',
                             suffix='.tmp')
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    with os.fdopen(fd, mode, **open_kw) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_csv(path: os.PathLike | str, ids: Sequence[str], r: np.ndarray,
              scores: np.ndarray, is_anomaly: np.ndarray,
              score_column: str = 'score') -> None:
  """Writes the CSV atomically: a temporary file beside it, then a rename.

  Columns: id, r, `score_column` ('score', or 'knn' for the feature kNN
  distance), is_anomaly.
  """
  path = pathlib.Path(path)

  def write(f):
    writer = csv.writer(f)
    writer.writerow(['id', 'r', score_column, 'is_anomaly'])
    for row in zip(ids, r.tolist(), scores.tolist(), is_anomaly.tolist()):
      writer.writerow([row[0], repr(row[1]), repr(row[2]), int(row[3])])

  try:
    write_atomically(path, 'w', write, newline='')
  except OSError as e:
    raise score_error.ScoreError(f'Cannot write {path}: {e}') from e
