"""Tests of the learning-rate and atypical-selection schedules."""
from absl.testing import absltest
import numpy as np

from configs import default
from ama_jax.training import schedules


def _config(**fields):
  config = default.get_config('paper')
  config.train.num_epochs = 10
  for path, value in fields.items():
    section, name = path.split('.')
    config[section][name] = value
  return config


def _lr(config, steps, steps_per_epoch=10):
  schedule = schedules.make_schedule(config, steps_per_epoch,
                                     steps_per_epoch * config.train.num_epochs)
  return np.array([float(schedules.learning_rate(schedule, t))
                   for t in steps])


def _weight(config, steps, steps_per_epoch=10):
  schedule = schedules.make_schedule(config, steps_per_epoch,
                                     steps_per_epoch * config.train.num_epochs)
  return np.array([float(schedules.negative_weight(schedule, t))
                   for t in steps])


class LearningRateTest(absltest.TestCase):

  def test_paper_steps_decay_at_30_60_90_percent(self):
    lr = _lr(_config(), [0, 29, 30, 59, 60, 89, 90, 99])
    np.testing.assert_allclose(
        lr, 3e-4 * np.array([1, 1, .1, .1, .01, .01, 1e-3, 1e-3]), rtol=1e-5)

  def test_decay_points_in_epochs_keep_their_place(self):
    config = _config(**{'optim.decay_at_epochs': (3, 6)})
    lr = _lr(config, [29, 30, 60])
    np.testing.assert_allclose(lr, 3e-4 * np.array([1, .1, .01]), rtol=1e-5)

  def test_cosine_with_warmup(self):
    config = _config(**{'optim.schedule': 'cosine', 'optim.warmup_steps': 10,
                        'optim.final_lr_fraction': 0.1})
    lr = _lr(config, [0, 4, 9, 10, 55, 100])
    np.testing.assert_allclose(
        lr, 3e-4 * np.array([0.1, 0.5, 1.0, 1.0, 0.55, 0.1]), rtol=1e-5)

  def test_constant(self):
    lr = _lr(_config(**{'optim.schedule': 'constant'}), [0, 50, 99])
    np.testing.assert_allclose(lr, 3e-4, rtol=1e-6)


class NegativeWeightTest(absltest.TestCase):

  def test_paper_start_epoch_at_full_weight(self):
    w = _weight(_config(**{'sampling.start_epoch': 3}), [0, 29, 30, 99])
    np.testing.assert_allclose(w, [0, 0, 5, 5])

  def test_start_fraction_and_ramp_scale_with_the_run(self):
    config = _config(**{'sampling.start_fraction': 0.5,
                        'sampling.ramp_fraction': 0.1})
    self.assertEqual(schedules.negatives_start_step(config, 10), 50)
    w = _weight(config, [49, 50, 54, 59, 60, 99])
    np.testing.assert_allclose(w, [0, 0.5, 2.5, 5, 5, 5])
    # Twice the steps per epoch: the same fractions of the longer run.
    self.assertEqual(schedules.negatives_start_step(config, 20), 100)

  def test_earliest_start_epoch_is_a_floor(self):
    # The tuned recipe's: 2/3 of the run, not before epoch 2 (10 per epoch).
    config = _config(**{'sampling.start_fraction': 2 / 3,
                        'sampling.earliest_start_epoch': 2})
    self.assertEqual(schedules.negatives_start_step(config, 10), 67)
    np.testing.assert_allclose(_weight(config, [66, 67]), [0, 5])
    config.train.num_epochs = 2  # 2/3 is step 13; the floor 20 is the end.
    self.assertEqual(schedules.negatives_start_step(config, 10), 20)
    np.testing.assert_allclose(_weight(config, [0, 19]), [0, 0])

  def test_start_step_overrides_and_none_style_is_off(self):
    config = _config(**{'sampling.start_step': 7,
                        'sampling.start_fraction': 0.5})
    np.testing.assert_allclose(_weight(config, [6, 7]), [0, 5])
    self.assertIsNone(schedules.negatives_start_step(
        _config(**{'sampling.style': 'none'}), 10))
    np.testing.assert_allclose(
        _weight(_config(**{'sampling.style': 'none'}), [0, 99]), [0, 0])


if __name__ == '__main__':
  absltest.main()
