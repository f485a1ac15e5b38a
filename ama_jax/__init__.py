"""AMA anomaly detection in JAX: `ama_jax.AMADetector` (`ama_jax.api`).

The detector is imported on first use, so that `import ama_jax` stays
light (no JAX).
"""
from typing import Any

__all__ = ['AMADetector']


def __getattr__(name: str) -> Any:
  if name == 'AMADetector':
    from ama_jax import api  # pylint: disable=g-import-not-at-top
    return api.AMADetector
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
