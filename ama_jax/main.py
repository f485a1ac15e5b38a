r"""Trains and evaluates AMA.

  python -m ama_jax.main --config=configs/fmnist_mnist.py --workdir=/tmp/ama
  python -m ama_jax.main --config=configs/mnist_oneclass.py:3 \
      --workdir=/tmp/m3 --config.train.num_epochs=20

Config fields are overridden with `--config.<field>=<value>`; a `:arg` suffix
selects a variant (`:runlocal` for a tiny smoke run). A workdir that holds a
checkpoint is resumed.

Known problems (a bad config value, a config file that does not load,
missing data, a workdir in use by another run, no readable checkpoint, a
diverging loss, a full disk) end in one line `error: ...` on stderr and
exit status 1; `--verbose` adds the traceback. SIGTERM, Ctrl-C, a
preemption notice or `train.time_limit_s` stop training at the next step
with a checkpoint of it, one line `stopped: ...` and exit status 75
(`stops.EXIT_STOPPED`); the same command resumes (ama_jax/process/stops.py).

Console: warnings, a progress line on stderr (`--progress=auto|on|off`),
the plan, one line per validation and the summary (stdout). The full log
(INFO, libraries' included) is appended to `<workdir>/log.txt` by process
0; `--verbosity=0` shows it on the console too (`console`).

Multi-host: every process runs the same command (launch/, README).
`jax.distributed.initialize()` is called under `--multihost`; without the
flag (`--nomultihost`: never) when the environment shows several processes:
  * SLURM: `SLURM_STEP_NUM_TASKS` > 1 (set by `srun` for a job step's tasks);
  * Cloud TPU: `TPU_WORKER_HOSTNAMES` names several hosts (GKE). A Cloud TPU
    VM slice keeps its worker list in its metadata server instead, so
    launch/tpu_vm.sh passes `--multihost`;
  * `--coordinator_address` is given.
JAX detects the coordinator, process count and index (SLURM, Cloud TPU, Open
MPI); elsewhere give each process `--coordinator_address=host:port
--num_processes=N --process_id=i` (CPU devices then talk over gloo).
"""
import json
import os
from typing import Optional

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ama_jax.reporting import console
from ama_jax.reporting import progress
from ama_jax.process import stops
from ama_jax.tools import cli

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs, '
                    'figures and results.json.')
flags.DEFINE_bool('multihost', None, 'Call jax.distributed.initialize() '
                  '(every process runs the same command). Default: detected '
                  '(see the module docstring).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, '
                    'for jax.distributed.initialize(); default: detected.')
flags.DEFINE_integer('num_processes', None, 'Number of processes; default: '
                     'detected.')
flags.DEFINE_integer('process_id', None, 'This process\'s index; default: '
                     'detected.')
flags.DEFINE_enum('progress', 'auto', list(console.PROGRESS_MODES),
                  'Training progress line on stderr (in place on a '
                  'terminal, a line per tenth of the run otherwise); auto: '
                  'unless --verbosity shows INFO logs.')
flags.DEFINE_string('compilation_cache', None, 'Folder of JAX\'s persistent '
                    'compilation cache; default: a per-user folder '
                    '(ama_jax/process/runtime.py); "off": none.')
config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file (configs/*.py[:arg]).',
    lock_config=True)
flags.mark_flags_as_required(['config', 'workdir'])


def _tasks(variable: str) -> int:
  """Number of processes an environment variable names (0: not set)."""
  value = os.environ.get(variable, '')
  if variable == 'TPU_WORKER_HOSTNAMES':
    return len([h for h in value.split(',') if h.strip()])
  return int(value) if value.strip().isdigit() else 0


def multihost() -> bool:
  """Whether this run is one of several processes (see the docstring)."""
  if FLAGS.multihost is not None:
    return FLAGS.multihost
  return (_tasks('SLURM_STEP_NUM_TASKS') > 1
          or _tasks('TPU_WORKER_HOSTNAMES') > 1
          or FLAGS.coordinator_address is not None)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  console.quiet(keep=True)  # Until the loop opens <workdir>/log.txt.
  console.configure(FLAGS.progress)
  if console.is_quiet():  # TensorFlow's C++ INFO lines too.
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')
  stops.catch_early()  # SIGTERM / SIGINT before training: stop at step 0.
  from ama_jax.process import runtime  # pylint: disable=g-import-not-at-top
  # Before JAX computes: malloc, compilation cache, TF off the GPU.
  runtime.setup(FLAGS.compilation_cache)
  import jax  # pylint: disable=g-import-not-at-top
  if multihost():
    # Cross-process collectives of CPU devices (GPUs and TPUs have their own).
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes,
                               process_id=FLAGS.process_id)
  from ama_jax.config import config_checks  # pylint: disable=g-import-not-at-top
  from ama_jax.training import loop  # pylint: disable=g-import-not-at-top
  from ama_jax.reporting import report  # pylint: disable=g-import-not-at-top
  cleared = config_checks.apply_start_given(
      FLAGS.config, list(config_flags.get_override_values(FLAGS['config'])))
  if cleared:
    logging.info('Atypical selection starts where the command line says; '
                 'cleared the config file\'s %s.', ', '.join(cleared))
  logging.info('JAX process %d/%d, local devices: %s', jax.process_index(),
               jax.process_count(), jax.local_devices())
  state = loop.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  if jax.process_index() == 0:
    progress.end_lines()
    step = int(jax.device_get(state.step))
    if _finished_at(FLAGS.workdir) == step:
      print(report.summary(FLAGS.workdir), flush=True)
    else:  # Stopped by train.halt_after_steps, before the final evaluation.
      print(f'ama_jax: halted at step {step} (train.halt_after_steps); the '
            'same command without it resumes.', flush=True)


def _finished_at(workdir: str) -> Optional[int]:
  """The step `<workdir>/results.json` was written at (None: no results)."""
  try:
    with open(os.path.join(workdir, 'results.json')) as f:
      return json.load(f).get('steps')
  except (OSError, ValueError, AttributeError):
    return None


if __name__ == '__main__':
  cli.run_main(main)
