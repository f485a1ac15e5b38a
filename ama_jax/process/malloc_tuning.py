"""glibc malloc settings that stop XLA:CPU from page-faulting every step.

XLA:CPU allocates a call's temporaries as one large buffer (~2.6 GB for the
cifar training step at batch 64, ~0.8 GB for mnist at batch 256) and frees
it when the call ends. With glibc's defaults that buffer is a fresh mmap on
every call, and every page of it faults again (~200k-1.3M minor faults per
step on the 2-core dev machine). `tune()` keeps such buffers on the heap
(one arena, no mmap); how much freed memory the heap keeps is set by the
`AMA_JAX_MALLOC` environment variable:

- `fast` (default): never return freed heap memory to the system, so a
  step reuses the pages of the one before and takes no page faults. The
  heap settles at a few times a step's temporaries: cifar batch 64 went from
  3.7 GB to 8.6 GB resident over its first 18 steps, then stayed there for
  the next 22 (0 faults, 6.5-6.9 s per step against ~8 s with `trim`).
- `trim`: return the heap top above 1 GB to the system after each call;
  lower resident memory (3.7 GB for the same run), but the next call
  re-faults what was returned.
- `off`: leave glibc's defaults.

Call `tune()` once, before JAX runs its first computation; it is a no-op
where glibc is absent.
"""
import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# glibc stores the threshold as size_t: -1 is "never trim".
_TRIM = {'fast': -1, 'trim': 2**30}
ENV = 'AMA_JAX_MALLOC'


def tune() -> bool:
  """Applies the settings; returns whether glibc accepted all of them."""
  mode = os.environ.get(ENV, 'fast')
  if mode == 'off':
    return False
  if mode not in _TRIM:
    raise ValueError(
        f'{ENV}={mode!r} is not a malloc setting; use one of '
        f"{sorted(_TRIM) + ['off']} (see ama_jax/process/malloc_tuning.py).")
  name = ctypes.util.find_library('c')
  try:
    libc = ctypes.CDLL(name or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  return all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _TRIM[mode])))
