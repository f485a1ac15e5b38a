"""The training program: `train_and_evaluate(config, workdir) -> AMAState`.

Phases: set up (`run_setup`: data, plan, state, resume, the compiled step)
-> for each epoch: train it, validate and keep the best checkpoint when it
is time -> wait for the checkpoints -> final evaluation of the best and last
states -> results.json and figures. Model selection uses the validation
split only; the test split is scored once, at the end. Every phase is timed;
the end of the run logs (and results.json keeps) the seconds of each and the
share of the wall time spent in training steps. A stop request (SIGTERM,
SIGINT, a preemption notice, `train.time_limit_s`: `stops`) ends the run at
the next step boundary with a checkpoint of it; a run resumed at the end of
an epoch whose validation was not done yet does it first. A write that fails
for want of space or permission ends the run in one line (`write_failures`).

Several processes (multi-host) run this same function: the training step is
one pmap over the devices of all of them (`placement.mesh_devices`), each
process putting the training set on its devices once and sending them only
their rows' indices each epoch (`placement.put_train_set`,
`placement.epoch_data`); validation and test images are scored in
per-process slices and gathered (`scoring.Scorer`), so every process sees
the same metrics and takes the same decisions (best checkpoint, halting,
errors).
All processes join checkpoint saves and restores (orbax writes from process
0); only process 0 writes metrics, figures, results.json and log.txt
(`console.log_file`).
"""
import collections
import contextlib
import pathlib
import time
from typing import Any, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from ama_jax.checkpoints import checkpoint_files
from ama_jax.config import config_checks
from ama_jax.reporting import console
from ama_jax import errors
from ama_jax.reporting import figures
from ama_jax.reporting import json_safe
from ama_jax.reporting import metric_writers
from ama_jax.training import placement
from ama_jax.reporting import report
from ama_jax.training import run_plan
from ama_jax.training import run_setup
from ama_jax.scoring import scoring
from ama_jax.process import stops
from ama_jax.training import train_state
from ama_jax.process import workdir_lock
from ama_jax.process import write_failures

NonFiniteLossError = errors.NonFiniteLossError  # Raised by the loop.




class PhaseTimer:
  """Wall seconds per named phase of the run."""

  def __init__(self):
    self.seconds: dict[str, float] = collections.defaultdict(float)

  @contextlib.contextmanager
  def __call__(self, name: str):
    t0 = time.time()
    try:
      yield
    finally:
      self.seconds[name] += time.time() - t0


def _finite(value) -> Optional[float]:
  """float(value), or None before the first validation (strict JSON)."""
  value = float(value)
  return value if np.isfinite(value) else None


class Trainer:
  """The training phases of a run and the state they advance."""

  def __init__(self, run: run_setup.Run, state: train_state.AMAState,
               meta: Optional[dict], timer: PhaseTimer,
               requests: Optional[stops.StopRequests] = None):
    self.run, self.state, self.timer = run, state, timer
    self.requests = requests or stops.StopRequests()
    self.step = int(jax.device_get(state.step))
    self.validated_step = (meta or {}).get('validated_step')
    # A resumed run keeps its last validation's calibration and AUROC, so
    # that the checkpoints it writes carry them as an unbroken run's would.
    self.calibration = scoring.Calibration.from_dict(meta or {})
    val = (meta or {}).get('val_auroc')
    self.val_auroc = -np.inf if val is None else val
    best = (meta or {}).get('best_val_auroc')
    self.best_val_auroc = -np.inf if best is None else best
    self.pending: list[tuple[int, dict]] = []  # Metrics not yet read.
    self.compiled = False
    self.steps_timed = 0
    self.last_meta: Optional[dict] = None  # Of the last save_latest.
    self.bar = console.training_bar(run, self.step)

  # -- training ---------------------------------------------------------
  def train_epoch(self, epoch: int) -> bool:
    """Trains epoch `epoch` (0-based) from the current step.

    Returns:
      False when the run halts (`train.halt_after_steps`) inside it.
    """
    run, config = self.run, self.run.config
    k = max(1, config.train.steps_per_call)
    epoch_end = (epoch + 1) * run.steps_per_epoch
    s0 = self.step
    with self.timer('training steps'):
      # This process's devices' rows of the epoch (the order is global).
      data = placement.epoch_data(
          run.train_set,
          placement.epoch_order(run.data_rng, epoch,
                                len(run.data.train.images)),
          run.local_batch, run.steps_per_epoch, run.devices)
      while self.step < epoch_end:
        n = min(k, epoch_end - self.step)
        self._call(data, n, k)
        self.step += n
        if self.step % config.log.every_steps < n or self.step == epoch_end:
          self.flush()
          # After the host sync: clu's steps/s and ETA then count executed
          # steps. Called every step, they counted dispatched ones (which
          # run ahead up to the next sync): "0.7 steps/s" then "0.0".
          run.report_progress(self.step)
          self.bar.show(self.step, f'epoch {epoch + 1}/{run.num_epochs}')
        # The last step is saved after its validation (with its calibration).
        if (self.step % config.log.checkpoint_every_steps < n
            and self.step < run.num_epochs * run.steps_per_epoch):
          self.save_latest(epoch)
        halt = config.train.halt_after_steps
        if halt and self.step >= halt:
          self.save_latest(epoch)
          run.ckpts.wait_until_finished()
          logging.info('Halting at step %d (train.halt_after_steps).',
                       self.step)
          return False
        stops.stop_if_due(self, epoch)
      jax.block_until_ready(self.state)
    self.steps_timed += self.step - s0
    return True

  def _call(self, data: placement.TrainData, n: int, k: int) -> None:
    """One compiled call of n <= k steps; the first one logs compile time."""
    t0 = time.time()
    args = (self.state, data, self.run.train_rng)
    self.state, metrics = self.run.p_step(
        *args, *((np.int32(n),) if k > 1 else ()))
    if not self.compiled:
      jax.block_until_ready(metrics)
      logging.info('Training step (%d step(s) per call) compiled and ran '
                   'once in %.1f s.', k, time.time() - t0)
      self.compiled = True
    self.pending.append((self.step + n, metrics))

  def flush(self) -> None:
    """Reads pending metrics (one host sync), checks finiteness, logs.

    Every step goes to history.jsonl, their mean to the metric writer
    (clu's TensorBoard summaries cost ~0.1 s per scalar under TF's eager
    mode; `log.every_steps=1` writes every step there too).
    """
    if not self.pending:
      return
    host = jax.device_get([m for _, m in self.pending])
    steps = [at for at, _ in self.pending]
    self.pending.clear()
    for at, m in zip(steps, host):
      if not bool(m['finite']):
        good = self.run.ckpts.latest_step()
        raise NonFiniteLossError(
            f'Non-finite loss between steps {steps[0]} and {self.step} '
            f'(first bad call ends at step {at}); ' + (
                f'the last good checkpoint, step {good} in '
                f'{self.run.workdir / "checkpoints"}, is intact'
                if good is not None else 'no checkpoint was saved before it')
            + '. Lower optim.lr or enable loss.lambda_gp / '
            'model.spectral_norm.')
    for at, m in zip(steps, host):
      self.run.history.append('train', at, {
          key: float(v) for key, v in m.items() if key != 'finite'})
    self.run.history.flush()
    metric_writers.write_scalars(
        self.run.writer, self.step, 'train',
        {key: float(np.mean([m[key] for m in host]))
         for key in host[0] if key != 'finite'})

  # -- checkpoints --------------------------------------------------------
  def _meta(self, epoch: int) -> dict[str, Any]:
    return {'config': json_safe.config_to_dict(self.run.config),
            'step': self.step, 'epoch': epoch,
            'image_shape': list(self.run.data.image_shape),
            'val_auroc': _finite(self.val_auroc),
            'best_val_auroc': _finite(self.best_val_auroc),
            'validated_step': self.validated_step,
            **(self.calibration.to_dict() if self.calibration else {})}

  def save_latest(self, epoch: int, stopping: bool = False) -> None:
    self.flush()  # Never save a state whose losses were not checked.
    self.last_meta = self._meta(epoch)
    with self.timer('checkpoints'), self.requests.protect(stopping):
      self.run.ckpts.save_latest(self.step, self.state, self.last_meta)
      if stopping:
        self.run.ckpts.wait_until_finished()

  # -- validation ---------------------------------------------------------
  def validate(self, epoch: int) -> None:
    """Calibrates, scores validation, keeps the best state (validation
    AUROC of the calibrated score)."""
    run, config = self.run, self.run.config
    self.validated_step = self.step
    with self.timer('validation'):
      scorer = scoring.scorer_from_state(
          self.state, *run.eval_models, config.eval.batch_size,
          run.local_devices)
      self.calibration, _, r_val, _ = report.calibrate(
          scorer, run.data, config, max_train=config.eval.calibration_size)
      val_metrics = scoring.evaluate(r_val, run.data.val.labels,
                                     self.calibration)
    self.val_auroc = val_metrics['auroc']
    metric_writers.write_scalars(run.writer, self.step, 'val', val_metrics)
    run.history.append('val', self.step, {
        'epoch': epoch + 1, 'auroc': val_metrics['auroc'],
        'raw_auroc': val_metrics['raw_auroc'], 'mu': self.calibration.mu,
        'sigma': self.calibration.sigma,
        'one_sided': float(self.calibration.score == 'one_sided')})
    run.history.flush()
    console.validation(epoch + 1, self.step, val_metrics,
                       self.calibration.score)
    if self.val_auroc > self.best_val_auroc:
      self.best_val_auroc = self.val_auroc
      with self.timer('checkpoints'), self.requests.protect():
        run.ckpts.save_best(self.step, self.state, self._meta(epoch))


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> train_state.AMAState:
  """Trains AMA per `config`, selects on validation, tests the best and last.

  A workdir that already holds a checkpoint is resumed from its newest
  readable one (damaged newer ones are set aside as `<step>.damaged`).
  Before any work the whole config is validated, this process takes the
  workdir's lock and a workdir whose checkpoints are all damaged is refused;
  on any exit, pending checkpoint saves finish, the managers close and the
  lock is released.

  Raises:
    errors.UserError: a known problem, one line to print: ConfigError,
      DataError, CheckpointError (all checkpoints damaged, or written for
      another model), WorkdirError (e.g. locked by another run),
      NonFiniteLossError.
    write_failures.WriteFailedError (a WorkdirError): a full disk, quota or
      read-only workdir; the last good checkpoint is left intact.
    stops.Stopped: a stop request (SIGTERM, SIGINT, a preemption notice,
      train.time_limit_s) ended the run before its end, resumably.
  """
  config_checks.validate(config, num_devices=jax.device_count(),
                         num_processes=jax.process_count())
  with write_failures.guard(workdir), stops.StopRequests(
      config.train.get('time_limit_s')) as requests:
    with stops.naming_the_resume(workdir), workdir_lock.hold_for_job(
        workdir), contextlib.ExitStack() as cleanup:
      checkpoint_files.check_resumable(workdir)
      return _train_and_evaluate(config, workdir, cleanup, requests)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        cleanup: contextlib.ExitStack,
                        requests: stops.StopRequests) -> train_state.AMAState:
  """`train_and_evaluate` once the config and workdir are checked."""
  t_start = time.time()
  timer = PhaseTimer()
  with timer('set-up'):
    run, state, meta = run_setup.set_up(config, pathlib.Path(workdir), cleanup)
  trainer = Trainer(run, state, meta, timer, requests)
  first = trainer.step // run.steps_per_epoch
  if stops.validation_pending(config, meta, run.steps_per_epoch):
    trainer.validate(first - 1)  # Stopped between training and validation.
  stops.stop_if_due(trainer, max(first - 1, 0))
  for epoch in range(first, run.num_epochs):
    if not trainer.train_epoch(epoch):
      return trainer.state
    if run_plan.itstime(epoch + 1, every=config.eval.every_epochs,
                        first=config.eval.first_epoch, last=run.num_epochs):
      trainer.validate(epoch)
      stops.stop_if_due(trainer, epoch)
  trainer.save_latest(run.num_epochs - 1)
  with timer('checkpoints'):
    run.ckpts.wait_until_finished()
  with timer('final evaluation'):
    best = run.ckpts.restore_best(run_setup.host_target(trainer.state))
    if best is not None:  # Placed as the trained state is: same program.
      best = (placement.replicate(best[0], run.devices), best[1])
    with write_failures.naming(run.workdir, 'the final evaluation\'s '
                               'figures and metrics'):
      results = report.final_evaluation(
          config, run.workdir, run.data, trainer.state, best,
          *run.eval_models, run.local_devices, run.writer, trainer.step,
          last_meta=trainer.last_meta)
  if run.is_chief and config.log.figures:
    with timer('figures'):
      with write_failures.naming(run.workdir / 'training.png'):
        figures.training_curves(
            run.workdir / 'training.png', run.history.read(),
            shell=report.shell_radii(config),
            title=f'{run.workdir.name}: training')
  wall = time.time() - t_start
  steps_s = timer.seconds['training steps']
  results.update(
      wall_time_s=wall, timing_s=dict(timer.seconds),
      train_share=steps_s / wall,
      train_images_per_s=(trainer.steps_timed * config.train.batch_size
                          / steps_s if steps_s else None),
      steps=trainer.step, steps_per_epoch=run.steps_per_epoch,
      epochs=run.num_epochs, devices=len(run.devices),
      local_devices=len(run.local_devices), processes=jax.process_count())
  logging.info('Run took %.0f s: %s; training steps %.0f%% of it.', wall,
               ', '.join(f'{k} {v:.1f} s' for k, v in timer.seconds.items()),
               100 * steps_s / wall)
  if run.is_chief:
    with write_failures.naming(run.workdir / 'results.json'):
      report.write_json(run.workdir / 'results.json', results)
  run.writer.flush()
  run.ckpts.close()
  return trainer.state
