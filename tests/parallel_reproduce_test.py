"""Tests of the progress readers of `launch/parallel_reproduce.py`."""
import importlib.util
import json
import pathlib
import tempfile

from absl.testing import absltest

from ama_jax import reproduce

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
      (workdir / 'metrics.jsonl').write_text('\n'.join(json.dumps(r) for r in (
          {'hparams': {}}, {'step': 50, 'train/loss': 1.0},
          {'step': 44, 'val/auroc': 0.5})) + '\n')
      self.assertEqual(launcher.logged_step(workdir), 50)
      log = workdir / 'w.log'
      log.write_text('I loop.py] Global batch 256 = 256 per device x 1 '
                     'devices; 5823 training images, 22 steps/epoch, 50 '
                     'epochs.\n')
      self.assertEqual(launcher.steps_per_epoch(log), 22)
      log.write_text('still loading\n')
      self.assertEqual(launcher.steps_per_epoch(log), 0)

  def test_compiled_variants_counts_the_loops_compile_lines(self):
    with tempfile.TemporaryDirectory() as d:
      log = pathlib.Path(d) / 'w.log'
      self.assertEqual(launcher.compiled_variants(log), 0)  # No log yet.
      line = ('I loop.py:317] Training step (negatives=%s, 1 step(s) per '
              'call) compiled and ran once in 107.2 s.\n')
      log.write_text('I loop.py] Global batch 256\n' + line % False)
      self.assertEqual(launcher.compiled_variants(log), 1)
      log.write_text(log.read_text() + 'epoch 10\n' + line % True)
      self.assertEqual(launcher.compiled_variants(log), 2)

  def test_step_variants_follow_the_start_of_atypical_selection(self):
    # Two variants exactly when negatives start before the last epoch.
    for epochs in (1, 2, 5, 10, 14, 15, 100):
      with self.subTest(epochs=epochs):
        start = reproduce.default_start_epoch(epochs)
        self.assertEqual(launcher.step_variants(epochs),
                         2 if start < epochs else 1)
    self.assertEqual(launcher.step_variants(1), 1)
    self.assertEqual(launcher.step_variants(100), 2)


if __name__ == '__main__':
  absltest.main()
