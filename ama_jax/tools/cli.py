"""Entry points of the command-line programs: known errors end in one line.

  if __name__ == '__main__':
    cli.run_main(main)          # instead of absl's app.run(main)

`run_main` runs `main` under absl (flags, logging) and turns

- an `errors.UserError` (bad config, data, checkpoint, locked workdir,
  divergence, bad score inputs, ...) into one line `error: <message>` on
  stderr and exit status 1;
- an `app.UsageError`, a flag that does not parse and a `--config.<field>`
  override that the config rejects into one line too (status 1);
- a config file that does not load (missing, a syntax error, an exception
  on import or in its get_config, no get_config, an unknown `:arg` token)
  into one line naming the file, the line and the fix (`config_files`);
- Ctrl-C outside training into `error: interrupted` (status 130);
- a stopped training run (`stops.Stopped`: SIGTERM, SIGINT, a preemption
  notice or its time limit) into one line `stopped: <where, how to
  resume>` (status `stops.EXIT_STOPPED`, 75),

without a traceback. `--verbose` (or the environment variable
AMA_JAX_VERBOSE=1, or absl's `--verbosity=1`) prints the traceback before
the line. Any other exception
is a bug: absl prints its traceback as usual. `main` must release what it
holds (checkpoint managers, locks) on its way out, so that nothing prints
after the line; `loop.train_and_evaluate` and `score.run` do.
"""
import functools
import os
import sys
import traceback
from typing import Callable, Optional, Sequence

from absl import app
from absl import flags
from absl import logging

from ama_jax.config import config_files
from ama_jax.reporting import console
from ama_jax import errors
from ama_jax.reporting import progress
from ama_jax.process import stops

VERBOSE_ENV = 'AMA_JAX_VERBOSE'
EXIT_ERROR, EXIT_INTERRUPTED = 1, 130
EXIT_STOPPED = stops.EXIT_STOPPED


def define_verbose(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines `--verbose` on `flag_values` unless it already exists."""
  if 'verbose' not in flag_values:
    flags.DEFINE_bool('verbose', False, 'Show the traceback of a known error '
                      f'(also {VERBOSE_ENV}=1).', flag_values=flag_values)


def define_checkpoint_flags(workdir_help: str,
                            flag_values: flags.FlagValues = flags.FLAGS
                            ) -> None:
  """Defines `--workdir`, `--step` and `--kind`: which checkpoint to read.

  The program adopts them (`flags.adopt_module_key_flags(cli, ...)`) so that
  its `--help` lists them.
  """
  flags.DEFINE_string('workdir', None, workdir_help, flag_values=flag_values)
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the best or '
                       'latest one).', flag_values=flag_values)
  flags.DEFINE_enum('kind', None, ['best', 'latest'], 'Checkpoint kind '
                    '(default: best, else latest; with --step, best else '
                    'latest).', flag_values=flag_values)


def verbose(flag_values: flags.FlagValues = flags.FLAGS) -> bool:
  """Whether tracebacks of known errors are wanted: --verbose,
  AMA_JAX_VERBOSE=1 or absl's --verbosity=1 (debug logging) or more."""
  if os.environ.get(VERBOSE_ENV, '').strip().lower() in ('1', 'true', 'yes'):
    return True
  try:
    if (flag_values['verbosity'].present
        and int(flag_values['verbosity'].value) >= 1):
      return True
  except (KeyError, flags.Error, TypeError, ValueError):
    pass
  try:
    return bool(flag_values['verbose'].value)
  except (KeyError, flags.Error):
    return False


def report(error, *, flag_values: flags.FlagValues = flags.FLAGS,
           status: int = EXIT_ERROR, prefix: str = 'error') -> int:
  """Prints `<prefix>: <message>` (one line) on stderr; returns `status`.

  Args:
    error: an exception (its traceback is printed first with --verbose) or a
      message.
    flag_values: where `--verbose` is defined.
    status: the exit status to return.
    prefix: the line's first word.
  """
  progress.end_lines()  # The line starts a line of its own.
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  for handler in logging.get_absl_logger().handlers + [
      logging.get_absl_handler()]:
    handler.flush()
  if isinstance(error, BaseException):
    if verbose(flag_values):
      traceback.print_exception(error, file=sys.stderr)
    message = errors.one_line(error)
  else:
    message = ' '.join(str(error).split())
  sys.stderr.write(f'{prefix}: {message}\n')
  sys.stderr.flush()
  return status


def guarded(main: Callable[[Sequence[str]], Optional[int]]
            ) -> Callable[[Sequence[str]], Optional[int]]:
  """`main` with known errors reported as one line (see module docstring)."""

  @functools.wraps(main)
  def wrapper(argv: Sequence[str]) -> Optional[int]:
    try:
      return main(argv)
    except errors.UserError as e:
      return report(e)
    except app.UsageError as e:
      return report(f'{errors.one_line(e)} (see --helpshort)')
    except stops.Stopped as e:
      return report(e, status=EXIT_STOPPED, prefix='stopped')
    except KeyboardInterrupt:
      return report('interrupted', status=EXIT_INTERRUPTED)

  return wrapper


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with any failure reported as one line (exit 1).

  Beside absl's own flag errors, `--config.<field>=<value>` overrides are
  applied while parsing: an unknown field or a value of the wrong type
  raises from ml_collections (not a flags.Error), and so does a config
  file's `get_config`, e.g. a bad `:arg`.
  """
  define_verbose()
  try:
    rest = flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    line = config_files.load_failure(e)
    if line is None:
      line = config_files.returned_none(flags.FLAGS, list(argv))
    if line is None:
      if isinstance(e, (flags.Error, AttributeError, KeyError, TypeError,
                        ValueError)):
        _parse_error(e, argv)
      raise
    if verbose() or _asks_traceback(argv):
      traceback.print_exception(config_files.original_error(e),
                                file=sys.stderr)
    sys.exit(report(line))
  # A config file that fails to load does not fail the parse: ml_collections
  # leaves a placeholder that raises on first use. Fail here instead.
  for name in flags.FLAGS:
    line = config_files.unavailable(name, flags.FLAGS[name].value,
                                    list(argv))
    if line is not None:
      sys.exit(report(line))
  line = config_files.check_loaded(flags.FLAGS)
  if line is not None:
    sys.exit(report(line))
  return rest


def _asks_traceback(argv: Sequence[str]) -> bool:
  """Whether the command line asks for tracebacks (when the parse failed
  before reaching --verbose or --verbosity)."""
  for a in argv[1:]:
    name, _, value = a.lstrip('-').partition('=')
    if name == 'verbose' and value.lower() in ('', 'true', '1'):
      return True
    if name in ('verbosity', 'v') and value.lstrip('-').isdigit():
      if int(value) >= 1:
        return True
  return False


def _parse_error(e: Exception, argv: Sequence[str]) -> None:
  """Exits with one line for a flag or override that does not parse."""
  if isinstance(e, flags.Error):
    sys.exit(report(f'{_without_traceback(str(e))} (see --helpshort)'))
  if verbose() or _asks_traceback(argv):
    traceback.print_exception(e, file=sys.stderr)
  overrides = [a for a in argv[1:] if a.startswith('--config.')]
  name = str(e).strip('"\'')
  culprits = [a for a in overrides
              if f'.{name}' in a.split('=', 1)[0] + '.']
  if isinstance(e, (AttributeError, KeyError)) and culprits:
    sys.exit(report(f'{culprits[0]}: the config has no field {name!r} '
                    'there; every field is listed in configs/default.py.'))
  sys.exit(report(f'cannot apply the command line ({type(e).__name__}: '
                  f'{errors.one_line(e)}); check --config and its '
                  f'overrides {" ".join(overrides)}'.rstrip()))


def _without_traceback(message: str) -> str:
  """A message that embeds a traceback (ml_collections' config file
  errors) shortened to its text before and its last line."""
  if 'Traceback (most recent call last)' not in message:
    return errors.one_line(message)
  head = message.split('Traceback (most recent call last)')[0]
  last = [line for line in message.splitlines() if line.strip()][-1]
  return errors.one_line(f'{head} {last}')


def run_main(main: Callable[[Sequence[str]], Optional[int]],
             argv: Optional[Sequence[str]] = None) -> None:
  """absl's `app.run(main)`, ending a known error in one line."""
  define_verbose()
  app.run(guarded(main), argv=argv, flags_parser=parse_flags)


def quiet_logging(main: Callable[[Sequence[str]], Optional[int]]
                  ) -> Callable[[Sequence[str]], Optional[int]]:
  """`main` with absl logging at WARNING unless --verbosity is given.

  Orbax logs dozens of INFO lines per restore; a program that restores a
  checkpoint shows them (and its own progress) only with --verbosity=0
  (`console.quiet`).
  """

  @functools.wraps(main)
  def quiet_main(argv: Sequence[str]) -> Optional[int]:
    console.quiet()
    return main(argv)

  return quiet_main

