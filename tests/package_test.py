"""The installable package: pyproject.toml, requirements.txt and `ama-jax`."""
import importlib.util
import pathlib
import re
import subprocess
import sys
import tomllib

from packaging import requirements as pkg_requirements
from packaging import version as pkg_version
import pytest

from ama_jax.tools import console

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _project() -> dict:
  return tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']


def _pins() -> dict[str, str]:
  pins = {}
  for line in (ROOT / 'requirements.txt').read_text().splitlines():
    line = line.split('#')[0].strip()
    if line:
      name, _, pinned = line.partition('==')
      pins[_canonical(name)] = pinned
  return pins


def _canonical(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def test_every_pin_satisfies_the_package_requirements():
  """requirements.txt (exact versions) installs what pyproject.toml asks."""
  project = _project()
  pins = _pins()
  wanted = project['dependencies'] + project['optional-dependencies']['test']
  for spec in wanted:
    req = pkg_requirements.Requirement(spec)
    name = _canonical(req.name)
    assert name in pins, f'{req.name} is required but not pinned'
    assert req.specifier.contains(pkg_version.Version(pins[name])), (
        f'{name}=={pins[name]} does not satisfy {spec}')
  required = {_canonical(pkg_requirements.Requirement(s).name) for s in wanted}
  assert set(pins) == required, (
      f'pinned but not required: {sorted(set(pins) - required)}')


def test_accelerator_extras_name_jax_builds():
  extras = _project()['optional-dependencies']
  for extra, jax_extra in (('cuda', 'cuda13'), ('cuda12', 'cuda12'),
                           ('tpu', 'tpu')):
    req = pkg_requirements.Requirement(extras[extra][0])
    assert req.name == 'jax' and jax_extra in req.extras


def test_console_script_and_its_programs_exist():
  assert _project()['scripts']['ama-jax'] == 'ama_jax.tools.console:main'
  for command, (module, _) in console.COMMANDS.items():
    assert importlib.util.find_spec(module) is not None, (command, module)
  assert set(console.COMMANDS) >= {'train', 'score', 'export', 'reproduce',
                                   'baselines', 'benchmark'}


def _console(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, '-m', 'ama_jax.tools.console', *args], cwd=ROOT,
      capture_output=True, text=True, timeout=300, check=False)


def test_help_lists_the_commands():
  done = _console('--help')
  assert done.returncode == 0
  for command in console.COMMANDS:
    assert f'  {command} ' in done.stdout


@pytest.mark.parametrize('args, status, line', [
    ((), 2, 'usage: ama-jax <command>'),
    (('bogus',), 2, "error: unknown command 'bogus'"),
])
def test_bad_command_lines(args, status, line):
  done = _console(*args)
  assert done.returncode == status
  assert line in done.stdout + done.stderr


def test_a_command_runs_its_program_with_its_exit_status(tmp_path):
  """`ama-jax score` is `python -m ama_jax.tools.score`: its one-line error
  and exit status 1 come through."""
  done = _console('score', f'--workdir={tmp_path / "none"}',
                  f'--input={tmp_path / "x.npy"}',
                  f'--output={tmp_path / "o.csv"}')
  assert done.returncode == 1, done.stderr
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith('error: Workdir ') and 'does not exist' in last
  assert 'has no results.json' not in done.stderr  # No misleading warning.


def test_train_help_is_the_training_programs():
  done = _console('train', '--helpshort')
  direct = subprocess.run(
      [sys.executable, '-m', 'ama_jax.main', '--helpshort'], cwd=ROOT,
      capture_output=True, text=True, timeout=300, check=False)
  assert '--workdir' in done.stdout and '--config' in done.stdout
  assert done.returncode == direct.returncode  # absl's status for --help.
