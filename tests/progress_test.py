"""Tests of the progress lines (`ama_jax/reporting/progress.py`)."""
import io

from absl.testing import absltest
from absl.testing import parameterized

from ama_jax.reporting import progress


class _Clock:
  """A clock that advances by `step` seconds per reading."""

  def __init__(self, step: float = 1.0):
    self.now, self.step = 100.0, step

  def __call__(self) -> float:
    self.now += self.step
    return self.now


class FormatTest(parameterized.TestCase):

  @parameterized.parameters((0, '0s'), (42.4, '42s'), (59.6, '1m00s'),
                            (185, '3m05s'), (7620, '2h07m'), (-3, '0s'))
  def test_duration(self, seconds, text):
    self.assertEqual(progress.duration(seconds), text)

  @parameterized.parameters((None, '--'), (812.4, '812'), (46.62, '46.6'),
                            (2.5, '2.50'))
  def test_rate(self, rate, text):
    self.assertEqual(progress.rate_text(rate), text)

  def test_line_has_count_percent_rate_and_eta(self):
    self.assertEqual(
        progress.line('epoch 2/3', 30, 100, 'steps', 7.0),
        'epoch 2/3 [#########                     ] 30/100 steps (30%), '
        '7.00 steps/s, ETA 10s')

  def test_line_without_a_rate_has_no_eta(self):
    self.assertEqual(
        progress.line('scoring', 0, 10, 'images', None),
        'scoring [                              ] 0/10 images (0%), '
        '-- images/s, ETA --')


class ProgressTest(absltest.TestCase):

  def test_not_a_terminal_writes_a_line_per_tenth(self):
    out = io.StringIO()
    bar = progress.Progress(100, stream=out, label='training', unit='steps',
                            clock=_Clock())
    for step in range(1, 101):
      bar.show(step)
    lines = out.getvalue().splitlines()
    self.assertNotIn('\r', out.getvalue())
    self.assertLen(lines, 11)  # 1%, then 10%, 20%, ... 100%.
    self.assertStartsWith(lines[0], 'training [')
    self.assertIn('1/100 steps (1%), -- steps/s, ETA --', lines[0])
    # The rate counts from the first update: 1 step per second.
    self.assertIn('10/100 steps (10%), 1.00 steps/s, ETA 1m30s', lines[1])
    self.assertIn('100/100 steps (100%), 1.00 steps/s, ETA 0s', lines[-1])

  def test_terminal_redraws_one_line_in_place(self):
    out = io.StringIO()
    bar = progress.Progress(40, stream=out, tty=True, label='epoch 1/2',
                            unit='steps', done=20, clock=_Clock(0.5))
    bar.show(25)
    bar.show(30, label='epoch 2/2')
    text = out.getvalue()
    self.assertNotIn('\n', text)
    self.assertEqual(text.count('\r'), 2)
    self.assertTrue(text.endswith(
        'epoch 2/2 [' + '#' * 22 + ' ' * 8
        + '] 30/40 steps (75%), 10.0 steps/s, ETA 1s'), text)
    bar.show(40)  # Done: the line is ended.
    self.assertTrue(out.getvalue().endswith('(100%), 15.0 steps/s, '
                                            'ETA 0s\n'))

  def test_a_shorter_line_covers_the_longer_one(self):
    out = io.StringIO()
    bar = progress.Progress(10, stream=out, tty=True, label='a long label',
                            clock=_Clock())
    bar.show(1)
    first = out.getvalue()
    bar.show(2, label='short')
    second = out.getvalue()[len(first):]
    self.assertGreaterEqual(len(second), len(first))

  def test_end_lines_and_clear_lines(self):
    out = io.StringIO()
    bar = progress.Progress(10, stream=out, tty=True, clock=_Clock())
    bar.show(3)
    drawn = len(out.getvalue()) - 1
    progress.clear_lines()
    self.assertTrue(out.getvalue().endswith('\r' + ' ' * drawn + '\r'))
    bar.show(4)
    progress.end_lines()
    self.assertTrue(out.getvalue().endswith('\n'))
    progress.end_lines()  # Nothing drawn any more: nothing written.
    self.assertEqual(out.getvalue().count('\n'), 1)

  def test_update_counts_and_disabled_writes_nothing(self):
    out = io.StringIO()
    bar = progress.Progress(10, enabled=False, stream=out)
    bar.update(4)
    bar.update(6)
    self.assertEqual((bar.done, out.getvalue()), (10, ''))


if __name__ == '__main__':
  absltest.main()
