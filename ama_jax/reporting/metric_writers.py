"""Where a run's metrics go: TensorBoard (clu), metrics.jsonl, history.jsonl.

`create_writer` gives clu's TensorBoard writer when TensorFlow is installed
and `JsonlWriter` (log + `<workdir>/metrics.jsonl`) otherwise; both get the
mean of each logging interval. `History` keeps every step's metrics and
every validation in `<workdir>/history.jsonl`, which `figures.
training_curves` draws as `training.png`.
"""
import contextlib
import importlib
import json
import os
import pathlib
import time
from typing import Optional

from absl import logging
import numpy as np

from ama_jax.reporting import json_safe
from ama_jax.process import write_failures


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
        f.write(json.dumps(record, default=json_safe.to_json) + '\n')

  def write_scalars(self, step: int, scalars: dict) -> None:
    self._write({'step': int(step), **scalars})

  def write_hparams(self, hparams: dict) -> None:
    self._write({'hparams': hparams})

  def flush(self) -> None:
    pass


def _parsable_lines(path: pathlib.Path) -> list[str]:
  """The JSON lines of a file; a line cut short by a kill is dropped."""
  lines = []
  for line in path.read_text().splitlines():
    if not line.strip():
      continue
    try:
      json.loads(line)
    except ValueError:
      logging.warning('%s: dropping an unreadable line (a run killed while '
                      'writing it?): %r', path, line[:80])
      continue
    lines.append(line)
  return lines


class History:
  """Per-step training metrics and per-epoch validation, for `training.png`.

  Appended to `<workdir>/history.jsonl` (process 0 only), one record per
  line: {"kind": "train" | "val", "step": N, ...values}. A resumed run first
  drops the records after the step it resumes from (written after the last
  checkpoint by the run that stopped), so the file describes one history;
  with `keep_val_at_resume=False` also the validation at that step, which
  the resumed run does again.
  """

  def __init__(self, workdir: pathlib.Path, is_chief: bool,
               resume_step: int, keep_val_at_resume: bool = True):
    self.path = workdir / 'history.jsonl'
    self._enabled = is_chief
    self._buffer: list[str] = []
    if is_chief and self.path.exists():
      records = [(line, json.loads(line))
                 for line in _parsable_lines(self.path)]
      kept = [line for line, r in records if r['step'] < resume_step or (
          r['step'] == resume_step
          and (keep_val_at_resume or r.get('kind') != 'val'))]
      tmp = self.path.with_suffix('.jsonl.tmp')
      with write_failures.naming(tmp):
        tmp.write_text(''.join(line + '\n' for line in kept))
      os.replace(tmp, self.path)

  def append(self, kind: str, step: int, values: dict) -> None:
    if self._enabled:
      self._buffer.append(json.dumps(
          {'kind': kind, 'step': int(step), **values},
          default=json_safe.to_json))

  def flush(self) -> None:
    if self._buffer:
      with write_failures.naming(self.path), self.path.open('a') as f:
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


def write_scalars(writer, step: int, prefix: str, values: dict) -> None:
  writer.write_scalars(step, {f'{prefix}/{k}': float(v)
                              for k, v in values.items()
                              if np.isscalar(v) or np.ndim(v) == 0})
