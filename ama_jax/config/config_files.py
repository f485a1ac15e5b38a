"""Config files that do not load, as one line: the file, the line, the fix.

ml_collections loads `--config=<file>[:<arg>]` while absl parses the
command line, and lets everything a config file raises out as a traceback
(or hides it behind a placeholder that fails later). `cli.parse_flags`
asks this module instead, for one line each:

- a missing (or unreadable) file: `no config file ...`, from where;
- a syntax error: the file, line and the offending text;
- an exception while importing the file, or raised by its `get_config`:
  the innermost line of the project's own code (not of a library) where it
  was raised, the exception and its message;
- no `get_config` in the file, or one that takes no `:arg` (or needs one);
- `get_config` returning None;
- an unknown `:arg` token: one that the file ignores, i.e. its config is
  the same when the token is replaced by a nonsense one (a token the file
  rejects, or one that changes the config, is known).

`--verbose` (or AMA_JAX_VERBOSE=1, or `--verbosity=1`) adds the traceback.
"""
import os
import pathlib
import sys
import sysconfig
import traceback
from typing import Any, Iterator, Optional

# The module behind ml_collections.config_flags (its parser class).
from ml_collections.config_flags import config_flags

from ama_jax import errors

_PROBE = '__ama_jax_unknown_token__'
_EXAMPLE = 'configs/fmnist_mnist.py:runlocal'


def _chain(error: BaseException) -> Iterator[BaseException]:
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _library_roots() -> tuple[str, ...]:
  paths = sysconfig.get_paths()
  return tuple(os.path.realpath(paths[k]) for k in ('stdlib', 'purelib',
                                                    'platlib') if k in paths)


def _own_code(filename: str) -> bool:
  """Whether a frame's file is the project's (or the user's), not a
  library's nor Python's."""
  if not filename or filename.startswith('<'):
    return False
  return not os.path.realpath(filename).startswith(_library_roots())


def _parse_frame(error: BaseException):
  """(frame, exception) of ml_collections' config-file parse in the chain."""
  parse = config_flags.ConfigFileFlagParser.parse.__code__
  for e in _chain(error):
    tb = e.__traceback__
    while tb is not None:
      if tb.tb_frame.f_code is parse:
        return tb.tb_frame, e
      tb = tb.tb_next
  return None, None


def _frames_after(error: BaseException, frame) -> list[traceback.FrameSummary]:
  """The frames of `error`'s traceback below `frame` (where it was raised)."""
  tb, below = error.__traceback__, False
  found = []
  while tb is not None:
    if below:
      found.append(traceback.FrameSummary(tb.tb_frame.f_code.co_filename,
                                          tb.tb_lineno,
                                          tb.tb_frame.f_code.co_name))
    below = below or tb.tb_frame is frame
    tb = tb.tb_next
  return found


def _short(path: str) -> str:
  """A path relative to the working directory when inside it."""
  try:
    return str(pathlib.Path(path).resolve().relative_to(pathlib.Path.cwd()))
  except ValueError:
    return path


def _raised(e: BaseException) -> str:
  return f'{type(e).__name__}: {errors.one_line(e)}'


def load_failure(error: BaseException) -> Optional[str]:
  """The one line for an exception of absl's parse that a config file's
  loading raised (None: the exception has another origin)."""
  frame, _ = _parse_frame(error)
  if frame is None:
    return None
  path = str(frame.f_locals.get('path', ''))
  name = getattr(frame.f_locals.get('self'), 'name', 'config')
  file, _, arg = path.partition(':')
  flag = f'--{name}={path}'
  original = list(_chain(error))[-1]
  if not os.path.isfile(file) or 'Failed loading config file' in str(
      original):
    return _unreadable(name, path, original)
  if isinstance(original, SyntaxError) and original.filename:
    text = (original.text or '').strip()
    return (f'{flag}: {_short(original.filename)}, line {original.lineno}: '
            f'{type(original).__name__}: {original.msg}'
            + (f' ({text})' if text else '') + '; correct that line.')
  frames = _frames_after(original, frame)
  own = [f for f in frames if _own_code(f.filename)]
  if not own:  # Raised by ml_collections' call itself.
    if isinstance(original, AttributeError) and 'get_config' in str(original):
      return (f'{flag}: {_short(file)} defines no get_config(); a config '
              'file defines get_config(arg=None) returning an '
              'ml_collections.ConfigDict, as configs/default.py does.')
    if isinstance(original, TypeError) and 'get_config()' in str(original):
      if arg:
        return (f'{flag}: get_config() of {_short(file)} takes no argument '
                f'({_raised(original)}); drop \':{arg}\'.')
      return (f'{flag}: get_config() of {_short(file)} needs an argument '
              f'({_raised(original)}); add \':<arg>\' to the path (see the '
              'file\'s docstring).')
    return f'{flag}: loading {_short(file)} failed: {_raised(original)}.'
  where = own[-1]
  importing = not any(f.name == 'get_config' for f in own)
  at = f'{_short(where.filename)}, line {where.lineno}'
  if importing:
    return (f'{flag}: {at}: {_raised(original)} (raised while importing '
            f'{_short(file)}); fix the file (--verbose shows the '
            'traceback).')
  fix = (f'check \':{arg}\' (the file\'s docstring lists its arguments)'
         if arg else 'fix the file')
  call = f'get_config({arg!r})' if arg else 'get_config()'
  return (f'{flag}: {at}, in {where.name}: {_raised(original)} (raised by '
          f'{call}); {fix}; --verbose shows the traceback.')


def original_error(error: BaseException) -> BaseException:
  """The exception a config file raised, for the --verbose traceback."""
  return list(_chain(error))[-1]


def _flag_value(name: str, argv: list[str]) -> Optional[str]:
  """The last value of `--name` on the command line."""
  found = None
  for i, a in enumerate(argv):
    if a.startswith(f'--{name}='):
      found = a.split('=', 1)[1]
    elif a == f'--{name}' and i + 1 < len(argv):
      found = argv[i + 1]
  return found


def _unreadable(name: str, path: str, error: BaseException) -> str:
  """The line for a config file that is missing or cannot be imported
  because something it opens is (ml_collections' "Failed loading")."""
  file = path.partition(':')[0]
  flag = f'--{name}={path}'
  if not file:
    return f'--{name}: give the path of a config file, e.g. {_EXAMPLE}.'
  if not os.path.exists(file):
    return (f'{flag}: no config file {file} (looked in {os.getcwd()}); '
            f'pass the path of a config file, e.g. --{name}={_EXAMPLE}.')
  if os.path.isdir(file):
    return (f'{flag}: {file} is a folder; pass the path of a config file '
            f'in it, e.g. --{name}={_EXAMPLE}.')
  raw = errors.one_line(error)
  if '[Errno' in raw:  # What the file's import could not open.
    raw = '[Errno' + raw.split('[Errno', 1)[1]
  return (f'{flag}: importing {_short(file)} failed: {raw}; fix the file '
          f'(python {_short(file)} shows where).')


def unavailable(name: str, value: Any, argv: list[str]) -> Optional[str]:
  """The one line for ml_collections' placeholder of a config file that
  could not be read (None: `value` is no such placeholder)."""
  if type(value).__name__ != '_ErrorConfig':
    return None
  return _unreadable(name, _flag_value(name, argv) or '',
                     object.__getattribute__(value, '_error'))


def _config_flags(flag_values) -> Iterator[tuple[str, Any]]:
  for name in flag_values:
    flag = flag_values[name]
    if config_flags.is_config_flag(flag) and isinstance(
        getattr(flag, 'parser', None), config_flags.ConfigFileFlagParser):
      yield name, flag


def _as_dict(config: Any) -> Any:
  return config.to_dict() if hasattr(config, 'to_dict') else config


def unknown_tokens(get_config, arg: str) -> list[str]:
  """The `:arg` tokens (comma-separated) that `get_config` ignores."""
  tokens = [t.strip() for t in arg.split(',')]
  base = _as_dict(get_config(arg))
  unknown = []
  for i, token in enumerate(tokens):
    if not token or tokens.count(token) > 1:
      continue
    probe = ','.join(tokens[:i] + [_PROBE] + tokens[i + 1:])
    try:
      if _as_dict(get_config(probe)) == base:
        unknown.append(token)
    except Exception:  # pylint: disable=broad-except
      continue  # The file reads (and rejects) tokens: this one is known.
  return unknown


def _known_tokens(module: Any) -> tuple[str, ...]:
  for holder in (module, getattr(module, 'default', None)):
    tokens = getattr(holder, 'FLAG_TOKENS', None)
    if tokens:
      return tuple(tokens)
  return ()


def returned_none(flag_values, argv: list[str]) -> Optional[str]:
  """After a failed parse: the line for a config file whose get_config
  returned None (absl and ml_collections then fail obscurely)."""
  for name, flag in _config_flags(flag_values):
    path = _flag_value(name, argv)
    module = sys.modules.get(f'{flag.parser.name}_config')
    if path is None or not hasattr(module, 'get_config'):
      continue
    _, _, arg = path.partition(':')
    try:
      config = module.get_config(*([arg] if arg else []))
    except Exception:  # pylint: disable=broad-except
      continue
    if config is None:
      return (f'--{name}={path}: get_config() of '
              f'{_short(path.partition(":")[0])} returned None; it must '
              'return an ml_collections.ConfigDict.')
  return None


def check_loaded(flag_values) -> Optional[str]:
  """After the parse: the one line for a config file whose get_config
  returned None or that ignores a token of its `:arg`; None if all is well.
  """
  for name, flag in _config_flags(flag_values):
    if not flag.present:
      continue
    path = str(flag.config_filename)
    file, _, arg = path.partition(':')
    if flag.value is None:
      return (f'--{name}={path}: get_config() of {_short(file)} returned '
              'None; it must return an ml_collections.ConfigDict.')
    module = sys.modules.get(f'{flag.parser.name}_config')
    get_config = getattr(module, 'get_config', None)
    if not arg.strip() or get_config is None:
      continue
    try:
      unknown = unknown_tokens(get_config, arg)
    except Exception:  # pylint: disable=broad-except
      continue  # It loaded once; leave its other behaviour alone.
    if unknown:
      known = _known_tokens(module)
      return (f'--{name}={path}: {_short(file)} does not know the argument '
              f'{unknown[0]!r} (its config is the same without it); '
              + (f'its arguments include {", ".join(known)}; ' if known
                 else '')
              + 'see the file\'s docstring for the others.')
  return None
