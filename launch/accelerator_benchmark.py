r"""Accelerator benchmark in a time box: compile time, img/s, dtypes; then training.

  BUDGET_S=540 python3 launch/accelerator_benchmark.py OUT_DIR
  python3 launch/accelerator_benchmark.py OUT_DIR --smoke --budget_s=900   # CPU check
  python3 launch/accelerator_benchmark.py OUT_DIR --dry_run      # prints the plan

For an offline machine (no network) whose `python3` has jax with its
accelerator plugin, flax, optax, orbax, scikit-learn and matplotlib; run it from the repository root with that Python. What such
a machine lacks travels beside the repo, untracked, as for
`launch/accelerator_reproduce.sh` (whose header lists it): `.whl/` (wheels,
installed into /tmp/site) and `.gpu/idx.tar.xz` (the MNIST and
Fashion-MNIST IDX files, unpacked into data/). Everything below happens
within BUDGET_S seconds (`--budget_s`, else $BUDGET_S, else 540) counted
from the start:

1. Set-up: wheels, IDX files, versions and devices, both TFDS copies
   prepared once (the training workers would race).
2. Benchmarks, until `--bench_s` seconds have passed (default 55% of the
   budget): `python -m ama_jax.tools.benchmark` for every (arch, batch,
   dtype) of `--archs` x `--batches` x `--dtypes`, largest batch first, each
   in a fresh process that compiles the step cold (its own empty persistent
   cache) and again warm (from that cache), times `--bench_steps` steps and
   reports FLOPs, utilisation of the chip's peak and memory. `--variant`
   adds runs of the first benchmark with more XLA flags (compile-time
   levers to measure, e.g. autotuning off), right after it. Each appends
   its JSON line to OUT/bench.jsonl and its log to OUT/bench.log. A
   benchmark still running when the benchmarks' time is up is stopped (its
   log says how far it got: traced, compiled cold, compiled warm); the
   benchmarks it leaves are listed as skipped.
3. Training, for what is left minus `--pack_s` and `--stop_s`:
   `launch/parallel_reproduce.py --oneclass_epochs=0
   --epoch_choices=<--train_epochs>`, i.e. the three seeds of
   Fashion-MNIST->MNIST (`ama_jax.tools.reproduce --table=fmnist_mnist
   --epochs=100 --shard=s/3 --recipes=paper`) side by side. Runs not finished by then are
   stopped; their checkpoints stay on that machine only (too big to carry
   back), so OUT records how far each got.
4. Packing: OUT/runs.tgz (each run's results.json, history.jsonl and
   metrics.jsonl, the table's .md/.json and the workers' logs; no
   checkpoints) and OUT/summary.json (each phase's seconds, each
   benchmark's outcome and figures, each run's last step and whether it
   finished). OUT holds at most 6 files, all small:
   run.log, bench.jsonl, bench.log, launcher.log, runs.tgz,
   summary.json.

`--smoke` shrinks everything for a CPU check of the script itself: tiny
models (the benchmark's `--tiny`), 1 timed step, batches 8 and 16,
`:runlocal` training runs of 2 epochs. `--dry_run` prints the plan and writes summary.json
without running anything. Phases can be chosen (`--phases=bench`,
`--phases=train`). Nothing here imports JAX: the phases are subprocesses.
"""
import argparse
import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import tarfile
import time
from typing import Optional

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_BUDGET_S = 540
# Versions and devices; with an argument, the TFDS copies too (training).
_PREPARE = """
import sys, time
t = time.time()
import jax, flax, optax, orbax.checkpoint, tensorflow_datasets, sklearn
print('python packages:', {m.__name__: getattr(m, '__version__', '?') for m in
      (jax, flax, optax, orbax.checkpoint, tensorflow_datasets, sklearn)})
print('devices:', jax.devices())
if sys.argv[1:] == ['prepare']:
  from ama_jax.data import idx_images
  for name in ('mnist', 'fashion_mnist'):
    idx_images.prepare(name, data_dir=idx_images.DEFAULT_DATA_DIR,
                       raw_dir=idx_images.DEFAULT_RAW_DIR)
print(f'set-up checks and TFDS preparation: {time.time() - t:.1f} s')
"""


@dataclasses.dataclass(frozen=True)
class Benchmark:
  arch: str
  batch: int
  dtype: str
  xla_flags: str = ''  # Added to XLA_FLAGS (a variant; see --variant).
  variant: int = 0

  @property
  def name(self) -> str:
    suffix = f'_variant{self.variant}' if self.xla_flags else ''
    return f'{self.arch}_b{self.batch}_{self.dtype}{suffix}'


def benchmarks(archs: list[str], batches: list[int], dtypes: list[str],
               variants: tuple[str, ...] = ()) -> list[Benchmark]:
  """The benchmarks in the order they run: largest batch first (the
  utilisation figure), then archs and dtypes in the order given; each
  variant (XLA flags) of the first one right after it."""
  plan = [Benchmark(a, b, d) for b in sorted(batches, reverse=True)
          for a in archs for d in dtypes]
  extra = [dataclasses.replace(plan[0], xla_flags=f, variant=i + 1)
           for i, f in enumerate(variants)] if plan else []
  return plan[:1] + extra + plan[1:]


def benchmark_command(bench: Benchmark, args: argparse.Namespace,
                      json_out: pathlib.Path) -> list[str]:
  cmd = [sys.executable, '-m', 'ama_jax.tools.benchmark',
         f'--arch={bench.arch}', f'--batch={bench.batch}',
         f'--compute_dtype={bench.dtype}',
         f'--steps={args.bench_steps}', f'--warmup={args.bench_warmup}',
         f'--score_batches={args.score_batches}', f'--json_out={json_out}']
  if args.smoke:
    cmd.append('--tiny')
  return cmd + list(args.bench_flag)


def train_command(args: argparse.Namespace, budget_s: float,
                  out: pathlib.Path) -> list[str]:
  cmd = [sys.executable, str(REPO / 'launch' / 'parallel_reproduce.py'),
         f'--out={out}', f'--budget_s={max(0.0, budget_s):.0f}',
         '--oneclass_epochs=0', f'--epoch_choices={args.train_epochs}',
         f'--progress_s={args.progress_s}']
  if args.smoke:
    cmd.append('--worker_flag=--runlocal')
  if args.recipes:
    cmd.append(f'--worker_flag=--recipes={args.recipes}')
  return cmd + [f'--worker_flag={f}' for f in args.worker_flag]


class Clock:
  """Seconds since the start, and what is left of a deadline."""

  def __init__(self, budget_s: float):
    self.start = time.time()
    self.budget_s = budget_s

  def elapsed(self) -> float:
    return time.time() - self.start

  def left(self, until: Optional[float] = None) -> float:
    return (self.budget_s if until is None else until) - self.elapsed()


def run(cmd: list[str], *, timeout_s: float, log: pathlib.Path,
        env: Optional[dict] = None) -> dict:
  """Runs `cmd` (output appended to `log`) for at most `timeout_s` seconds;
  its whole process group is stopped at the limit (SIGTERM, then SIGKILL)."""
  t0 = time.time()
  with log.open('a') as f:
    f.write(f'$ {" ".join(cmd)}\n')
    f.flush()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f,
                            stderr=subprocess.STDOUT, start_new_session=True)
    timed_out = False
    try:
      proc.wait(timeout=max(1.0, timeout_s))
    except subprocess.TimeoutExpired:
      timed_out = True
      os.killpg(proc.pid, signal.SIGTERM)
      try:
        proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    f.write(f'# rc={proc.returncode} timed_out={timed_out} after '
            f'{time.time() - t0:.1f} s\n')
  return {'rc': proc.returncode, 'timed_out': timed_out,
          'wall_s': round(time.time() - t0, 1)}


def setup(args: argparse.Namespace, env: dict, log: pathlib.Path,
          clock: Clock) -> dict:
  """Wheels, IDX files, versions and devices, TFDS copies (phase 1)."""
  wheels = sorted((REPO / '.whl').glob('*.whl'))
  if wheels:
    result = run([sys.executable, '-m', 'pip', 'install', '-q', '--no-index',
                  '--no-deps', '--no-compile', '--no-cache-dir', '--upgrade',
                  '--target', '/tmp/site', *map(str, wheels)],
                 timeout_s=clock.left(), log=log, env=env)
    if result['rc']:
      return {'failed': 'wheels', **result}
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in ('/tmp/site', env.get('PYTHONPATH')) if p)
  idx = REPO / '.gpu' / 'idx.tar.xz'
  if not (REPO / 'data' / 'raw' / 'mnist').is_dir() and idx.is_file():
    (REPO / 'data').mkdir(exist_ok=True)
    with tarfile.open(idx) as tar:
      tar.extractall(REPO / 'data', **(
          {'filter': 'data'} if hasattr(tarfile, 'data_filter') else {}))
  if _has('nvidia-smi'):
    run(['nvidia-smi', '--query-gpu=name,memory.total,driver_version',
         '--format=csv'], timeout_s=20, log=log, env=env)
  result = run([sys.executable, '-c', _PREPARE,
                *(['prepare'] if 'train' in args.phases else [])],
               timeout_s=clock.left(), log=log, env=env)
  return {'failed': 'prepare', **result} if result['rc'] else result


def say(out: pathlib.Path, record: dict) -> None:
  """Prints one JSON line and appends it to OUT/run.log."""
  line = json.dumps(record)
  print(line, flush=True)
  with (out / 'run.log').open('a') as f:
    f.write(line + '\n')


def _has(program: str) -> bool:
  return any((pathlib.Path(p) / program).is_file()
             for p in os.environ.get('PATH', '').split(os.pathsep) if p)


def run_benchmarks(args, plan: list[Benchmark], out: pathlib.Path, env: dict,
                   clock: Clock, until: float) -> list[dict]:
  """Phase 2: each benchmark in a fresh process, while time is left."""
  json_out, log = out / 'bench.jsonl', out / 'bench.log'
  # A cold compile needs an empty cache: no shared cache from outside.
  bench_env = {k: v for k, v in env.items()
               if k != 'JAX_COMPILATION_CACHE_DIR'}
  outcomes = []
  for bench in plan:
    left = min(clock.left(until), args.bench_timeout_s)
    if left < args.bench_min_s:
      outcomes.append({'name': bench.name, 'skipped': True})
      continue
    lines = _read_lines(json_out)
    env_b = bench_env
    if bench.xla_flags:
      env_b = dict(bench_env, XLA_FLAGS=' '.join(
          f for f in (bench_env.get('XLA_FLAGS', ''), bench.xla_flags) if f))
    result = run(benchmark_command(bench, args, json_out), timeout_s=left,
                 log=log, env=env_b)
    new = _read_lines(json_out)[len(lines):]
    outcome = {'name': bench.name, **result}
    if bench.xla_flags:
      outcome['xla_flags'] = bench.xla_flags
    if new and _json(new[-1]):
      outcome['result'] = _json(new[-1])
    outcomes.append(outcome)
    say(out, _brief(outcome))
  return outcomes


def _brief(outcome: dict) -> dict:
  """The figures of a benchmark outcome that matter at a glance."""
  r = outcome.get('result', {})
  keys = ('compile_s', 'compile_warm_s', 'warm_cache_hit', 'step_ms',
          'train_img_per_s', 'flops_per_step', 'utilisation',
          'peak_memory_mb')
  return {'name': outcome['name'],
          **{k: outcome[k] for k in ('xla_flags', 'rc', 'timed_out', 'wall_s',
                                     'skipped') if k in outcome},
          **{k: (round(r[k], 4) if isinstance(r.get(k), float) else r.get(k))
             for k in keys if k in r}}


def _read_lines(path: pathlib.Path) -> list[str]:
  if not path.exists():
    return []
  return [l for l in path.read_text().splitlines() if l.strip()]


def run_training(args, out: pathlib.Path, work: pathlib.Path, env: dict,
                 clock: Clock) -> dict:
  """Phase 3: the three seeds side by side, for what is left."""
  # parallel_reproduce stops its workers at its budget, then waits for
  # them (up to 15 s each; SIGTERM usually ends them at once): `stop_s`
  # is kept for that, and the whole process group is stopped after it.
  budget = clock.left() - args.pack_s - args.stop_s
  if budget < args.train_min_s:
    return {'skipped': True, 'budget_s': round(budget, 1)}
  result = run(train_command(args, budget, work / 'reproduce'),
               timeout_s=budget + args.stop_s, log=out / 'launcher.log',
               env=env)
  # The launcher's JSON lines: progress, then (unless it was stopped) its
  # summary, the one with 'workers'.
  records = [_json(l) for l in _read_lines(out / 'launcher.log')
             if l.startswith('{')]
  summaries = [r for r in records if r and 'workers' in r]
  return {**result, 'budget_s': round(budget, 1),
          'launcher_summary': summaries[-1] if summaries else None,
          'runs': _runs(work / 'reproduce')}


def _json(line: str) -> Optional[dict]:
  try:
    return json.loads(line)
  except json.JSONDecodeError:
    return None  # A line cut by a stop.


def _runs(folder: pathlib.Path) -> list[dict]:
  """Each training run's last logged step and whether it finished."""
  runs = []
  for history in sorted(folder.glob('**/history.jsonl')):
    steps = [(_json(line) or {}).get('step', 0)
             for line in history.read_text().splitlines()]
    runs.append({'run': str(history.parent.relative_to(folder)),
                 'last_step': max(steps, default=0),
                 'finished': (history.parent / 'results.json').exists()})
  return runs


def pack(work: pathlib.Path, out: pathlib.Path) -> int:
  """The small files of the training runs into OUT/runs.tgz."""
  folder = work / 'reproduce'
  files = [p for p in folder.glob('**/*') if p.is_file()
           and p.suffix in ('.json', '.jsonl', '.md', '.log')
           and not {'checkpoints', 'best', 'jax_cache'} & set(
               p.relative_to(folder).parts)
           and p.stat().st_size < 4 * 2**20] if folder.exists() else []
  with tarfile.open(out / 'runs.tgz', 'w:gz') as tar:
    for p in files:
      tar.add(p, arcname=str(p.relative_to(folder)))
  return len(files)


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('out', help='Folder for the files to bring back.')
  parser.add_argument('--budget_s', type=float, default=None,
                      help='Seconds from start to the end of packing '
                      f'(default: $BUDGET_S, else {DEFAULT_BUDGET_S}).')
  parser.add_argument('--phases', default='bench,train',
                      help='Phases to run, in order: bench, train.')
  parser.add_argument('--bench_s', type=float, default=None,
                      help='Seconds from start until the benchmarks stop '
                      '(default: 55%% of the budget).')
  parser.add_argument('--bench_timeout_s', type=float, default=180,
                      help='At most this long for one benchmark.')
  parser.add_argument('--bench_min_s', type=float, default=30,
                      help='No benchmark starts with less time than this.')
  parser.add_argument('--archs', default='cifar,mnist')
  parser.add_argument('--batches', default=None,
                      help='Global batch sizes (default 256,64; smoke 16,8).')
  parser.add_argument('--dtypes', default='bfloat16,float32')
  parser.add_argument('--bench_steps', type=int, default=None,
                      help='Timed steps per benchmark (default 20; smoke 1).')
  parser.add_argument('--bench_warmup', type=int, default=None,
                      help='Untimed steps after the first (default 2; '
                      'smoke 0).')
  parser.add_argument('--score_batches', type=int, default=0,
                      help='Timed scoring batches (0: no scoring, whose '
                      'compilation would take time from the budget).')
  parser.add_argument('--bench_flag', action='append', default=[],
                      help='Extra flag for every benchmark (repeat).')
  parser.add_argument('--variant', action='append', default=[],
                      help='XLA flags of one more run of the first benchmark '
                      '(repeat), e.g. --variant=--xla_gpu_autotune_level=0 '
                      'to see what autotuning costs in compile time.')
  parser.add_argument('--train_epochs', type=int, default=None,
                      help='Epochs of the three runs (default 100; smoke 2).')
  parser.add_argument('--recipes', default='paper',
                      help="ama_jax.tools.reproduce's --recipes for the runs "
                      "(default: the paper's, one run per seed; '' leaves "
                      "reproduce's default, every recipe).")
  parser.add_argument('--train_min_s', type=float, default=60,
                      help='No training starts with less time than this.')
  parser.add_argument('--worker_flag', action='append', default=[],
                      help='Extra flag for every training worker (repeat).')
  parser.add_argument('--progress_s', type=float, default=30.0)
  parser.add_argument('--pack_s', type=float, default=20,
                      help='Seconds kept for packing at the end.')
  parser.add_argument('--stop_s', type=float, default=30,
                      help='Seconds kept for stopping the training workers.')
  parser.add_argument('--work', default=None,
                      help='Folder of the training runs (default: '
                      '<repo>/runs/accelerator_benchmark).')
  parser.add_argument('--smoke', action='store_true',
                      help='Tiny settings: a CPU check of this script.')
  parser.add_argument('--dry_run', action='store_true',
                      help='Print the plan; run nothing.')
  args = parser.parse_args(argv)
  if args.budget_s is None:
    args.budget_s = float(os.environ.get('BUDGET_S') or DEFAULT_BUDGET_S)
  if args.bench_s is None:
    args.bench_s = 0.55 * args.budget_s
  defaults = dict(batches='16,8', bench_steps=1, bench_warmup=0,
                  train_epochs=2) if args.smoke else dict(
                      batches='256,64', bench_steps=20, bench_warmup=2,
                      train_epochs=100)
  for name, value in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  args.phases = [p for p in args.phases.split(',') if p]
  unknown = set(args.phases) - {'bench', 'train'}
  if unknown:
    parser.error(f'unknown phases {sorted(unknown)}; choose bench, train')
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  clock = Clock(args.budget_s)
  out = pathlib.Path(args.out).resolve()
  out.mkdir(parents=True, exist_ok=True)
  work = pathlib.Path(args.work or REPO / 'runs' / 'accelerator_benchmark').resolve()
  plan = benchmarks(args.archs.split(','),
                    [int(b) for b in str(args.batches).split(',')],
                    args.dtypes.split(','), tuple(args.variant))
  summary = {'budget_s': args.budget_s, 'bench_s': args.bench_s,
             'phases': args.phases, 'smoke': args.smoke,
             'plan': {'benchmarks': [b.name for b in plan] if 'bench' in
                      args.phases else [],
                      'benchmark_command': benchmark_command(
                          plan[0], args, out / 'bench.jsonl') if plan else [],
                      'train_command': train_command(
                          args, args.budget_s - args.pack_s - args.stop_s,
                          work / 'reproduce') if 'train' in args.phases
                      else []}}
  if args.dry_run:
    print(json.dumps(summary, indent=1), flush=True)
    (out / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
    return summary
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  summary['setup'] = setup(args, env, out / 'run.log', clock)
  summary['setup']['elapsed_s'] = round(clock.elapsed(), 1)
  say(out, {'setup': summary['setup']})
  if 'failed' not in summary['setup']:
    for phase in args.phases:
      t0 = clock.elapsed()
      if phase == 'bench':
        summary['benchmarks'] = [_brief(o) | {'result': o.get('result')}
                                 for o in run_benchmarks(
                                     args, plan, out, env, clock,
                                     until=args.bench_s)]
      else:
        summary['training'] = run_training(args, out, work, env, clock)
        say(out, {'training': {k: v for k, v in summary['training'].items()
                               if k != 'launcher_summary'}})
      summary[f'{phase}_elapsed_s'] = round(clock.elapsed() - t0, 1)
  summary['packed_files'] = pack(work, out)
  summary['elapsed_s'] = round(clock.elapsed(), 1)
  (out / 'summary.json').write_text(json.dumps(summary, indent=1) + '\n')
  say(out, {'elapsed_s': summary['elapsed_s'],
            'files': sorted(p.name for p in out.iterdir())})
  return summary


if __name__ == '__main__':
  main()
