r"""Throughput benchmark of one AMA training iteration and of scoring.

  python -m ama_jax.benchmark --arch mnist --batch 256 --n-critic 1
  python -m ama_jax.benchmark --arch mnist --batch 256 --n-critic 1 \
      --torch_python=/tmp/torchref/bin/python --rounds 3

Prints one JSON line: training images/s after compilation (median over timed
calls), scoring images/s, compile seconds, peak memory, device kind and
count. With `--torch_python`, the PyTorch reference
(`../shared/bench/torch_ref.py`, `--mode lean` by default) runs in a
subprocess alternating with this benchmark, in the same run, and the line
also holds its figures and the ratio ours / reference.

The default settings match the reference's iteration: simplex interpolation
on (its E/G term detached, as in the official code and the reference),
radial-inward negatives on 10% of the batch, no gradient penalty, spectral
norm for `cifar` only. `--paper_inter` lets the interpolation term's
gradients reach E and G (the paper; more work than the reference does).
Random data, as the reference; the training set lives on the device.
"""
import json
import os
import pathlib
import resource
import statistics
import subprocess
import time

from absl import flags
import jax
import numpy as np

from configs import default
from ama_jax import cli
from ama_jax import config_checks
from ama_jax import errors
from ama_jax import malloc_tuning
from ama_jax import models
from ama_jax import schedules
from ama_jax import scoring
from ama_jax import train

FLAGS = flags.FLAGS
flags.DEFINE_enum('arch', 'mnist', ['mnist', 'cifar'], 'Architecture.')
flags.DEFINE_integer('batch', 256, 'Global batch size.')
flags.DEFINE_integer('n_critic', 1, 'Critic updates per E/G update.')
flags.DEFINE_integer('steps', 5, 'Timed training calls.')
flags.DEFINE_integer('warmup', 1, 'Untimed calls after the compiling one.')
flags.DEFINE_integer('steps_per_call', 1, 'Training steps per call (scan).')
flags.DEFINE_integer('score_batches', 5, 'Timed scoring batches.')
flags.DEFINE_bool('paper_inter', False, 'Interpolation gradients reach E, G.')
flags.DEFINE_string('torch_python', None, 'Python with torch to run the '
                    'reference beside this benchmark.')
flags.DEFINE_string('torch_ref', None, 'Path of torch_ref.py (default: '
                    '../shared/bench/torch_ref.py next to the repo).')
flags.DEFINE_string('torch_args', '--mode lean --threads 2',
                    'Extra arguments for the reference.')
flags.DEFINE_integer('rounds', 1, 'Alternating rounds (ours, reference).')


def _config():
  config = default.get_config()
  config.model.arch = FLAGS.arch
  if FLAGS.arch == 'cifar':
    config.model.latent_dim = 128
    config.model.spectral_norm = True
  config.train.batch_size = FLAGS.batch
  config.train.n_critic = FLAGS.n_critic
  config.loss.detach_inter = not FLAGS.paper_inter
  config.loss.lambda_gp = 0.0  # The reference's default (--gp 0).
  config.sampling.style = 'radial'
  config.sampling.radial_direction = 'inward'
  return config


def _peak_memory_mb() -> float:
  stats = jax.local_devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB.


def run_ours() -> dict:
  """Times training and scoring; returns the figures."""
  config = _config()
  image_shape = (28, 28, 1) if FLAGS.arch == 'mnist' else (32, 32, 3)
  devices = jax.local_devices()
  num_train = FLAGS.batch * 8
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (num_train, *image_shape)).astype(np.float32)
  state = train.create_train_state(jax.random.key(0), config, image_shape)
  ae_model, critic_model = models.create_models(config.model, image_shape,
                                                axis_name=train.AXIS)
  config.sampling.start_step = 0  # Negatives on from the first step.
  settings = train.StepSettings.from_config(
      config, local_batch=FLAGS.batch // len(devices),
      num_devices=len(devices))
  schedule = schedules.make_schedule(config, 8, 10**6)
  data = train.epoch_data(
      train.put_train_set(images, np.zeros(num_train, np.int32), 8, schedule,
                          devices),
      np.arange(num_train), settings.local_batch, 8, devices)
  p_step = train.make_p_train_step(ae_model, critic_model, settings,
                                   num_steps=FLAGS.steps_per_call,
                                   devices=devices)
  state, rng = train.replicate((state, jax.random.key(1)), devices)
  count = (np.int32(FLAGS.steps_per_call),) if FLAGS.steps_per_call > 1 else ()
  t0 = time.perf_counter()
  state, metrics = p_step(state, data, rng, *count)
  jax.block_until_ready((state, metrics))
  compile_s = time.perf_counter() - t0
  for _ in range(FLAGS.warmup):
    state, metrics = p_step(state, data, rng, *count)
  jax.block_until_ready(state)
  times = []
  for _ in range(FLAGS.steps):
    t0 = time.perf_counter()
    state, metrics = p_step(state, data, rng, *count)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  images_per_call = FLAGS.batch * FLAGS.steps_per_call

  eval_ae, eval_critic = models.create_models(config.model, image_shape)
  scorer = scoring.scorer_from_state(state, eval_ae, eval_critic,
                                     batch_size=FLAGS.batch, devices=devices)
  scorer(images[:FLAGS.batch])  # Compile.
  t0 = time.perf_counter()
  for _ in range(FLAGS.score_batches):
    scorer(images[:FLAGS.batch])
  score_s = time.perf_counter() - t0
  return {
      'impl': 'ama_jax', 'arch': FLAGS.arch, 'batch': FLAGS.batch,
      'n_critic': FLAGS.n_critic, 'paper_inter': FLAGS.paper_inter,
      'train_img_per_s': images_per_call / statistics.median(times),
      'train_step_s_median': statistics.median(times) / FLAGS.steps_per_call,
      'train_call_s': [round(t, 3) for t in times],
      'score_img_per_s': FLAGS.score_batches * FLAGS.batch / score_s,
      'compile_s': compile_s, 'peak_memory_mb': _peak_memory_mb(),
      'device_kind': devices[0].device_kind, 'device_count': len(devices),
      'finite': bool(metrics['finite']),
  }


def run_torch() -> dict:
  """Runs the PyTorch reference once with the same settings."""
  ref = FLAGS.torch_ref or str(
      pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'bench' /
      'torch_ref.py')
  cmd = [FLAGS.torch_python, ref, '--arch', FLAGS.arch, '--batch',
         str(FLAGS.batch), '--n-critic', str(FLAGS.n_critic), '--steps',
         str(FLAGS.steps), '--warmup', str(max(1, FLAGS.warmup)),
         *FLAGS.torch_args.split()]
  env = dict(os.environ, GLIBC_TUNABLES=(
      'glibc.malloc.hugetlb=1:glibc.malloc.mmap_threshold=4294967296:'
      'glibc.malloc.trim_threshold=4294967296'))
  out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                       env=env)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  small = [f'--{name}={FLAGS[name].value}' for name in
           ('steps', 'rounds', 'score_batches', 'steps_per_call')
           if FLAGS[name].value < 1]
  if small:
    raise errors.ConfigError(f'{", ".join(small)}: must be at least 1.')
  malloc_tuning.tune()  # Before JAX's first computation.
  # The settings the flags make, checked as a training run checks them.
  try:
    config_checks.validate(_config(), num_devices=jax.local_device_count())
  except errors.ConfigError as e:
    raise errors.ConfigError(f'{e} (--batch sets train.batch_size, '
                             '--n_critic train.n_critic)') from e
  ours, ref = [], []
  for _ in range(FLAGS.rounds):
    ours.append(run_ours())
    if FLAGS.torch_python:
      ref.append(run_torch())
  result = dict(ours[-1])
  result['train_img_per_s'] = statistics.median(
      r['train_img_per_s'] for r in ours)
  result['score_img_per_s'] = statistics.median(
      r['score_img_per_s'] for r in ours)
  result['rounds'] = FLAGS.rounds
  if ref:
    t = statistics.median(r['train_img_s_median']
                          for r in ref)
    s = statistics.median(r['score_img_s_median']
                          for r in ref)
    result.update(torch_train_img_per_s=t, torch_score_img_per_s=s,
                  torch_args=FLAGS.torch_args,
                  train_ratio=result['train_img_per_s'] / t,
                  score_ratio=result['score_img_per_s'] / s)
  print(json.dumps(result), flush=True)


if __name__ == '__main__':
  cli.run_main(main)
