r"""The `ama-jax` console command: one entry point for every program.

  ama-jax train --config=configs/fmnist_mnist.py:quick --workdir=runs/quick
  ama-jax score --workdir=runs/quick --input=images.npy --output=scores.csv
  ama-jax export --workdir=runs/quick --output=runs/quick_scorer
  ama-jax reproduce --table=fmnist_oneclass --epochs=10
  ama-jax baselines --config=configs/fmnist_oneclass.py:0
  ama-jax benchmark --arch=mnist --batch=256
  ama-jax <command> --help

Each command runs the program `python -m <module>` runs (`COMMANDS`), with
the same flags, output and exit status; `pip install -e .` (or
`scripts/setup.sh`) installs the command.
"""
import runpy
import sys
from typing import Optional, Sequence

# command -> (module, one-line description).
COMMANDS = {
    'train': ('ama_jax.main', 'train and evaluate a detector from a config'),
    'score': ('ama_jax.tools.score',
              'score images with a trained or exported detector (CSV)'),
    'export': ('ama_jax.tools.export',
               'write a self-contained StableHLO / SavedModel scorer'),
    'reproduce': ('ama_jax.tools.reproduce',
                  "train and report one of the paper's tables"),
    'baselines': ('ama_jax.tools.baselines',
                  'raw-pixel kNN, PCA and OC-SVM on the same split'),
    'benchmark': ('ama_jax.tools.benchmark',
                  'time a training step and scoring (one JSON line)'),
    'idx-to-pngs': ('ama_jax.tools.idx_to_pngs',
                    'write MNIST-style IDX files as a folder of PNGs'),
}


def usage() -> str:
  """The command's help text."""
  width = max(len(c) for c in COMMANDS)
  lines = ['usage: ama-jax <command> [flags...]', '',
           'Adversarial Mirrored AutoEncoder anomaly detection.', '',
           'commands:']
  lines += [f'  {c:<{width}}  {d}' for c, (_, d) in COMMANDS.items()]
  lines += ['', "'ama-jax <command> --help' lists a command's flags."]
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs `ama-jax <command> [flags...]`; returns the exit status."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv or argv[0] in ('-h', '--help', 'help'):
    print(usage())
    return 0 if argv else 2
  if argv[0] == '--version':
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    try:
      print(f'ama-jax {metadata.version("ama-jax")}')
    except metadata.PackageNotFoundError:
      print('ama-jax (not installed as a package)')
    return 0
  command, rest = argv[0], argv[1:]
  if command not in COMMANDS:
    sys.stderr.write(f'error: unknown command {command!r}; the commands are '
                     f'{", ".join(COMMANDS)} (see ama-jax --help).\n')
    return 2
  module = COMMANDS[command][0]
  sys.argv = [f'ama-jax {command}'] + rest
  try:
    runpy.run_module(module, run_name='__main__', alter_sys=True)
  except SystemExit as e:  # absl's app.run ends with sys.exit.
    code = e.code
    if code is None:
      return 0
    if isinstance(code, int):
      return code
    sys.stderr.write(f'{code}\n')
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
