"""Config rule kinds (Int, Choice, ...) and the engine that applies them.

A room's `config_rules.py` declares `FIELDS` (dotted field path -> `Rule`)
and `COMBINATIONS` (`Combination`s: rules on several fields or the
devices) for the fields it reads; `find_problems` applies such tables to a
config and collects every problem as one message per problem.
"""
import dataclasses
import math
import numbers
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from absl import logging
import ml_collections
import numpy as np


# ----------------------------------------------------------------------------
# Field rules.
# ----------------------------------------------------------------------------
def is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _choices(choices) -> tuple:
  return tuple(choices() if callable(choices) else choices)


@dataclasses.dataclass(frozen=True)
class Rule:
  """Checks one field; `problem` returns None or what is allowed.

  A rule states its test (`accepts`) and what it allows (`allowed`, with
  `_or_none()` where it names None); `problem` handles None and the rest.
  A rule whose message depends on the value overrides `_problem` instead.
  `optional` is keyword-only, so a rule's own fields stay positional.
  """
  optional: bool = dataclasses.field(default=False, kw_only=True)

  def problem(self, value: Any) -> Optional[str]:
    if value is None:
      return None if self.optional else 'must be set (is None)'
    return self._problem(value)

  def _problem(self, value: Any) -> Optional[str]:
    return None if self.accepts(value) else self.allowed()

  def accepts(self, value: Any) -> bool:
    raise NotImplementedError

  def allowed(self) -> str:
    raise NotImplementedError

  def _or_none(self) -> str:
    return ' or None' if self.optional else ''


@dataclasses.dataclass(frozen=True)
class Int(Rule):
  """An integer in [min, max]."""
  min: Optional[int] = None
  max: Optional[int] = None

  def accepts(self, value):
    return (is_int(value) and (self.min is None or value >= self.min)
            and (self.max is None or value <= self.max))

  def allowed(self):
    if self.min is not None and self.max is not None:
      return (f'must be an integer in [{self.min}, {self.max}]'
              f'{self._or_none()}')
    if self.min is not None:
      return f'must be an integer >= {self.min}{self._or_none()}'
    return f'must be an integer{self._or_none()}'


@dataclasses.dataclass(frozen=True)
class Float(Rule):
  """A finite real number in an interval ([ or ( ends by `*_open`)."""
  min: Optional[float] = None
  max: Optional[float] = None
  min_open: bool = False
  max_open: bool = False

  def interval(self) -> str:
    if self.min is not None and self.max is not None:
      return (f'{"(" if self.min_open else "["}{self.min:g}, {self.max:g}'
              f'{")" if self.max_open else "]"}')
    if self.min is not None:
      return f'{">" if self.min_open else ">="} {self.min:g}'
    if self.max is not None:
      return f'{"<" if self.max_open else "<="} {self.max:g}'
    return ''

  def accepts(self, value):
    if not is_real(value) or not math.isfinite(value):
      return False
    if self.min is not None and (value < self.min or (
        self.min_open and value == self.min)):
      return False
    if self.max is not None and (value > self.max or (
        self.max_open and value == self.max)):
      return False
    return True

  def allowed(self):
    where = self.interval()
    if ',' in where:
      where = f' in {where}'
    elif where:
      where = f' {where}'
    return f'must be a finite number{where}{self._or_none()}'


@dataclasses.dataclass(frozen=True)
class Bool(Rule):
  """True or False."""

  def accepts(self, value):
    return isinstance(value, (bool, np.bool_))

  def allowed(self):
    return 'must be True or False'


@dataclasses.dataclass(frozen=True)
class Choice(Rule):
  """One of `choices` (a sequence, or a function returning one)."""
  choices: Any = ()

  def accepts(self, value):
    return ((isinstance(value, str) or is_int(value))
            and value in _choices(self.choices))

  def allowed(self):
    return ('must be one of '
            + ', '.join(repr(c) for c in _choices(self.choices))
            + self._or_none())


@dataclasses.dataclass(frozen=True)
class Text(Rule):
  """A non-empty string (a path, a name)."""

  def accepts(self, value):
    return isinstance(value, str) and bool(value.strip())

  def allowed(self):
    return f'must be a non-empty string{self._or_none()}'


def _increasing(value: Any, each: Float) -> bool:
  """A list or tuple of numbers that `each` accepts, strictly increasing."""
  return (isinstance(value, (list, tuple))
          and all(each.accepts(v) for v in value)
          and all(a < b for a, b in zip(value, value[1:])))


@dataclasses.dataclass(frozen=True)
class Fractions(Rule):
  """A strictly increasing sequence of numbers in (0, 1) (may be empty)."""

  def accepts(self, value):
    return _increasing(value, Float(0, 1, True, True))

  def allowed(self):
    return ('must be a tuple of increasing fractions in (0, 1), e.g. '
            '(0.3, 0.6, 0.9), or ()')


@dataclasses.dataclass(frozen=True)
class EpochPoints(Rule):
  """A strictly increasing sequence of epochs > 0 (may be fractional)."""

  def accepts(self, value):
    return _increasing(value, Float(0, min_open=True))

  def allowed(self):
    return ('must be a tuple of increasing epochs > 0, e.g. (30, 60, 90)'
            f'{self._or_none()}')


FRACTION = Float(0, 1, max_open=True)  # [0, 1)


# ----------------------------------------------------------------------------
# Combinations.
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Context:
  """What the checks know besides the config."""
  num_devices: int = 1  # Of every process: the global batch's divisor.
  num_processes: int = 1


@dataclasses.dataclass(frozen=True)
class Combination:
  """A rule on several fields; runs only if `fields` passed their rules."""
  fields: tuple[str, ...]
  check: Callable[[ml_collections.ConfigDict, Context], list[str]]


# ----------------------------------------------------------------------------
# The engine.
# ----------------------------------------------------------------------------
def leaf_fields(config: Mapping[str, Any] | ml_collections.ConfigDict,
                prefix: str = '') -> Iterator[tuple[str, Any]]:
  """(dotted path, value) of every non-dict field, placeholders as None."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  for key, value in config.items():
    if isinstance(value, dict):
      yield from leaf_fields(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def find_problems(config: ml_collections.ConfigDict, context: Context,
                  fields: Mapping[str, Rule],
                  combinations: Sequence[Combination]) -> list[str]:
  """Every problem of `config` under the rules `fields` and `combinations`,
  field rules first ([] if none)."""
  found, bad = [], set()
  for path, value in leaf_fields(config):
    rule = fields.get(path)
    if rule is None:
      logging.warning('Config field %s=%r has no validation rule (add one to '
                      'the FIELDS of ama_jax/<room>/config_rules.py, the '
                      'room that reads it).', path, value)
      continue
    problem = rule.problem(value)
    if problem:
      found.append(f'{path}={value!r}: {problem}')
      bad.add(path)
  present = {path for path, _ in leaf_fields(config)}
  for combination in combinations:
    if set(combination.fields) <= present and not bad & set(
        combination.fields):
      found += combination.check(config, context)
  return found
