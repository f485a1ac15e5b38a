"""Learning-rate and atypical-selection schedules, as data for the step.

Everything that changes with the step number (the learning rate, whether
synthetic negatives are on and their weight lambda_neg) is a function of the
step and of a few numbers held in `Schedule`, a pytree of arrays that the
training step takes as an argument. So a run compiles its step once, however
its schedule is set, and the same compiled step serves runs whose schedules
differ only in those numbers.

Learning rate (multiplied into every Adam update, both players):

  lr(t) = optim.lr * warmup(t) * decays(t) * cosine(t)
  warmup(t) = min(1, (t + 1) / optim.warmup_steps)      (1 without warm-up)
  decays(t) = optim.decay ** #{boundaries <= t}           ('step' schedule)
  cosine(t) = f + (1 - f) (1 + cos(pi * u)) / 2,  u = (t - t0) / (T - t0)
              clipped to [0, 1], f = optim.final_lr_fraction ('cosine')

The paper's schedule ('step') puts the boundaries at 30/60/90% of training
(MultiStepLR at epochs 30/60/90 of 100); `optim.decay_at_epochs` gives them
in epochs instead, which keeps them where they are when the run is shorter.

Negatives (eq. 5): weight 0 before the start of atypical selection, then
lambda_neg, reached linearly over `sampling.ramp_fraction` of the run's
steps (0: at once, the paper). The start is `sampling.start_step` if set,
else `sampling.start_fraction` of the run's steps if set, else
`sampling.start_epoch` epochs (the paper: 10), and never before
`sampling.earliest_start_epoch` epochs when that is set (the tuned recipe:
2, so a run of 1 or 2 epochs has no negatives).
"""
import math
from typing import Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

SCHEDULES = ('step', 'constant', 'cosine')
_NEVER = np.iinfo(np.int32).max


@flax.struct.dataclass
class Schedule:
  """The numbers the step's schedules read (all arrays, no static field)."""
  lr: jax.Array  # Base learning rate.
  warmup_steps: jax.Array  # int32; 0 = no warm-up.
  decay: jax.Array  # Factor per boundary ('step').
  boundaries: jax.Array  # int32 [K] steps; unused entries _NEVER.
  cosine: jax.Array  # 1.0 for 'cosine', else 0.0.
  cosine_start: jax.Array  # int32, t0 (after warm-up).
  total_steps: jax.Array  # int32, T.
  final_lr_fraction: jax.Array  # f.
  negatives_start: jax.Array  # int32 first step with negatives; _NEVER: off.
  ramp_steps: jax.Array  # int32; 0 = full weight at once.
  lambda_neg: jax.Array  # Full weight of the synthetic negatives.


def negatives_start_step(config: ml_collections.ConfigDict,
                         steps_per_epoch: int) -> Optional[int]:
  """First step with synthetic negatives; None when atypical selection is off."""
  sampling = config.sampling
  if sampling.style == 'none' or sampling.fraction <= 0:
    return None
  if sampling.get('start_step') is not None:
    start = int(sampling.start_step)
  elif sampling.get('start_fraction') is not None:
    start = int(round(sampling.start_fraction * total_steps(config,
                                                            steps_per_epoch)))
  else:
    start = int(sampling.start_epoch) * steps_per_epoch
  earliest = sampling.get('earliest_start_epoch')
  if earliest is not None:  # At or after the run's end: no negatives.
    start = max(start, int(earliest) * steps_per_epoch)
  return start


def total_steps(config: ml_collections.ConfigDict,
                steps_per_epoch: int) -> int:
  return steps_per_epoch * config.train.num_epochs


def decay_boundaries(config: ml_collections.ConfigDict, steps_per_epoch: int,
                     total_steps: int) -> list[int]:
  """Steps at which the 'step' schedule multiplies the rate by optim.decay."""
  optim = config.optim
  if optim.schedule != 'step':
    return []
  if optim.get('decay_at_epochs') is not None:
    return sorted(int(round(e * steps_per_epoch))
                  for e in optim.decay_at_epochs)
  return sorted(max(1, int(round(f * total_steps))) for f in optim.decay_at)


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                  total_steps: int) -> Schedule:
  """The `Schedule` of a run of `total_steps` steps (host numpy arrays)."""
  optim, sampling = config.optim, config.sampling
  if optim.schedule not in SCHEDULES:
    raise ValueError(f'optim.schedule={optim.schedule!r}; choose one of '
                     f'{SCHEDULES}.')
  boundaries = decay_boundaries(config, steps_per_epoch, total_steps)
  # A fixed length (padded with _NEVER) keeps the step's shapes the same.
  padded = np.full(max(4, len(boundaries)), _NEVER, np.int32)
  padded[:len(boundaries)] = boundaries
  start = negatives_start_step(config, steps_per_epoch)
  warmup = int(optim.get('warmup_steps') or 0)
  return Schedule(
      lr=np.float32(optim.lr), warmup_steps=np.int32(warmup),
      decay=np.float32(optim.decay), boundaries=padded,
      cosine=np.float32(optim.schedule == 'cosine'),
      cosine_start=np.int32(warmup), total_steps=np.int32(total_steps),
      final_lr_fraction=np.float32(optim.get('final_lr_fraction') or 0.0),
      negatives_start=np.int32(_NEVER if start is None else start),
      ramp_steps=np.int32(round((sampling.get('ramp_fraction') or 0.0)
                                * total_steps)),
      lambda_neg=np.float32(config.loss.lambda_neg))


def learning_rate(schedule: Schedule, step: jax.Array) -> jax.Array:
  """lr(step) (see the module docstring); works on host and device."""
  s = schedule
  t = jnp.asarray(step, jnp.int32)
  warmup = jnp.where(s.warmup_steps > 0,
                     jnp.minimum(1.0, (t + 1) / jnp.maximum(s.warmup_steps, 1)),
                     1.0)
  decays = s.decay ** jnp.sum(t >= s.boundaries).astype(jnp.float32)
  span = jnp.maximum(s.total_steps - s.cosine_start, 1)
  u = jnp.clip((t - s.cosine_start) / span, 0.0, 1.0)
  f = s.final_lr_fraction
  cosine = f + (1 - f) * 0.5 * (1 + jnp.cos(math.pi * u))
  cosine = jnp.where(s.cosine > 0, cosine, 1.0)
  return (s.lr * warmup * decays * cosine).astype(jnp.float32)


def negative_weight(schedule: Schedule, step: jax.Array) -> jax.Array:
  """Weight lambda_neg of the synthetic negatives at `step` (0: none)."""
  s = schedule
  t = jnp.asarray(step, jnp.int32)
  done = (t - s.negatives_start + 1).astype(jnp.float32)
  ramp = jnp.where(s.ramp_steps > 0,
                   jnp.clip(done / jnp.maximum(s.ramp_steps, 1), 0.0, 1.0),
                   1.0)
  return jnp.where(t >= s.negatives_start, s.lambda_neg * ramp, 0.0)
