"""The set-up of a training run: its data, plan, state, compiled step.

`set_up` reads the protocol splits (`input_pipeline`), splits the global
batch over the devices (`run_plan`), creates or resumes the training state
(a checkpoint's leaves come back to host memory, `host_target`), builds the
compiled training call and puts the training set on the devices once; the
result is a `Run`, which the training loop (`loop`) and its phases share.
"""
import contextlib
import dataclasses
import pathlib
from typing import Any, Optional

import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from ama_jax.checkpoints import checkpointing
from ama_jax.config import config_checks
from ama_jax.data import input_pipeline
from ama_jax import errors
from ama_jax.models import nets
from ama_jax.process import stops
from ama_jax.reporting import console
from ama_jax.reporting import json_safe
from ama_jax.reporting import metric_writers
from ama_jax.training import placement
from ama_jax.training import run_plan
from ama_jax.training import schedules
from ama_jax.training import step_settings
from ama_jax.training import train
from ama_jax.training import train_state

PRNGKey = jax.Array


def _load_data(config: ml_collections.ConfigDict
               ) -> input_pipeline.ProtocolData:
  """The protocol splits, read by every process (process 0 first).

  Process 0 prepares a missing TFDS copy once, before the others read the
  (shared) data directory.
  """
  several = jax.process_count() > 1
  if several and jax.process_index() != 0:
    multihost_utils.sync_global_devices('ama_jax: data prepared')
  # Its ValueErrors are bad settings or data (documented): one line each.
  with errors.reraise_as(errors.DataError, ValueError):
    data = input_pipeline.load_protocol(
        config.data, config.seed,
        input_size=nets.input_size(config.model.arch))
  if several and jax.process_index() == 0:
    multihost_utils.sync_global_devices('ama_jax: data prepared')
  return data


def host_target(tree: Any) -> Any:
  """A restore target whose leaves come back as numpy arrays.

  Every process restores the whole state into host memory and places it on
  its devices itself (`placement.replicate`).
  """
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype),
                      tree)



@dataclasses.dataclass
class Run:
  """What a run sets up once (`set_up`) and its phases share."""
  config: ml_collections.ConfigDict
  workdir: pathlib.Path
  data: input_pipeline.ProtocolData
  devices: list  # Of every process: the step's axis.
  local_devices: list
  local_batch: int
  steps_per_epoch: int
  writer: Any
  report_progress: Any
  history: metric_writers.History
  ckpts: checkpointing.CheckpointManagers
  eval_models: tuple  # (autoencoder, critic) without a pmap axis.
  p_step: Any  # The compiled training call (`train.make_p_train_step`).
  train_set: placement.TrainData
  train_rng: PRNGKey
  data_rng: PRNGKey

  @property
  def num_epochs(self) -> int:
    return self.config.train.num_epochs

  @property
  def is_chief(self) -> bool:
    return jax.process_index() == 0


def set_up(config: ml_collections.ConfigDict, workdir: pathlib.Path,
           cleanup: Optional[contextlib.ExitStack] = None
           ) -> tuple[Run, train_state.AMAState, Optional[dict]]:
  """Data, plan, state (resumed if the workdir holds one), compiled step.

  `cleanup`, if given, closes the checkpoint managers when the run ends,
  also on error.

  Returns:
    (run, the replicated state, the meta of the checkpoint resumed from).
  """
  workdir.mkdir(parents=True, exist_ok=True)
  if cleanup is not None:  # <workdir>/log.txt, process 0.
    cleanup.enter_context(console.log_file(workdir, jax.process_index() == 0))
  data = _load_data(config)
  image_shape = tuple(data.image_shape)
  devices, local_devices = placement.mesh_devices(), jax.local_devices()
  num_train = len(data.train.images)
  local_batch, steps_per_epoch = run_plan.plan(
      config, num_train, len(devices), jax.process_count())
  config_checks.check_plan(config, steps_per_epoch,
                           int(np.sum(data.train.labels == 0)))
  total_steps = steps_per_epoch * config.train.num_epochs
  is_chief = jax.process_index() == 0
  writer, report_progress = metric_writers.create_writer(workdir, is_chief,
                                                         total_steps)
  writer.write_hparams(json_safe.flat_hparams(config))
  console.plan(config, local_batch, len(devices), len(local_devices),
               num_train, steps_per_epoch)

  init_rng, train_rng, data_rng = jax.random.split(
      jax.random.key(config.seed), 3)
  state = train_state.create_train_state(init_rng, config, image_shape)
  ckpts = checkpointing.CheckpointManagers(workdir)
  if cleanup is not None:
    cleanup.enter_context(ckpts)
  restored = ckpts.restore_latest(host_target(state))
  meta = None
  if restored is not None:
    state, meta = restored
    if meta.get('config') is not None:
      config_checks.check_resume(meta['config'], config, workdir,
                                 int(state.step))
    console.say('Resumed from step %d of %s.', int(state.step), workdir)
  state = placement.replicate(state, devices)
  history = metric_writers.History(
      workdir, is_chief, int(jax.device_get(state.step)),
      keep_val_at_resume=not stops.validation_pending(config, meta,
                                                      steps_per_epoch))

  ae_model, critic_model = nets.create_models(
      config.model, image_shape, axis_name=placement.AXIS)
  settings = step_settings.StepSettings.from_config(
      config, local_batch=local_batch, num_devices=len(devices))
  # One compiled call for the whole run: the schedule is data.
  p_step = train.make_p_train_step(
      ae_model, critic_model, settings,
      num_steps=max(1, config.train.steps_per_call), devices=devices)
  # The training set goes to the devices once; each epoch sends row indices.
  schedule = schedules.make_schedule(config, steps_per_epoch, total_steps)
  train_set = placement.put_train_set(data.train.images, data.train.labels,
                                  steps_per_epoch, schedule, devices)
  run = Run(config=config, workdir=workdir, data=data, devices=devices,
            local_devices=local_devices, local_batch=local_batch,
            steps_per_epoch=steps_per_epoch, writer=writer,
            report_progress=report_progress, history=history, ckpts=ckpts,
            eval_models=nets.create_models(config.model, image_shape,
                                              inference=True),
            p_step=p_step, train_set=train_set,
            train_rng=placement.replicate(train_rng, devices),
            data_rng=data_rng)
  return run, state, meta
