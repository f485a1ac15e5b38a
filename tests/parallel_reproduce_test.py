"""Tests of the progress readers of `launch/parallel_reproduce.py`."""
import importlib.util
import json
import pathlib
import tempfile

from absl.testing import absltest


_PATH = pathlib.Path(__file__).resolve().parents[1] / 'launch'
_SPEC = importlib.util.spec_from_file_location(
    'parallel_reproduce', _PATH / 'parallel_reproduce.py')
launcher = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(launcher)


class ProgressTest(absltest.TestCase):

  def test_logged_step_and_steps_per_epoch(self):
    with tempfile.TemporaryDirectory() as d:
      workdir = pathlib.Path(d)
      self.assertEqual(launcher.logged_step(workdir), 0)  # Not started.
      (workdir / 'history.jsonl').write_text('\n'.join(json.dumps(r) for r in (
          {'kind': 'train', 'step': 50, 'ae_loss': 1.0},
          {'kind': 'val', 'step': 44, 'auroc': 0.5})) + '\n')
      self.assertEqual(launcher.logged_step(workdir), 50)
      log = workdir / 'w.log'
      log.write_text('I loop.py] Global batch 256 = 256 per device x 1 '
                     'devices; 5823 training images, 22 steps/epoch, 50 '
                     'epochs.\n')
      self.assertEqual(launcher.steps_per_epoch(log), 22)
      log.write_text('still loading\n')
      self.assertEqual(launcher.steps_per_epoch(log), 0)

  def test_compiled_reads_the_loops_compile_line(self):
    with tempfile.TemporaryDirectory() as d:
      log = pathlib.Path(d) / 'w.log'
      self.assertFalse(launcher.compiled(log))  # No log yet.
      log.write_text('I loop.py] Global batch 256\n')
      self.assertFalse(launcher.compiled(log))
      log.write_text(log.read_text() + 'I loop.py:317] Training step (1 '
                     'step(s) per call) compiled and ran once in 107.2 s.\n')
      self.assertTrue(launcher.compiled(log))


if __name__ == '__main__':
  absltest.main()
