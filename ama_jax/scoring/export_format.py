"""The export folder's format: its file names, `is_exported` and `load`."""
import json
import os
import pathlib

from jax import export as jax_export

from ama_jax import errors

FUNCTION_FILE, META_FILE = 'scorer.jaxexport', 'scorer.json'
FORMAT = 'ama_jax.scoring.export/1'


class ExportError(errors.UserError):
  """Bad inputs of the export command; the message says what to fix."""


def is_exported(path: os.PathLike | str) -> bool:
  """Whether `path` is a directory written by this program."""
  path = pathlib.Path(path)
  return (path / META_FILE).is_file() and (path / FUNCTION_FILE).is_file()


def load(path: os.PathLike | str) -> tuple[jax_export.Exported, dict]:
  """(exported function, meta) of an export directory.

  Raises:
    ExportError: missing or unreadable files, or another format.
  """
  path = pathlib.Path(path)
  try:
    meta = json.loads((path / META_FILE).read_text())
    exported = jax_export.deserialize(bytearray(
        (path / FUNCTION_FILE).read_bytes()))
  except (OSError, ValueError, TypeError) as e:
    raise ExportError(f'Cannot read the exported scorer in {path}: '
                      f'{type(e).__name__}: {e}') from e
  if meta.get('format') != FORMAT:
    raise ExportError(f'{path / META_FILE} is not an {FORMAT} scorer '
                      f'(format {meta.get("format")!r}).')
  return exported, meta
