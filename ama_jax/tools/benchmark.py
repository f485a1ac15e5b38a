r"""Throughput benchmark of one AMA training iteration and of scoring.

  python -m ama_jax.tools.benchmark --arch mnist --batch 256 --n_critic 1
  python -m ama_jax.tools.benchmark --arch cifar --batch 256 \
      --compute_dtype bfloat16                     # on an accelerator
  python -m ama_jax.tools.benchmark --arch mnist --batch 256 --n_critic 1 \
      --torch_python=/tmp/torchref/bin/python --rounds 3

Prints one JSON line (and appends it to `--json_out`): training images/s
after compilation (median over timed calls) and the step in ms, scoring
images/s, the training step's trace and compile seconds, cold (empty
persistent compilation cache) and warm (the same program again after
`jax.clear_caches()`, loaded from the cache: what a second run of the same
program pays), XLA's cost-analysis FLOPs per step and the share of the
chip's peak they make at the measured speed, peak memory, device kind and
count.

With `--torch_python` and `--torch_ref`, the PyTorch reference script (`torch_ref.py`,
`--mode lean` by default) runs in a subprocess alternating with this
benchmark, in the same run, and the line also holds its figures and the
ratio ours / reference.

The default settings match the reference's iteration: simplex interpolation
on (its E/G term detached, as in the official code and the reference),
radial-inward negatives on 10% of the batch, no gradient penalty, spectral
norm for `cifar` only. `--paper_inter` lets the interpolation term's
gradients reach E and G (the paper; more work than the reference does).
Random data, as the reference; the training set lives on the device.

Fields of the JSON line (times in seconds unless named otherwise):
  trace_s, compile_s          lowering (tracing) alone, and lowering plus
                              XLA's compilation, of the training step, with
                              an empty persistent cache (cold);
  trace_warm_s, compile_warm_s  the same after `jax.clear_caches()`, with
                              the cache the cold compile filled;
                              warm_cache_hit says whether it was loaded;
  first_call_s                the first (untimed) training call;
  step_ms, train_img_per_s    median training call, per step / images;
  flops_per_step              XLA's cost analysis of the compiled step
                              (`Compiled.cost_analysis()`, all devices;
                              `flops_source` says when it came from the
                              lowered program instead);
  lowered_flops_per_step      the same of the lowered program (as traced,
                              before XLA's rewrites): a check on the
                              compiled count where library calls (cuDNN,
                              cuBLAS) might hide work from it;
  achieved_flops_per_s, peak_flops_per_s, utilisation
                              FLOP/s per device at the median step, the
                              chip's dense peak for the compute dtype
                              (`PEAK_FLOPS` or `--peak_flops`), their ratio
                              (null when the peak is unknown, e.g. on CPU);
  peak_memory_mb              device peak (accelerators), else the
                              process's peak resident memory;
  temp_mb                     XLA's temporary buffers of the step;
  round_train_img_per_s, round_torch_train_img_per_s
                              each round's figure (ours, the reference);
                              train_img_per_s and torch_train_img_per_s
                              are their medians, train_ratio their ratio.
"""
import json
import os
import resource
import statistics
import subprocess
import tempfile
import time
from typing import Any, Optional

from absl import flags
from absl import logging
import jax
import numpy as np

from ama_jax.config import config_checks
from ama_jax.models import conv_layers
from ama_jax import errors
from ama_jax.models import nets
from ama_jax.training import placement
from ama_jax.process import runtime
from ama_jax.training import schedules
from ama_jax.scoring import scoring
from ama_jax.training import step_settings
from ama_jax.training import train
from ama_jax.training import train_state
from ama_jax.tools import cli
from configs import default

FLAGS = flags.FLAGS
flags.DEFINE_enum('arch', 'mnist', ['mnist', 'cifar'], 'Architecture.')
flags.DEFINE_integer('batch', 256, 'Global batch size.')
flags.DEFINE_integer('n_critic', 1, 'Critic updates per E/G update.')
flags.DEFINE_integer('steps', 5, 'Timed training calls.')
flags.DEFINE_integer('warmup', 1, 'Untimed calls after the compiling one.')
flags.DEFINE_integer('steps_per_call', 1, 'Training steps per call (scan).')
flags.DEFINE_integer('score_batches', 5, 'Timed scoring batches (0: no '
                     'scoring).')
flags.DEFINE_bool('paper_inter', False, 'Interpolation gradients reach E, G.')
flags.DEFINE_enum('compute_dtype', 'float32', sorted(nets.COMPUTE_DTYPES),
                  'model.compute_dtype: the layers\' arithmetic.')
flags.DEFINE_enum('conv_impl', 'auto', list(conv_layers.CONV_IMPLS),
                  'model.conv_impl: convolution forms.')
flags.DEFINE_bool('tiny', False, 'Tiny models (the :runlocal widths), '
                  'for smoke tests of the benchmark itself.')
flags.DEFINE_string('cache_dir', '', 'Persistent compilation cache '
                    'folder; empty: a fresh temporary one (a cold compile, '
                    'then a warm one from it); "off": none (no warm '
                    'compile).')
flags.DEFINE_bool('warm_compile', True, 'Also time a second compile of the '
                  'step after jax.clear_caches() (from the persistent cache).')
flags.DEFINE_float('peak_flops', None, 'Peak FLOP/s of one device for the '
                   'utilisation figure; default: PEAK_FLOPS by device kind.')
flags.DEFINE_string('json_out', None, 'File to append the JSON line to.')
flags.DEFINE_string('torch_python', None, 'Python with torch to run the '
                    'reference beside this benchmark.')
flags.DEFINE_string('torch_ref', os.environ.get('AMA_JAX_TORCH_REF'),
                    'Path of the PyTorch reference script torch_ref.py '
                    '(default: $AMA_JAX_TORCH_REF); needed with '
                    '--torch_python.')
flags.DEFINE_string('torch_args', '--mode lean --threads 2',
                    'Extra arguments for the reference.')
flags.DEFINE_integer('rounds', 1, 'Alternating rounds (ours, reference).')

# Dense (no 2:4 sparsity) peak FLOP/s of one device, by `device_kind` and
# compute dtype, from the vendors' datasheets. NVIDIA H100 / H200 SXM
# (the same chip and clocks): BF16 tensor core 1,979 TFLOP/s with sparsity,
# so 989 dense; FP32 67 TFLOP/s on the CUDA cores (non-tensor); TF32 tensor
# core 989 with sparsity, 494.5 dense (XLA may run float32 convolutions and
# matmuls as TF32 on these GPUs; `utilisation_tf32` compares with that).
# H100 PCIe: 1,513 / 51 / 756 (sparse bf16 / fp32 / sparse tf32). A100 SXM:
# BF16 312, FP32 19.5, TF32 156. Google Cloud TPU pages: v4 275, v5e 197,
# v6e 918 bf16 TFLOP/s. A bf16 matmul measured on the lent H200 ran at
# ~790 TFLOP/s (random data).
PEAK_FLOPS = {
    'NVIDIA H200': {'bfloat16': 989e12, 'float32': 67e12, 'tf32': 494.5e12},
    'NVIDIA H100 80GB HBM3': {'bfloat16': 989e12, 'float32': 67e12,
                              'tf32': 494.5e12},
    'NVIDIA H100 PCIe': {'bfloat16': 756e12, 'float32': 51e12,
                         'tf32': 378e12},
    'NVIDIA A100-SXM4-40GB': {'bfloat16': 312e12, 'float32': 19.5e12,
                              'tf32': 156e12},
    'NVIDIA A100-SXM4-80GB': {'bfloat16': 312e12, 'float32': 19.5e12,
                              'tf32': 156e12},
    'TPU v4': {'bfloat16': 275e12},
    'TPU v5 lite': {'bfloat16': 197e12},
    'TPU v6 lite': {'bfloat16': 918e12},
}
_CACHE_HIT = '/jax/compilation_cache/cache_hits'


def peak_flops(device_kind: str, compute_dtype: str) -> Optional[float]:
  """The dense peak FLOP/s of one device (None when not in `PEAK_FLOPS`)."""
  return PEAK_FLOPS.get(device_kind, {}).get(compute_dtype)


def _config():
  config = default.get_config('runlocal' if FLAGS.tiny else None)
  config.model.arch = FLAGS.arch
  if FLAGS.arch == 'cifar':
    config.model.latent_dim = 8 if FLAGS.tiny else 128
    config.model.spectral_norm = True
    # The data fields only name the image shape the checks expect (the
    # benchmark's images are random): configs/cifar_svhn.py's.
    config.data.dataset = 'cifar10'
    config.data.ood_dataset = 'svhn_cropped'
  config.model.compute_dtype = FLAGS.compute_dtype
  config.model.conv_impl = FLAGS.conv_impl
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


def _flops(stage) -> Optional[float]:
  """FLOPs of one call on one device by XLA's cost analysis of a compiled
  or lowered program (None where the backend gives none)."""
  try:
    cost = stage.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None  # Not every backend implements it.
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
    cost = cost[0] if cost else {}
  flops = (cost or {}).get('flops', 0)
  return float(flops) if flops > 0 else None


def _temp_mb(compiled) -> Optional[float]:
  try:
    return compiled.memory_analysis().temp_size_in_bytes / 2**20
  except Exception:  # pylint: disable=broad-except
    return None


def compile_step(p_step, args: tuple, warm: bool) -> tuple[Any, dict]:
  """Lowers and compiles the pmapped step; with `warm`, again after
  `jax.clear_caches()` (the persistent cache's copy, if it has one).

  Returns:
    (the first compiled program, its figures).
  """
  t0 = time.perf_counter()
  lowered = p_step.lower(*args)
  t1 = time.perf_counter()
  logging.info('Training step traced and lowered in %.1f s.', t1 - t0)
  compiled = lowered.compile()
  t2 = time.perf_counter()
  logging.info('Training step compiled in %.1f s (cold).', t2 - t1)
  # The compiled program's count, else the lowered one's: the program as
  # traced, before XLA's rewrites (which may hide work in library calls).
  compiled_flops, lowered_flops = _flops(compiled), _flops(lowered)
  figures = {'trace_s': t1 - t0, 'compile_s': t2 - t0,
             'flops_per_device_call': compiled_flops or lowered_flops,
             'flops_source': ('compiled' if compiled_flops else
                              'lowered' if lowered_flops else 'none'),
             'lowered_flops_per_device_call': lowered_flops,
             'temp_mb': _temp_mb(compiled)}
  if warm:
    hits = []

    def listener(event, **kwargs):
      del kwargs
      if event == _CACHE_HIT:
        hits.append(event)

    jax.clear_caches()
    jax.monitoring.register_event_listener(listener)
    try:
      t0 = time.perf_counter()
      lowered_again = p_step.lower(*args)
      t1 = time.perf_counter()
      lowered_again.compile()
      t2 = time.perf_counter()
    finally:
      jax.monitoring.unregister_event_listener(listener)
    figures.update(trace_warm_s=t1 - t0, compile_warm_s=t2 - t0,
                   warm_cache_hit=bool(hits))
    logging.info('Training step traced and compiled again in %.1f s (warm; '
                 'persistent cache hit: %s).', t2 - t0, bool(hits))
  return compiled, figures


def run_ours(measure_warm: bool) -> dict:
  """Times training and scoring; returns the figures."""
  config = _config()
  image_shape = (28, 28, 1) if FLAGS.arch == 'mnist' else (32, 32, 3)
  devices = jax.local_devices()
  num_train = FLAGS.batch * 8
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (num_train, *image_shape)).astype(np.float32)
  state = train_state.create_train_state(jax.random.key(0), config, image_shape)
  ae_model, critic_model = nets.create_models(config.model, image_shape,
                                                axis_name=placement.AXIS)
  config.sampling.start_step = 0  # Negatives on from the first step.
  settings = step_settings.StepSettings.from_config(
      config, local_batch=FLAGS.batch // len(devices),
      num_devices=len(devices))
  schedule = schedules.make_schedule(config, 8, 10**6)
  data = placement.epoch_data(
      placement.put_train_set(images, np.zeros(num_train, np.int32), 8,
                              schedule, devices),
      np.arange(num_train), settings.local_batch, 8, devices)
  p_step = train.make_p_train_step(ae_model, critic_model, settings,
                                   num_steps=FLAGS.steps_per_call,
                                   devices=devices)
  state, rng = placement.replicate((state, jax.random.key(1)), devices)
  count = (np.int32(FLAGS.steps_per_call),) if FLAGS.steps_per_call > 1 else ()
  step, figures = compile_step(p_step, (state, data, rng, *count),
                               warm=measure_warm)
  t0 = time.perf_counter()
  state, metrics = step(state, data, rng, *count)
  jax.block_until_ready((state, metrics))
  first_call_s = time.perf_counter() - t0
  for _ in range(FLAGS.warmup):
    state, metrics = step(state, data, rng, *count)
  jax.block_until_ready(state)
  times = []
  for _ in range(FLAGS.steps):
    t0 = time.perf_counter()
    state, metrics = step(state, data, rng, *count)
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  call_s = statistics.median(times)
  images_per_call = FLAGS.batch * FLAGS.steps_per_call

  score_img_per_s = None
  if FLAGS.score_batches:
    eval_ae, eval_critic = nets.create_models(config.model, image_shape,
                                                inference=True)
    scorer = scoring.scorer_from_state(state, eval_ae, eval_critic,
                                       batch_size=FLAGS.batch,
                                       devices=devices)
    scorer(images[:FLAGS.batch])  # Compile.
    t0 = time.perf_counter()
    for _ in range(FLAGS.score_batches):
      scorer(images[:FLAGS.batch])
    score_img_per_s = (FLAGS.score_batches * FLAGS.batch
                       / (time.perf_counter() - t0))

  kind = devices[0].device_kind
  flops = figures.pop('flops_per_device_call')
  lowered_flops = figures.pop('lowered_flops_per_device_call')
  achieved = flops / call_s if flops else None
  peak = FLAGS.peak_flops or peak_flops(kind, FLAGS.compute_dtype)
  tf32 = (peak_flops(kind, 'tf32') if FLAGS.compute_dtype == 'float32'
          and not FLAGS.peak_flops else None)
  return {
      'impl': 'ama_jax', 'arch': FLAGS.arch, 'batch': FLAGS.batch,
      'n_critic': FLAGS.n_critic, 'paper_inter': FLAGS.paper_inter,
      'compute_dtype': FLAGS.compute_dtype, 'conv_impl': FLAGS.conv_impl,
      'conv_forms': conv_layers.conv_forms(FLAGS.conv_impl),
      'tiny': FLAGS.tiny, 'steps_per_call': FLAGS.steps_per_call,
      'train_img_per_s': images_per_call / call_s,
      'train_step_s_median': call_s / FLAGS.steps_per_call,
      'step_ms': 1e3 * call_s / FLAGS.steps_per_call,
      'train_call_s': [round(t, 4) for t in times],
      'score_img_per_s': score_img_per_s,
      **figures, 'first_call_s': first_call_s,
      'flops_per_step': (flops * len(devices) / FLAGS.steps_per_call
                         if flops else None),
      'lowered_flops_per_step': (lowered_flops * len(devices)
                                 / FLAGS.steps_per_call
                                 if lowered_flops else None),
      'achieved_flops_per_s': achieved,
      'peak_flops_per_s': peak,
      'utilisation': achieved / peak if achieved and peak else None,
      'utilisation_tf32': achieved / tf32 if achieved and tf32 else None,
      'peak_memory_mb': _peak_memory_mb(),
      'device_kind': kind, 'device_count': len(devices),
      'backend': jax.default_backend(),
      'finite': bool(metrics['finite']),
  }


def run_torch() -> dict:
  """Runs the PyTorch reference once with the same settings."""
  ref = FLAGS.torch_ref
  if not ref or not os.path.isfile(ref):
    raise errors.UserError(
        f'--torch_python needs the PyTorch reference script: pass '
        f'--torch_ref=PATH/torch_ref.py (or set AMA_JAX_TORCH_REF); got '
        f'{ref!r}.')
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


def _use_cache(folder: str) -> None:
  """JAX's persistent compilation cache in `folder` ('off': none), every
  program in it, as `runtime.setup` sets it (which would also import
  TensorFlow: memory this benchmark reports and never uses). A
  `JAX_COMPILATION_CACHE_DIR` in the environment is left to JAX."""
  if folder == 'off':
    jax.config.update('jax_enable_compilation_cache', False)
  elif not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir', folder)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def main(argv):
  del argv
  small = [f'--{name}={FLAGS[name].value}' for name in
           ('steps', 'rounds', 'steps_per_call') if FLAGS[name].value < 1]
  small += [f'--score_batches={FLAGS.score_batches}'] * (
      FLAGS.score_batches < 0)
  if small:
    raise errors.ConfigError(f'{", ".join(small)}: must be at least 1 '
                             '(--score_batches: 0 skips scoring).')
  runtime.cpu_tuning()  # Before JAX's first computation (as `main`).
  # The settings the flags make, checked as a training run checks them.
  try:
    config_checks.validate(_config(), num_devices=jax.local_device_count())
  except errors.ConfigError as e:
    raise errors.ConfigError(f'{e} (--batch sets train.batch_size, '
                             '--n_critic train.n_critic)') from e
  with tempfile.TemporaryDirectory(prefix='ama_jax_bench_cache_') as fresh:
    cache = FLAGS.cache_dir or fresh
    _use_cache(cache)
    warm = FLAGS.warm_compile and cache != 'off'
    ours, ref = [], []
    for i in range(FLAGS.rounds):
      ours.append(run_ours(measure_warm=warm and i == 0))
      if FLAGS.torch_python:
        ref.append(run_torch())
  # Compile figures from the first round (later rounds hit the cache).
  result = dict(ours[0])
  result['train_img_per_s'] = statistics.median(
      r['train_img_per_s'] for r in ours)
  if FLAGS.score_batches:
    result['score_img_per_s'] = statistics.median(
        r['score_img_per_s'] for r in ours)
  result['rounds'] = FLAGS.rounds
  result['round_train_img_per_s'] = [
      round(r['train_img_per_s'], 2) for r in ours]
  result['compilation_cache'] = (
      'fresh temporary folder' if not FLAGS.cache_dir else FLAGS.cache_dir)
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    result['compilation_cache'] = os.environ['JAX_COMPILATION_CACHE_DIR']
  if ref:
    t = statistics.median(r['train_img_s_median']
                          for r in ref)
    s = statistics.median(r['score_img_s_median']
                          for r in ref)
    result.update(torch_train_img_per_s=t, torch_score_img_per_s=s,
                  round_torch_train_img_per_s=[
                      round(r['train_img_s_median'], 2) for r in ref],
                  torch_args=FLAGS.torch_args,
                  train_ratio=result['train_img_per_s'] / t,
                  score_ratio=(result['score_img_per_s'] / s
                               if FLAGS.score_batches else None))
  line = json.dumps(result)
  print(line, flush=True)
  if FLAGS.json_out:
    with open(FLAGS.json_out, 'a') as f:
      f.write(line + '\n')


if __name__ == '__main__':
  cli.run_main(main)
