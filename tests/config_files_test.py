"""Config files that do not load end `ama_jax.main` in one line.

Each case runs `python -m ama_jax.main --config=<file>[:<arg>]` on a broken
config file: the command must fail at once with status 1 and one line
`error: --config=...: ...` that names the file, the line where there is one
and the fix, with no traceback (unless --verbose / --verbosity=1) and no
workdir created.
"""
import os
import pathlib
import re
import subprocess
import sys
import tempfile

from absl.testing import absltest
from absl.testing import parameterized

from ama_jax.config import config_files
from configs import default
from configs import folder
from configs import mnist_oneclass

REPO = pathlib.Path(__file__).resolve().parents[1]
_ENV = dict(os.environ, PYTHONPATH=str(REPO))
_FILES = {
    'syntax.py': 'from configs import default\ndef get_config(:\n  pass\n',
    'raises.py': ('from configs import default\n\n'
                  'raise RuntimeError("no GPU quota")\n'),
    'opens.py': ('from configs import default\n'
                 'open("/nonexistent/settings.txt")\n'),
    'noget.py': 'from configs import default\nconfig = default.get_config()\n',
    'noarg.py': ('from configs import default\n'
                 'def get_config():\n  return default.get_config()\n'),
    'none.py': 'def get_config(arg=None):\n  del arg\n',
}


class ConfigFilesTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.dir = pathlib.Path(tempfile.mkdtemp(prefix='config_files_test_'))
    for name, text in _FILES.items():
      (cls.dir / name).write_text(text)

  def _main(self, config: str, *flags: str) -> subprocess.CompletedProcess:
    self.workdir = pathlib.Path(self.create_tempdir().full_path) / 'never'
    config = config.replace('{dir}', str(self.dir))
    return subprocess.run(
        [sys.executable, '-m', 'ama_jax.main', f'--config={config}',
         f'--workdir={self.workdir}', *flags], cwd=REPO, env=_ENV,
        capture_output=True, text=True, timeout=300, check=False)

  def assertOneLine(self, proc, pattern: str) -> None:
    self.assertEqual(proc.returncode, 1, proc.stderr[-3000:])
    self.assertNotIn('Traceback', proc.stderr)
    lines = proc.stderr.strip().splitlines()
    self.assertEqual([l for l in lines if l.startswith('error:')], lines[-1:],
                     proc.stderr[-3000:])
    self.assertRegex(lines[-1], '^error: ' + pattern)
    self.assertFalse(self.workdir.exists())

  @parameterized.named_parameters(
      ('missing', '{dir}/nope.py',
       r'--config={dir}/nope\.py: no config file {dir}/nope\.py \(looked in '
       r'.*\); pass the path of a config file, e\.g\. --config=configs/'),
      ('folder', '{dir}', r'--config={dir}: {dir} is a folder; pass the path '
       'of a config file in it'),
      ('syntax_error', '{dir}/syntax.py',
       r'--config={dir}/syntax\.py: {dir}/syntax\.py, line 2: SyntaxError: '
       r'invalid syntax \(def get_config\(:\); correct that line\.$'),
      ('raises_on_import', '{dir}/raises.py:runlocal',
       r'--config={dir}/raises\.py:runlocal: {dir}/raises\.py, line 3: '
       r'RuntimeError: no GPU quota \(raised while importing {dir}/'
       r'raises\.py\); fix the file'),
      ('opens_a_missing_file_on_import', '{dir}/opens.py',
       r'--config={dir}/opens\.py: importing {dir}/opens\.py failed: '
       r"\[Errno 2\] No such file or directory: '/nonexistent/settings\.txt'"
       r'; fix the file'),
      ('no_get_config', '{dir}/noget.py',
       r'--config={dir}/noget\.py: {dir}/noget\.py defines no get_config\(\); '
       r'a config file defines get_config\(arg=None\)'),
      ('get_config_takes_no_arg', '{dir}/noarg.py:runlocal',
       r"--config={dir}/noarg\.py:runlocal: get_config\(\) of {dir}/noarg\.py "
       r"takes no argument \(TypeError: .*\); drop ':runlocal'\.$"),
      ('get_config_returns_none', '{dir}/none.py',
       r'--config={dir}/none\.py: get_config\(\) of {dir}/none\.py returned '
       r'None; it must return an ml_collections\.ConfigDict\.$'),
      ('get_config_rejects_the_arg', 'configs/mnist_oneclass.py:1,2',
       r'--config=configs/mnist_oneclass\.py:1,2: configs/default\.py, line '
       r"\d+, in parse_classes: ValueError: Expected one class token .* "
       r"\(raised by get_config\('1,2'\)\); check ':1,2'"),
      ('unknown_arg', 'configs/fmnist_mnist.py:runlocal,fast',
       r"--config=configs/fmnist_mnist\.py:runlocal,fast: configs/"
       r"fmnist_mnist\.py does not know the argument 'fast' \(its config is "
       r'the same without it\); its arguments include runlocal, quick, '
       'paper;'),
  )
  def test_broken_config_file_ends_in_one_line(self, config, pattern):
    proc = self._main(config, '--config.seed=1')
    self.assertOneLine(proc, pattern.replace('{dir}', re.escape(
        str(self.dir))))

  def test_verbose_or_verbosity_shows_the_config_files_traceback(self):
    for flag in ('--verbose', '--verbosity=1'):
      with self.subTest(flag):
        proc = self._main('{dir}/raises.py', flag)
        self.assertEqual(proc.returncode, 1)
        self.assertIn('Traceback', proc.stderr)
        self.assertIn('raise RuntimeError("no GPU quota")', proc.stderr)
        self.assertRegex(proc.stderr.strip().splitlines()[-1],
                         r'^error: --config=.*raises\.py, line 3: ')

  def test_invalid_time_limit_is_named(self):
    proc = self._main('configs/fmnist_mnist.py:runlocal',
                      '--config.train.time_limit_s=0')
    self.assertOneLine(proc, r'Invalid config \(1 problem\): '
                       r'train\.time_limit_s=0(\.0)?: must be a finite number '
                       r'> 0 or None\.$')

  def test_known_tokens_are_not_reported(self):
    self.assertEqual(config_files.unknown_tokens(
        mnist_oneclass.get_config, '0,runlocal'), [])
    self.assertEqual(config_files.unknown_tokens(
        folder.get_config, 'normal,cifar,paper'), [])
    self.assertEqual(config_files.unknown_tokens(
        default.get_config, 'quick,bogus'), ['bogus'])


if __name__ == '__main__':
  absltest.main()
