"""Where a run's arrays live: the devices of the training step, the training
set on every device, and each epoch's rows.

The training step is pmapped over `mesh_devices()` (every process's devices,
axis `AXIS`). The training set is put on every device once per run
(`put_train_set`, as uint8 where that is exact); each epoch uploads only the
row indices each device's steps take (`epoch_data`), drawn from the config
seed identically on every process (`epoch_order`), and the step gathers its
batch by those indices inside compiled code.
"""
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ama_jax.training import schedules

AXIS = 'batch'  # The pmapped axis of the training step and of scoring.
PRNGKey = jax.Array


@flax.struct.dataclass
class TrainData:
  """The training set on every device, and each device's rows of one epoch.

  Leading axis of every field: the local devices. `images` and `labels` are
  the whole training set, the same on every device (`put_train_set`, once
  per run); `rows` [steps_per_epoch * local_batch] are the indices of the
  images the device's steps take in the current epoch (`epoch_data`), step
  i of the epoch taking rows[i * local_batch:(i + 1) * local_batch].
  """
  # [..., N, H, W, C]: uint8 pixel values when the images are exactly
  # value / 127.5 - 1 (a quarter of the memory; `pixels_to_float` in the
  # step), else float32 in [-1, 1].
  images: jax.Array
  labels: jax.Array  # [..., N] int32: 0 normal, 1 labelled anomaly.
  rows: jax.Array  # [..., steps_per_epoch * local_batch] int32.
  steps_per_epoch: jax.Array  # [...] int32.
  schedule: schedules.Schedule  # Every leaf [...].


# float32 of each uint8 pixel value as the input pipeline computes it
# (v / 127.5 - 1 in numpy float32); a table lookup keeps it bit-identical
# (XLA would compute the division as a multiplication).
_PIXEL_VALUES = np.arange(256, dtype=np.float32) / 127.5 - 1.0


def pixels_to_float(images: jax.Array) -> jax.Array:
  """uint8 pixel values -> float32 in [-1, 1]; float32 passes through."""
  if images.dtype != jnp.uint8:
    return images
  return jnp.asarray(_PIXEL_VALUES)[images.astype(jnp.int32)]


def _as_pixels(images: np.ndarray) -> np.ndarray:
  """uint8 pixel values of float images in [-1, 1] when they are exactly
  value / 127.5 - 1 (the input pipeline's conversion), else the images."""
  images = np.asarray(images, np.float32)
  pixels = np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
  if np.array_equal(_PIXEL_VALUES[pixels], images):
    return pixels
  return images


def mesh_devices() -> list[jax.Device]:
  """Every process's devices, process by process: the training step's axis.

  The same list on every process (pmap's own default order); a device's
  position in it is its `lax.axis_index(AXIS)`. One process: the local
  devices.
  """
  return [d for p in range(jax.process_count())
          for d in jax.local_devices(process_index=p)]


def _local(devices) -> list[jax.Device]:
  """The devices of this process among `devices`, in their order."""
  return [d for d in devices if d.process_index == jax.process_index()]


def replicate(tree: Any, devices=None) -> Any:
  """Places a pytree on this process's devices as the pmapped step returns it.

  The step's unreplicated outputs carry a replicated `NamedSharding` over the
  local devices; inputs placed the same way keep the step from compiling a
  second time (and from being copied).
  """
  return jax.device_put(tree, _local_sharding(
      _local(devices or mesh_devices()), jax.sharding.PartitionSpec()))


@functools.partial(jax.jit, static_argnums=2)
def _permutation(data_rng: PRNGKey, epoch: int, num_train: int) -> jax.Array:
  return jax.random.permutation(jax.random.fold_in(data_rng, epoch),
                                num_train)


def epoch_order(data_rng: PRNGKey, epoch: int, num_train: int) -> np.ndarray:
  """The order of the training set in `epoch` (a permutation of num_train).

  A function of the key and the epoch only, so every process draws the same
  one.
  """
  return np.asarray(_permutation(data_rng, epoch, num_train))


def put_train_set(images: np.ndarray, labels: np.ndarray,
                  steps_per_epoch: int, schedule: schedules.Schedule,
                  devices=None) -> TrainData:
  """The training set and the run's schedule on each of this process's
  devices (once per run). Images held as uint8 where that is exact.

  Args:
    images: [N, H, W, C] the whole training set (host memory, the same on
      every process).
    labels: [N] int labels (0 normal, 1 labelled anomaly).
    steps_per_epoch: steps of one epoch.
    schedule: the run's `schedules.Schedule`.
    devices: the training step's devices (default `mesh_devices()`).

  Returns:
    TrainData with a leading local-device axis and no rows yet (`rows` is
    empty): give it to `epoch_data`.
  """
  devices = list(devices or mesh_devices())
  local = _local(devices)
  sharding = _local_sharding(local)

  def put(x) -> jax.Array:
    x = np.asarray(x)
    return jax.make_array_from_single_device_arrays(
        (len(local), *x.shape), sharding,
        [jax.device_put(x[None], d) for d in local])

  return TrainData(
      images=put(_as_pixels(images)),
      labels=put(np.asarray(labels, np.int32)),
      rows=put(np.zeros(0, np.int32)),
      steps_per_epoch=put(np.int32(steps_per_epoch)),
      schedule=jax.tree.map(put, schedule))


def epoch_data(train_set: TrainData, order: np.ndarray, local_batch: int,
               steps_per_epoch: int, devices=None) -> TrainData:
  """`train_set` with each of this process's devices' rows of one epoch.

  Step i of the epoch takes the global batch order[i * B: (i + 1) * B]
  (B = number of devices x local batch b, the remainder dropped); the device
  at position q of `devices` takes its rows q * b ... (q + 1) * b - 1. Only
  those row indices are uploaded (the images stay where `put_train_set` put
  them), and the batch a device sees depends on its position alone, not on
  how the devices are split over processes.

  Args:
    train_set: from `put_train_set` with the same devices.
    order: `epoch_order` of the epoch.
    local_batch: rows per device and step.
    steps_per_epoch: steps of the epoch (as given to `put_train_set`).
    devices: the training step's devices (default `mesh_devices()`).

  Returns:
    TrainData with a leading local-device axis, as `make_p_train_step`'s
    function takes it.
  """
  devices = list(devices or mesh_devices())
  b, steps = local_batch, steps_per_epoch
  used = steps * b * len(devices)
  if len(order) < used:
    raise ValueError(f'An epoch of {steps} steps x {b * len(devices)} images '
                     f'needs {used} training images; the order has '
                     f'{len(order)}.')
  num_train = train_set.images.shape[1]
  if np.max(order[:used]) >= num_train:
    raise ValueError(f'The order indexes row {np.max(order[:used])} but the '
                     f'training set on the devices has {num_train} rows: '
                     'pass the put_train_set of the same images.')
  local = _local(devices)
  positions = [devices.index(d) for d in local]
  rows = np.asarray(order[:used], np.int32).reshape(steps, len(devices), b)
  rows = rows[:, positions].transpose(1, 0, 2).reshape(len(local), steps * b)
  return train_set.replace(
      rows=jax.device_put(rows, _local_sharding(local)))


def _local_sharding(
    local: list[jax.Device],
    spec: jax.sharding.PartitionSpec = jax.sharding.PartitionSpec(AXIS),
) -> jax.sharding.NamedSharding:
  """`spec` over a mesh of this process's devices.

  The default splits the leading axis over them, as pmap takes its
  per-device inputs; `replicate` passes an empty spec.
  """
  return jax.sharding.NamedSharding(
      jax.sharding.Mesh(np.array(local), (AXIS,)), spec)
