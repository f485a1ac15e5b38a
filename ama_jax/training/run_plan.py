"""The plan of a run: how the batch splits and when periodic work is due.

`plan` splits the global batch over the devices and counts the steps of an
epoch; `itstime` says whether something done every few epochs (validation)
is due after an epoch. The training loop (`loop`) and the resume logic of
`stops` share them.
"""
from ama_jax import errors


def plan(config, num_train: int, num_devices: int,
         num_processes: int = 1) -> tuple[int, int]:
  """(per-device batch, steps per epoch), with clear errors.

  Args:
    config: the experiment config (train.batch_size is the global batch).
    num_train: training images.
    num_devices: devices of all processes together.
    num_processes: processes (for the error message).
  """
  batch = config.train.batch_size
  if batch % num_devices:
    below = batch // num_devices * num_devices
    fits = ' or '.join(str(b) for b in (below, below + num_devices) if b)
    raise errors.ConfigError(
        f'train.batch_size={batch} (the global batch) does not divide evenly '
        f'over {num_devices} devices ({num_processes} process(es) x '
        f'{num_devices // num_processes} device(s) each); set '
        f'--config.train.batch_size to a multiple of {num_devices}, e.g. '
        f'{fits}.')
  steps = num_train // batch  # drop_last, as the official code.
  if steps == 0:
    raise errors.ConfigError(
        f'train.batch_size={batch} is larger than the training set '
        f'({num_train} images); lower it.')
  if config.train.max_steps_per_epoch:
    steps = min(steps, config.train.max_steps_per_epoch)
  return batch // num_devices, steps


def itstime(epoch: int, *, every: int, first: int, last: int) -> bool:
  """Whether something done every `every` epochs from `first` on (and at
  the `last` epoch) is due after 1-based `epoch`."""
  return epoch >= first and (epoch % every == 0 or epoch == last)
