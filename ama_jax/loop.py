"""The training program: `train_and_evaluate(config, workdir) -> AMAState`.

Order: writer -> data -> state -> restore -> pmaps -> loop (train, validate,
select, checkpoint) -> final evaluation of the best and last states ->
results.json and figures. Model selection uses the validation split only;
the test split is scored once, at the end.

Several processes (multi-host) run this same function: the training step is
one pmap over the devices of all of them (`train.mesh_devices`), each
process putting the training set on its devices once and sending them only
their rows' indices each epoch (`train.put_train_set`, `train.epoch_data`);
validation and test images are scored in per-process slices and gathered
(`scoring.Scorer`), so every process sees the same metrics and takes the
same decisions (best checkpoint, halting, errors).
All processes join checkpoint saves and restores (orbax writes from process
0); only process 0 writes metrics, figures and results.json.
"""
import contextlib
import functools
import importlib
import json
import os
import pathlib
import time
from typing import Any, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from ama_jax import checkpointing
from ama_jax import figures
from ama_jax import input_pipeline
from ama_jax import models
from ama_jax import schedules
from ama_jax import scoring
from ama_jax import train

PRNGKey = jax.Array


class NonFiniteLossError(FloatingPointError):
  """A loss became NaN/Inf; the last good checkpoint is left untouched."""


def _plan(config: ml_collections.ConfigDict, num_train: int,
          num_devices: int, num_processes: int = 1) -> tuple[int, int]:
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
    raise ValueError(
        f'train.batch_size={batch} (the global batch) does not divide evenly '
        f'over {num_devices} devices ({num_processes} process(es) x '
        f'{num_devices // num_processes} device(s) each); set '
        f'--config.train.batch_size to a multiple of {num_devices}, e.g. '
        f'{fits}.')
  steps = num_train // batch  # drop_last, as the official code.
  if steps == 0:
    raise ValueError(
        f'train.batch_size={batch} is larger than the training set '
        f'({num_train} images); lower it.')
  if config.train.max_steps_per_epoch:
    steps = min(steps, config.train.max_steps_per_epoch)
  return batch // num_devices, steps


def _calibrate(scorer, data, config, *, max_train=None
               ) -> tuple[scoring.Calibration, np.ndarray]:
  """mu, sigma over training normals; threshold on validation normals.

  The score is `eval.score`; 'auto' takes the one with the higher
  validation AUROC (`scoring.choose_score`). Returns the calibration and R
  of the training normals it used.
  """
  normal_train = data.train.images[data.train.labels == 0]
  if max_train is not None and len(normal_train) > max_train:
    # Deterministic subsample for per-epoch selection (speed); the final
    # calibration uses every training normal.
    rows = np.random.default_rng(config.seed).choice(
        len(normal_train), max_train, replace=False)
    normal_train = normal_train[np.sort(rows)]
  r_train = scorer(normal_train)
  r_val = scorer(data.val.images)
  score = config.eval.score
  if score == 'auto':
    mu, sigma = scoring.fit_gaussian(r_train)
    score = scoring.choose_score(r_val, data.val.labels, mu, sigma)
  return scoring.calibrate(r_train, r_val[data.val.labels == 0],
                           config.eval.threshold_fpr, score), r_train


def _load_data(config: ml_collections.ConfigDict
               ) -> input_pipeline.ProtocolData:
  """The protocol splits, read by every process (process 0 first).

  Process 0 prepares a missing TFDS copy once, before the others read the
  (shared) data directory.
  """
  several = jax.process_count() > 1
  if several and jax.process_index() != 0:
    multihost_utils.sync_global_devices('ama_jax: data prepared')
  data = input_pipeline.load_protocol(config.data, config.seed)
  if several and jax.process_index() == 0:
    multihost_utils.sync_global_devices('ama_jax: data prepared')
  return data


def _host_target(tree: Any) -> Any:
  """A restore target whose leaves come back as numpy arrays.

  Every process restores the whole state into host memory and places it on
  its devices itself (`train.replicate`).
  """
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype),
                      tree)


def _evaluate_split(scorer, split, calibration) -> tuple[dict, np.ndarray]:
  r = scorer(split.images)
  return scoring.evaluate(r, split.labels, calibration), r


def _meta(config, state, epoch, calibration, image_shape,
          val_auroc, best_val_auroc) -> dict[str, Any]:
  return {'config': checkpointing.config_to_dict(config),
          'step': int(state.step), 'epoch': epoch,
          'image_shape': list(image_shape), 'val_auroc': _finite(val_auroc),
          'best_val_auroc': _finite(best_val_auroc),
          **(calibration.to_dict() if calibration else {})}


def _finite(value) -> Optional[float]:
  """float(value), or None before the first validation (strict JSON)."""
  value = float(value)
  return value if np.isfinite(value) else None


class JsonlWriter:
  """Metrics to the log and `<workdir>/metrics.jsonl`, without TensorFlow.

  The subset of clu's `MetricWriter` that the loop uses; `create_writer`
  falls back to it where clu's writers cannot be imported (they need
  TensorFlow for TensorBoard summaries).
  """

  def __init__(self, workdir: pathlib.Path, just_logging: bool):
    self._path = None if just_logging else workdir / 'metrics.jsonl'

  def _write(self, record: dict) -> None:
    logging.info('%s', record)
    if self._path is not None:
      with self._path.open('a') as f:
        f.write(json.dumps(record, default=checkpointing.to_json) + '\n')

  def write_scalars(self, step: int, scalars: dict) -> None:
    self._write({'step': int(step), **scalars})

  def write_hparams(self, hparams: dict) -> None:
    self._write({'hparams': hparams})

  def flush(self) -> None:
    pass


class History:
  """Per-step training metrics and per-epoch validation, for `training.png`.

  Appended to `<workdir>/history.jsonl` (process 0 only), one record per
  line: {"kind": "train" | "val", "step": N, ...values}. A resumed run first
  drops the records after the step it resumes from (written after the last
  checkpoint by the run that stopped), so the file describes one history.
  """

  def __init__(self, workdir: pathlib.Path, is_chief: bool,
               resume_step: int):
    self.path = workdir / 'history.jsonl'
    self._enabled = is_chief
    self._buffer: list[str] = []
    if is_chief and self.path.exists():
      kept = [line for line in self.path.read_text().splitlines()
              if line.strip() and json.loads(line)['step'] <= resume_step]
      tmp = self.path.with_suffix('.jsonl.tmp')
      tmp.write_text(''.join(line + '\n' for line in kept))
      os.replace(tmp, self.path)

  def append(self, kind: str, step: int, values: dict) -> None:
    if self._enabled:
      self._buffer.append(json.dumps(
          {'kind': kind, 'step': int(step), **values},
          default=checkpointing.to_json))

  def flush(self) -> None:
    if self._buffer:
      with self.path.open('a') as f:
        f.write(''.join(line + '\n' for line in self._buffer))
      self._buffer.clear()

  def read(self) -> list[dict]:
    self.flush()
    if not self.path.exists():
      return []
    return [json.loads(line) for line in self.path.read_text().splitlines()
            if line.strip()]


class _Progress:
  """Stand-in for clu's ReportProgress: times sections into the log."""

  def __call__(self, step: int, t: Optional[float] = None) -> None:
    del step, t

  @contextlib.contextmanager
  def timed(self, name: str):
    t0 = time.time()
    yield
    logging.info('%s took %.1f s', name, time.time() - t0)


def create_writer(workdir: pathlib.Path, is_chief: bool, total_steps: int):
  """(writer, progress hook): clu's TensorBoard writer when TF is installed.

  Without TensorFlow, clu's metric writers cannot be imported; metrics then
  go to the log and `metrics.jsonl` (`JsonlWriter`), not to TensorBoard.
  """
  try:
    metric_writers = importlib.import_module('clu.metric_writers')
    periodic_actions = importlib.import_module('clu.periodic_actions')
  except ImportError as e:
    logging.warning('clu metric writers unavailable (%s): metrics go to the '
                    'log and %s/metrics.jsonl, not TensorBoard.', e, workdir)
    return JsonlWriter(workdir, just_logging=not is_chief), _Progress()
  writer = metric_writers.create_default_writer(
      str(workdir), just_logging=not is_chief)
  return writer, periodic_actions.ReportProgress(num_train_steps=total_steps,
                                                 writer=writer)


def _write_scalars(writer, step: int, prefix: str, values: dict) -> None:
  writer.write_scalars(step, {f'{prefix}/{k}': float(v)
                              for k, v in values.items()
                              if np.isscalar(v) or np.ndim(v) == 0})


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> train.AMAState:
  """Trains AMA per `config`, selects on validation, tests the best and last.

  A workdir that already holds a checkpoint is resumed from it.
  """
  t_start = time.time()
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  is_chief = jax.process_index() == 0
  data = _load_data(config)
  image_shape = tuple(data.image_shape)
  devices = train.mesh_devices()  # Of every process: the step's axis.
  local_devices = jax.local_devices()
  num_train = len(data.train.images)
  local_batch, steps_per_epoch = _plan(config, num_train, len(devices),
                                       jax.process_count())
  num_epochs = config.train.num_epochs
  total_steps = steps_per_epoch * num_epochs
  writer, report = create_writer(workdir, is_chief, total_steps)
  writer.write_hparams(checkpointing.flat_hparams(config))
  logging.info('Global batch %d = %d per device x %d devices (%d local '
               'device(s) x %d process(es)); %d training images, %d '
               'steps/epoch, %d epochs.', config.train.batch_size,
               local_batch, len(devices), len(local_devices),
               jax.process_count(), num_train, steps_per_epoch, num_epochs)

  init_rng, train_rng, data_rng = jax.random.split(
      jax.random.key(config.seed), 3)
  state = train.create_train_state(init_rng, config, image_shape)
  ckpts = checkpointing.CheckpointManagers(workdir)
  best_val_auroc = -np.inf
  restored = ckpts.restore_latest(_host_target(state))
  if restored is not None:
    state, meta = restored
    best_val_auroc = meta.get('best_val_auroc')
    if best_val_auroc is None:  # Saved before the first validation.
      best_val_auroc = -np.inf
    logging.info('Resumed from step %d of %s.', int(state.step), workdir)
  state = train.replicate(state, devices)
  start_step = int(jax.device_get(state.step))
  history = History(workdir, is_chief, start_step)

  ae_model, critic_model = models.create_models(
      config.model, image_shape, axis_name=train.AXIS)
  eval_ae, eval_critic = models.create_models(config.model, image_shape)
  settings = train.StepSettings.from_config(
      config, local_batch=local_batch, num_devices=len(devices))
  k = max(1, config.train.steps_per_call)
  # One compiled call for the whole run: the schedule is data.
  p_step = train.make_p_train_step(ae_model, critic_model, settings,
                                   num_steps=k, devices=devices)
  compiled = False

  train_rng = train.replicate(train_rng, devices)
  hooks = [report]
  calibration = None
  val_auroc = -np.inf
  pending: list[tuple[int, dict]] = []  # Device-side metrics, not yet read.
  step = start_step
  t_train, steps_timed = 0.0, 0

  def flush(step: int) -> None:
    """Reads pending metrics (one host sync), checks finiteness, logs."""
    if not pending:
      return
    host = jax.device_get([m for _, m in pending])
    first = pending[0][0]
    pending_steps = list(pending)
    pending.clear()
    for i, m in enumerate(host):
      if not bool(m['finite']):
        raise NonFiniteLossError(
            f'Non-finite loss between steps {first} and {step} (first bad '
            f'call ends at step {first + i}); the last good checkpoint in '
            f'{workdir / "checkpoints"} is intact. Lower optim.lr or enable '
            'loss.lambda_gp / model.spectral_norm.')
    # Every step to history.jsonl; their mean to the metric writer (clu's
    # TensorBoard summaries cost ~0.1 s per scalar under TF's eager mode;
    # `log.every_steps=1` writes every step there too).
    for (at, _), m in zip(pending_steps, host):
      history.append('train', at, {key: float(v) for key, v in m.items()
                                   if key != 'finite'})
    history.flush()
    mean = {key: float(np.mean([m[key] for m in host]))
            for key in host[0] if key != 'finite'}
    _write_scalars(writer, step, 'train', mean)

  def save_latest(epoch: int) -> None:
    flush(step)  # Never save a state whose losses were not checked.
    ckpts.save_latest(step, state, _meta(
        config, state, epoch, calibration, image_shape, val_auroc,
        best_val_auroc))

  # The training set goes to the devices once; each epoch sends row indices.
  schedule = schedules.make_schedule(config, steps_per_epoch, total_steps)
  train_set = train.put_train_set(data.train.images, data.train.labels,
                                  steps_per_epoch, schedule, devices)
  for epoch in range(start_step // steps_per_epoch, num_epochs):
    epoch_end = (epoch + 1) * steps_per_epoch
    t0, s0 = time.time(), step
    # This process's devices' rows of the epoch (the order is global).
    epoch_data = train.epoch_data(
        train_set, train.epoch_order(data_rng, epoch, num_train),
        local_batch, steps_per_epoch, devices)
    while step < epoch_end:
      n = min(k, epoch_end - step)
      t_call = time.time()
      args = (state, epoch_data, train_rng) + ((np.int32(n),) if k > 1
                                               else ())
      state, metrics = p_step(*args)
      if not compiled:  # One sync: compile time in the log.
        jax.block_until_ready(metrics)
        logging.info('Training step (%d step(s) per call) compiled and ran '
                     'once in %.1f s.', k, time.time() - t_call)
        compiled = True
      step += n
      pending.append((step, metrics))
      for hook in hooks:
        hook(step)
      if step % config.log.every_steps < n or step == epoch_end:
        flush(step)
      if step % config.log.checkpoint_every_steps < n:
        save_latest(epoch)
      halt = config.train.halt_after_steps
      if halt and step >= halt:
        save_latest(epoch)
        ckpts.wait_until_finished()
        logging.info('Halting at step %d (train.halt_after_steps).', step)
        return state
    jax.block_until_ready(state)
    t_train += time.time() - t0
    steps_timed += step - s0

    if (epoch + 1 >= config.eval.first_epoch
        and (epoch + 1) % config.eval.every_epochs == 0):
      with report.timed('eval'):
        scorer = scoring.scorer_from_state(state, eval_ae, eval_critic,
                                           config.eval.batch_size,
                                           local_devices)
        calibration, _ = _calibrate(scorer, data, config,
                                    max_train=config.eval.calibration_size)
        val_metrics, _ = _evaluate_split(scorer, data.val, calibration)
      val_auroc = val_metrics['auroc']
      _write_scalars(writer, step, 'val', val_metrics)
      history.append('val', step, {
          'epoch': epoch + 1, 'auroc': val_metrics['auroc'],
          'raw_auroc': val_metrics['raw_auroc'], 'mu': calibration.mu,
          'sigma': calibration.sigma,
          'one_sided': float(calibration.score == 'one_sided')})
      history.flush()
      logging.info('epoch %d step %d: val AUROC %.4f (raw R %.4f)', epoch + 1,
                   step, val_auroc, val_metrics['raw_auroc'])
      if val_auroc > best_val_auroc:
        best_val_auroc = val_auroc
        ckpts.save_best(step, state, _meta(
            config, state, epoch, calibration, image_shape, val_auroc,
            best_val_auroc))
  save_latest(num_epochs - 1)
  ckpts.wait_until_finished()

  results = _final_evaluation(config, workdir, data, state, ckpts, eval_ae,
                              eval_critic, local_devices, writer, step)
  results.update(
      wall_time_s=time.time() - t_start,
      train_images_per_s=(steps_timed * config.train.batch_size / t_train
                          if t_train else None),
      steps=step, steps_per_epoch=steps_per_epoch, epochs=num_epochs,
      devices=len(devices), local_devices=len(local_devices),
      processes=jax.process_count())
  if is_chief:
    _write_json(workdir / 'results.json', results)
    if config.log.figures:
      figures.training_curves(
          workdir / 'training.png', history.read(),
          shell=shell_radii(config), title=f'{workdir.name}: training')
  writer.flush()
  ckpts.close()
  return state


def _final_evaluation(config, workdir, data, state, ckpts, eval_ae,
                      eval_critic, devices, writer, step) -> dict[str, Any]:
  """Test metrics for the best-validation state and for the last state."""
  results = {'config': checkpointing.config_to_dict(config),
             'seed': config.seed, 'counts': data.counts, 'test': {}}
  candidates = [('last', state)]
  best = ckpts.restore_best(_host_target(state))
  if best is not None:
    candidates.insert(0, ('best', best[0]))
    results['best_step'] = best[1]['step']
    results['best_val_auroc'] = best[1]['val_auroc']
  for name, st in candidates:
    scorer = scoring.scorer_from_state(st, eval_ae, eval_critic,
                                       config.eval.batch_size, devices)
    calibration, r_train = _calibrate(scorer, data, config)
    test_metrics, r_test = _evaluate_split(scorer, data.test, calibration)
    val_metrics, _ = _evaluate_split(scorer, data.val, calibration)
    results['test'][name] = test_metrics
    results.setdefault('val', {})[name] = val_metrics
    results.setdefault('calibration', {})[name] = calibration.to_dict()
    _write_scalars(writer, step, f'test_{name}', test_metrics)
    logging.info('test (%s state): AUROC %.4f AUPRC %.4f FPR80 %.4f '
                 '(raw R AUROC %.4f)', name, test_metrics['auroc'],
                 test_metrics['auprc_anomaly'], test_metrics['fpr80'],
                 test_metrics['raw_auroc'])
    if name == candidates[0][0] and config.log.figures and (
        jax.process_index() == 0):
      _figures(workdir, data, st, eval_ae, calibration, r_train[:10000],
               r_test, config)
  return results


def shell_radii(config: ml_collections.ConfigDict) -> dict[str, float]:
  """The radii of atypical selection's shell (paper: sqrt(d) +- delta)."""
  d, delta = config.model.latent_dim, config.sampling.delta
  root = float(np.sqrt(d))
  if config.sampling.style == 'outward':
    return {'sqrt(d)': root, 'sqrt(d)+delta': root + delta}
  if config.sampling.style == 'inward':
    return {'sqrt(d)-delta': root - delta, 'sqrt(d)': root}
  return {}


def _figures(workdir, data, state, eval_ae, calibration, r_train, r_test,
             config) -> None:
  """The paper's Fig. 3, 4-5 and 10 for the selected state."""
  test = data.test
  for name, transform in (('raw_r', lambda r: r),
                          ('score', calibration.scores)):
    figures.score_histograms(
        str(workdir / f'hist_{name}.png'), train=transform(r_train),
        test_normal=transform(r_test[test.labels == 0]),
        test_anomaly=transform(r_test[test.labels == 1]),
        title=f'{name} (best-validation state)', xlabel=name)
  figures.roc_curves(
      str(workdir / 'roc.png'), test.labels,
      {f'calibrated ({calibration.score})': calibration.scores(r_test),
       'raw R': r_test}, title='Test ROC')
  ae_vars, _ = train.scoring_variables(state)
  rows = np.concatenate([np.flatnonzero(test.labels == 0)[:8],
                         np.flatnonzero(test.labels == 1)[:8]])
  x = test.images[rows]
  x_rec, _ = jax.jit(lambda v, x: eval_ae.apply(v, x, train=False))(ae_vars, x)
  figures.reconstructions(str(workdir / 'reconstructions.png'), x,
                          np.asarray(x_rec), n=len(rows),
                          title='Test images (8 normal, 8 anomalous) and '
                          'reconstructions')
  if config.sampling.style != 'none':
    radius = None
    if config.sampling.shell_radius == 'measured':  # Over the 8 normals.
      z = eval_ae.apply(ae_vars, x[:8], train=False, method='encode')
      radius = np.quantile(np.linalg.norm(z, axis=-1),
                           config.sampling.radius_quantile)
    keys = jax.random.split(jax.random.key(config.seed), len(x))
    negatives = jax.jit(functools.partial(
        train.synthetic_negatives, eval_ae, style=config.sampling.style,
        delta=config.sampling.delta,
        radial_direction=config.sampling.radial_direction,
        radius=radius))(ae_vars, x, keys)
    figures.image_grid(str(workdir / 'negatives.png'), np.asarray(negatives),
                       n=len(x), title='Synthetic negatives '
                       f'({config.sampling.style})')


def summary(workdir: str) -> str:
  """A short human-readable summary of `<workdir>/results.json`."""
  results = json.loads((pathlib.Path(workdir) / 'results.json').read_text())
  data = results['config']['data']
  what = (f"{data['dataset']} -> {data['ood_dataset']} (OOD)"
          if data['protocol'] == 'ood' else
          f"{data['dataset']} one-class, normal {data['normal_classes']}")
  lines = [f"ama_jax: {what}, {results['epochs']} epochs, "
           f"{results['counts']['train']['total']} training images, "
           f"{results['wall_time_s']:.0f} s"]
  if 'best_step' in results:
    lines.append(f"best validation AUROC {results['best_val_auroc']:.4f} at "
                 f"step {results['best_step']}")
  for name, m in results['test'].items():
    lines.append(
        f"test ({name} state): AUROC {m['auroc']:.4f}  "
        f"AUPRC(anomaly+) {m['auprc_anomaly']:.4f}  "
        f"AUPRC(normal+) {m['auprc_normal']:.4f}  FPR80 {m['fpr80']:.4f}  "
        f"| raw R: AUROC {m['raw_auroc']:.4f}")
  lines.append(f'results: {pathlib.Path(workdir) / "results.json"}')
  return '\n'.join(lines)


def _write_json(path: pathlib.Path, obj: Any) -> None:
  """Atomic JSON write (a crash never leaves a partial file)."""
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
  os.replace(tmp, path)


def _json_default(o: Any) -> Any:
  if isinstance(o, (np.integer,)):
    return int(o)
  if isinstance(o, (np.floating,)):
    return float(o)
  if isinstance(o, np.ndarray):
    return o.tolist()
  raise TypeError(f'Not JSON serializable: {type(o)}')
