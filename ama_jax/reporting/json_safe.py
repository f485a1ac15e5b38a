"""JSON-safe metadata and configs (checkpoint meta, metrics, reports).

`to_json` turns what a run records (numpy and jax numbers and arrays,
tuples, ConfigDicts) into plain JSON types; `config_to_dict` and
`config_from_dict` carry an experiment config through JSON and back (lists
become tuples again); `flat_hparams` flattens a config to the scalar
`{'model.width': 64, ...}` that TensorBoard's hparams take.
"""
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np


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
