"""Tests of `ama_jax.tools.cli.run_main`: known errors end in one line."""
import os
import pathlib
import subprocess
import sys
import textwrap

from absl.testing import absltest
from absl.testing import parameterized

REPO = pathlib.Path(__file__).resolve().parents[1]
# A program whose main raises what argv[1] names.
_PROGRAM = textwrap.dedent("""
    import sys
    from absl import app
    from ama_jax import errors
    from ama_jax.tools import cli

    def main(argv):
      what = argv[1]
      if what == 'ok':
        print('done')
      elif what == 'config':
        raise errors.ConfigError('train.batch_size=-1: must be an integer '
                                 '>= 1.\\nSecond line joins the first.')
      elif what == 'data':
        from ama_jax.data import input_pipeline
        raise input_pipeline.DataUnavailableError(
            'Could not load mnist/train: no network.')
      elif what == 'usage':
        raise app.UsageError('Unexpected arguments: [x]')
      elif what == 'interrupt':
        raise KeyboardInterrupt
      else:
        raise RuntimeError('a bug')

    if __name__ == '__main__':
      cli.run_main(main)
    """)


def _run(*args, env=None):
  return subprocess.run(
      [sys.executable, '-c', _PROGRAM, *args], cwd=REPO, capture_output=True,
      text=True, timeout=300,
      env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})))


class RunMainTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('config_error', 'config', 1,
       r'^error: train\.batch_size=-1: must be an integer >= 1\. Second line '
       r'joins the first\.$'),
      ('data_error_of_the_input_pipeline', 'data', 1,
       r'^error: Could not load mnist/train: no network\.$'),
      ('usage_error', 'usage', 1,
       r'^error: Unexpected arguments: \[x\] \(see --helpshort\)$'),
      ('interrupt', 'interrupt', 130, r'^error: interrupted$'),
  )
  def test_known_error_is_one_line_and_nonzero_exit(self, what, status,
                                                      line):
    proc = _run(what)
    self.assertEqual(proc.returncode, status, proc.stderr)
    self.assertNotIn('Traceback', proc.stderr)
    self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)
    self.assertRegex(proc.stderr.strip(), line)

  def test_verbose_shows_the_traceback_then_the_line(self):
    for args, env in ((('config', '--verbose'), None),
                      (('config',), {'AMA_JAX_VERBOSE': '1'})):
      with self.subTest(args=args, env=env):
        proc = _run(*args, env=env)
        self.assertEqual(proc.returncode, 1)
        self.assertIn('Traceback', proc.stderr)
        self.assertRegex(proc.stderr.strip().splitlines()[-1],
                         r'^error: train\.batch_size=-1')

  def test_unknown_error_keeps_its_traceback(self):
    proc = _run('bug')
    self.assertEqual(proc.returncode, 1)
    self.assertIn('Traceback', proc.stderr)
    self.assertIn('RuntimeError: a bug', proc.stderr)

  def test_success_and_bad_flag(self):
    proc = _run('ok')
    self.assertEqual((proc.returncode, proc.stdout.strip()), (0, 'done'))
    proc = _run('ok', '--verbose=maybe')
    self.assertEqual(proc.returncode, 1)
    self.assertRegex(proc.stderr.strip(), r'^error: .*verbose.*maybe')
    self.assertEqual(len(proc.stderr.strip().splitlines()), 1, proc.stderr)


class CheckpointFlagsTest(parameterized.TestCase):

  @parameterized.parameters('score', 'export')
  def test_program_help_lists_the_checkpoint_flags(self, program):
    # The shared flags live in cli.py; each program adopts them, so its
    # own --help (not only --helpfull) lists them. (absl's --help exits 1.)
    proc = subprocess.run(
        [sys.executable, '-m', f'ama_jax.tools.{program}', '--help'],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=str(REPO)))
    own = proc.stdout.split(f'ama_jax/tools/{program}.py:', 1)
    self.assertLen(own, 2, proc.stdout)
    for flag in ('--workdir', '--step', '--kind: <best|latest>'):
      self.assertIn(flag, own[1])


if __name__ == '__main__':
  absltest.main()
