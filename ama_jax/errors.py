"""The errors a user can fix: one class per kind, each printed as one line.

Every command-line program (`ama_jax.tools.cli.run_main`) prints a
`UserError` as one line, `error: <message>`, on stderr and exits with status
1, without a traceback (`--verbose` or AMA_JAX_VERBOSE=1 shows it). Any other
exception is a bug and keeps its traceback. The message must say what is
wrong (the field, value, file or step) and what to do about it.

  UserError
  |- ConfigError          a config value or combination (also a ValueError)
  |- DataError            a dataset cannot be read or split (also ValueError)
  |  `- (data_common.DataError)  `- (its DataUnavailableError: no copy)
  |- CheckpointError      no usable checkpoint
  |  |- CheckpointDamagedError   files missing, truncated or corrupt
  |  `- CheckpointMismatchError  written for another model (also ValueError)
  |- WorkdirError         the workdir cannot be created or written
  |  `- WorkdirLockedError another live process owns it
  |- NonFiniteLossError   training diverged (also a FloatingPointError)
  |- (score_error.ScoreError) bad inputs of the score command
  `- (export_format.ExportError) bad inputs of the export command

New error kinds subclass `UserError` (or one of the above) where they are
defined; `reraise_as` turns a library's documented exception (e.g. the
ValueError of `input_pipeline.load_protocol`) into one of them.
"""
import contextlib
from typing import Iterator, Type


class UserError(Exception):
  """A problem with the inputs that the user can fix; printed as one line."""


class ConfigError(UserError, ValueError):
  """A config field (or a combination of fields) has a value that cannot run.

  The message names the field(s), the value and what is allowed.
  """


class DataError(UserError, ValueError):
  """A dataset is unavailable, or cannot be split as the config asks."""


class CheckpointError(UserError):
  """No usable checkpoint where one is needed."""


class CheckpointDamagedError(CheckpointError):
  """A checkpoint's files are missing, truncated or corrupt.

  Attributes:
    step: the damaged step (None: several, see the message).
    path: its directory.
  """

  def __init__(self, message: str, step=None, path=None):
    super().__init__(message)
    self.step = step
    self.path = path


class CheckpointMismatchError(CheckpointError, ValueError):
  """A readable checkpoint that does not fit the model/optimizer config."""


class WorkdirError(UserError):
  """The workdir cannot be created or written (permissions, not a folder)."""


class WorkdirLockedError(WorkdirError):
  """Another live process holds the workdir's lock."""


class NonFiniteLossError(UserError, FloatingPointError):
  """A loss became NaN/Inf; the last good checkpoint is left untouched."""


def one_line(error: BaseException) -> str:
  """The error's message on one line (whitespace runs become one space)."""
  return ' '.join(str(error).split()) or type(error).__name__


@contextlib.contextmanager
def reraise_as(kind: Type[UserError],
               *caught: Type[BaseException]) -> Iterator[None]:
  """Re-raises `caught` exceptions (not UserErrors) as `kind`, same message.

  For callees whose documented exceptions are user errors, e.g.
  `with errors.reraise_as(errors.DataError, ValueError): load_protocol(...)`.
  The original stays attached as `__cause__` (shown with --verbose).
  """
  try:
    yield
  except UserError:
    raise
  except caught as e:
    raise kind(one_line(e)) from e
