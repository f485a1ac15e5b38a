"""The training step's static (compile-time) settings, read from the config.

`StepSettings` holds what `train.train_step` takes from `config.loss`,
`config.sampling`, `config.train` and `config.optim`, and the table of which
rows of each device's batch become synthetic negatives.
"""
import dataclasses

import ml_collections
import numpy as np

from ama_jax.training import sampling


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """Static (compile-time) settings of `train_step`, taken from the config in
  one place: the step reads the `loss` and `sampling` fields of
  `configs/default.py` by their config names, so a new setting is added to
  the config only. The schedule is data (`schedules.Schedule`).
  """
  local_batch: int
  num_devices: int
  n_critic: int
  ema_decay: float  # 0 = no moving average of the weights.
  loss: ml_collections.FrozenConfigDict  # config.loss
  sampling: ml_collections.FrozenConfigDict  # config.sampling

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, *, local_batch: int,
                  num_devices: int = 1) -> 'StepSettings':
    return cls(local_batch=local_batch, num_devices=num_devices,
               n_critic=config.train.n_critic,
               ema_decay=float(config.optim.get('ema_decay') or 0.0),
               loss=ml_collections.FrozenConfigDict(config.loss),
               sampling=ml_collections.FrozenConfigDict(config.sampling))

  @property
  def global_batch(self) -> int:
    return self.local_batch * self.num_devices

  @property
  def negative_slots(self) -> tuple[np.ndarray, np.ndarray]:
    """([devices, k] local rows, [devices, k] valid) of synthetic negatives.

    `sampling.negative_mask` marks round(fraction x global batch) rows of
    the global batch, evenly spread; device q holds global rows q b ...
    (q + 1) b - 1, so it gets floor or ceil of its share. Every device works
    on k = the largest share (a static shape); a device with fewer negatives
    pads its slots with one of its normal rows, marked invalid (its image
    and weight stay as they are).
    """
    b, d = self.local_batch, self.num_devices
    if self.sampling.style == 'none' or self.sampling.fraction <= 0:
      return np.zeros((d, 0), np.int32), np.zeros((d, 0), bool)
    mask = sampling.negative_mask(np.arange(b * d), b * d,
                                  self.sampling.fraction).reshape(d, b)
    k = int(mask.sum(axis=1).max())
    rows = np.zeros((d, k), np.int32)
    valid = np.zeros((d, k), bool)
    for q in range(d):
      own = np.flatnonzero(mask[q])
      spare = np.flatnonzero(~mask[q])
      rows[q] = np.concatenate(
          [own, np.full(k - len(own), spare[0] if len(spare) else 0)])
      valid[q, :len(own)] = True
    return rows, valid
