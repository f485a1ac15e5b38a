r"""Trains the MNIST-scale reproduction runs side by side on one accelerator.

  python3 launch/parallel_reproduce.py --out=runs/reproduce --budget_s=480

One small AMA run leaves a large accelerator mostly idle (the MNIST models are
a few MFLOP per image), so the runs of the tables go to parallel workers,
each a `python -m ama_jax.tools.reproduce ... --shard=i/n` process:

  stage 1  `mnist_oneclass`, one worker per digit, `--oneclass_epochs`
           (default: the paper's 100; 0 skips the stage).
  stage 2  `fmnist_mnist` (3 seeds) and its ablation (no interpolation, no
           atypical selection, neither; seed 0), one worker per run, at the
           largest epoch count of `--epoch_choices` that the measured
           throughput says will finish within the budget (the three seeds
           alone at the top count come before all six at fewer epochs).
           With stage 1 skipped and no `--steps_per_s`, nothing has been
           measured: the three seeds start at once at the largest count.

The throughput is measured, not assumed: once every stage-1 worker has
compiled its training step (once per run), the training steps that all
workers log (`history.jsonl`) are counted over `--measure_s` seconds. Workers still running when the budget
ends are stopped (their checkpoints stay: the same command resumes them).
The runs land where `ama_jax.tools.reproduce` puts them, so
`python -m ama_jax.tools.reproduce --table=... --report_only` reports them,
with the baselines, afterwards. Prints a JSON progress line (each worker's last
logged step) every `--progress_s` seconds and one JSON summary line at the
end. Workers share a persistent XLA compilation cache (`--compilation_cache`):
a resumed run, or one started after another of the same shapes and schedule
(another seed of a table) has compiled, can load its steps from it (runs
started together still compile side by side; cache hits were not measured).
Workers run with Python's faulthandler on, and a worker that has logged no
step when the budget ends gets SIGABRT, which prints its threads' stacks
into its log.

Progress is read from `metrics.jsonl`, which the training loop writes when
TensorFlow (hence TensorBoard) is absent, as on the accelerator machines
this was written for; with TensorFlow installed, pass `--steps_per_s`.
"""
import argparse
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
# Fashion-MNIST train minus 500 validation normals, batch 256 (results.json).
FMNIST_STEPS_PER_EPOCH = 232
ABLATION = ('no_inter', 'no_neg', 'neither')  # Runs 1-3 of the table.


def worker(name: str, workdir: pathlib.Path, args: list[str],
           logs: pathlib.Path, extra: list[str], cache: str = '') -> dict:
  """Starts one `ama_jax.tools.reproduce` process; `workdir` is its run's
  folder."""
  env = dict(os.environ, PYTHONUNBUFFERED='1', PYTHONFAULTHANDLER='1',
             XLA_PYTHON_CLIENT_PREALLOCATE='false')
  if cache:
    env['JAX_COMPILATION_CACHE_DIR'] = cache
  log = logs / f'{name}.log'
  proc = subprocess.Popen(
      [sys.executable, '-m', 'ama_jax.tools.reproduce', '--baselines=false',
       *args, *extra], cwd=REPO, env=env, stdout=log.open('w'),
      stderr=subprocess.STDOUT)
  return {'name': name, 'dir': workdir, 'log': log, 'proc': proc,
          'start': time.time()}


def logged_step(workdir: pathlib.Path) -> int:
  """The last training step a run logged (0 before its first flush)."""
  path = workdir / 'history.jsonl'
  if not path.exists():
    return 0
  steps = [json.loads(line).get('step', 0)
           for line in path.read_text().splitlines() if line.strip()]
  return max(steps, default=0)


def compiled(log: pathlib.Path) -> bool:
  """Whether a worker has compiled its training step (the loop logs it once;
  the step is the same program for the whole run)."""
  return log.exists() and 'compiled and ran once' in log.read_text()


def steps_per_epoch(log: pathlib.Path) -> int:
  match = re.search(r'(\d+) steps/epoch', log.read_text())
  return int(match.group(1)) if match else 0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default='runs/reproduce')
  parser.add_argument('--budget_s', type=float, required=True,
                      help='Wall-clock seconds from start to the last stop.')
  parser.add_argument('--oneclass_epochs', type=int, default=100,
                      help='Epochs of the one-class runs (0: skip them).')
  parser.add_argument('--epoch_choices', default='100,75,50,40,30,20,10,5')
  parser.add_argument('--measure_s', type=float, default=30.0)
  parser.add_argument('--compile_s', type=float, default=90.0,
                      help='Allowance for stage 2 start-up and compilation.')
  parser.add_argument('--final_s', type=float, default=45.0,
                      help='Allowance for final evaluation and writing.')
  parser.add_argument('--steps_per_s', type=float, default=None,
                      help='Aggregate rate to plan with, instead of measuring.')
  parser.add_argument('--progress_s', type=float, default=30.0,
                      help='Seconds between JSON progress lines.')
  parser.add_argument('--compilation_cache', default='<out>/jax_cache',
                      help="Workers' persistent XLA compilation cache "
                      "('' for none).")
  parser.add_argument('--worker_flag', action='append', default=[],
                      help='Extra flag for every worker (repeat), e.g. '
                      '--worker_flag=--runlocal for a smoke test.')
  args = parser.parse_args()
  t0 = time.time()
  deadline = t0 + args.budget_s
  out = pathlib.Path(args.out).resolve()
  logs = out / 'logs'
  logs.mkdir(parents=True, exist_ok=True)
  cache = args.compilation_cache.replace('<out>', str(out))
  e1 = args.oneclass_epochs
  classes = range(10) if e1 > 0 else ()
  workers = [worker(
      f'oneclass_{c}', out / f'mnist_oneclass_{c}' / 'full' / f'e{e1}_s0', [
          '--table=mnist_oneclass', '--seeds=1', f'--epochs={e1}',
          f'--classes={c}', f'--out={out}'], logs, args.worker_flag, cache)
             for c in classes]
  last_progress = [t0]

  def progress() -> None:
    if time.time() - last_progress[0] >= args.progress_s:
      last_progress[0] = time.time()
      print(json.dumps({'t': round(time.time() - t0), 'steps': {
          w['name']: logged_step(w['dir']) if w['proc'].poll() is None
          else f'rc={w["proc"].returncode}'
          for w in workers}}), flush=True)

  # Measure the aggregate rate once every worker is past compilation (a
  # window over a compilation under-measures: 55 vs ~95 steps/s for ten
  # workers on an H200, when the step still recompiled once negatives
  # started). Logged steps move in jumps (one flush per `log.every_steps`),
  # so the window lasts at least `measure_s` and until they have moved.
  rate, start = args.steps_per_s, None
  while classes and rate is None and time.time() < deadline - 60:
    time.sleep(2)
    progress()
    running = [w for w in workers if w['proc'].poll() is None]
    if start is None and all(compiled(w['log']) and logged_step(w['dir'])
                             for w in running):
      start = (sum(logged_step(w['dir']) for w in workers), time.time())
    elif start is not None and time.time() - start[1] >= args.measure_s:
      moved = sum(logged_step(w['dir']) for w in workers) - start[0]
      if moved or not running:
        rate = moved / (time.time() - start[1])
  stage1_need = sum(
      max(0, e1 * steps_per_epoch(w['log']) - logged_step(w['dir']))
      for w in workers if w['proc'].poll() is None)
  capacity = (rate or 0) * (deadline - time.time() - args.compile_s
                            - args.final_s) - stage1_need
  # Preference: all six runs at the most epochs; the three seeds alone at
  # the most epochs; then six, then three, at fewer.
  choices = sorted(map(int, args.epoch_choices.split(',')), reverse=True)
  plans = [(6, choices[0]), (3, choices[0])] + [
      (n, e) for n in (6, 3) for e in choices[1:]]
  runs, epochs = next(((n, e) for n, e in plans
                       if n * FMNIST_STEPS_PER_EPOCH * e <= capacity),
                      (0, None))
  if not classes and rate is None:  # Nothing measured, nothing planned.
    runs, epochs = 3, choices[0]
  if epochs:
    workers += [worker(
        f'fmnist_s{s}', out / 'fmnist_mnist' / 'full' / f'e{epochs}_s{s}', [
            '--table=fmnist_mnist', '--seeds=3', f'--epochs={epochs}',
            f'--shard={s}/3', f'--out={out}'], logs, args.worker_flag, cache)
                for s in range(3)]
    if runs == 6:
      workers += [worker(
          f'ablation_{v}', out / 'fmnist_mnist' / v / f'e{epochs}_s0', [
              '--table=ablation', '--base=fmnist_mnist', '--seeds=1',
              f'--epochs={epochs}', f'--shard={i}/4', f'--out={out}'], logs,
          args.worker_flag, cache) for i, v in enumerate(ABLATION, start=1)]

  while time.time() < deadline and any(w['proc'].poll() is None
                                       for w in workers):
    time.sleep(2)
    progress()
    for w in workers:
      if 'end' not in w and w['proc'].poll() is not None:
        w['end'] = time.time()
  for w in workers:
    if w['proc'].poll() is None:
      stalled = not logged_step(w['dir'])
      w['proc'].send_signal(signal.SIGABRT if stalled else signal.SIGTERM)
  for w in workers:
    try:
      w['proc'].wait(timeout=15)
    except subprocess.TimeoutExpired:
      w['proc'].kill()
      w['proc'].wait()
  print(json.dumps({
      'aggregate_steps_per_s': rate, 'stage1_steps_left': stage1_need,
      'oneclass_epochs': e1, 'fmnist_epochs': epochs, 'stage2_runs': runs,
      'elapsed_s': round(time.time() - t0, 1),
      'workers': [{'name': w['name'], 'rc': w['proc'].returncode,
                   'wall_s': round(w.get('end', time.time())
                                   - w['start'], 1)}
                  for w in workers]}), flush=True)


if __name__ == '__main__':
  main()
