"""Tests of the pmapped train step: determinism, compile-once, devices."""
import os
import pathlib
import subprocess
import sys

from absl.testing import absltest
import chex
import jax
import numpy as np

from configs import default
from ama_jax.models import nets
from ama_jax.training import placement
from ama_jax.training import schedules
from ama_jax.training import step_settings
from ama_jax.training import train
from ama_jax.training import train_state

_SHAPE = (28, 28, 1)


def _setup(config, num_train=64, devices=None):
  devices = devices or jax.local_devices()
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (num_train, *_SHAPE)).astype(np.float32)
  labels = np.zeros(num_train, np.int32)
  state = train_state.create_train_state(jax.random.key(config.seed), config,
                                   _SHAPE)
  settings = step_settings.StepSettings.from_config(
      config, local_batch=config.train.batch_size // len(devices),
      num_devices=len(devices))
  steps = num_train // config.train.batch_size
  schedule = schedules.make_schedule(config, steps, 100)
  order = placement.epoch_order(jax.random.key(2), 0, num_train)
  data = placement.epoch_data(
      placement.put_train_set(images, labels, steps, schedule, devices), order,
      settings.local_batch, steps, devices)
  return placement.replicate(state, devices), settings, data, devices


def _tiny_config():
  config = default.get_config('runlocal')
  config.loss.lambda_gp = 1.0  # Every term on.
  config.sampling.start_step = 0  # Negatives from the first step.
  return config


class TrainStepTest(absltest.TestCase):

  def test_same_seed_gives_bit_identical_params_and_compiles_once(self):
    config = _tiny_config()
    rng = jax.random.key(1)
    traced = chex.assert_max_traces(train.train_steps, n=1)
    finals = []
    with absltest.mock.patch.object(train, 'train_steps', traced):
      ae, critic = nets.create_models(config.model, _SHAPE,
                                        axis_name=placement.AXIS)
      state, settings, data, devices = _setup(config)
      initial = jax.device_get(state)  # Same pytree (incl. static fields).
      p_step = train.make_p_train_step(ae, critic, settings, devices=devices)
      for _ in range(2):  # Two runs from the same seed, one compiled step.
        state = placement.replicate(initial, devices)
        for _ in range(3):
          state, metrics = p_step(state, data, rng)
        finals.append(jax.device_get(state))
    self.assertEqual(int(finals[0].step), 3)
    self.assertTrue(bool(metrics['finite']))
    chex.assert_trees_all_equal(finals[0].ae.params, finals[1].ae.params)
    chex.assert_trees_all_equal(finals[0].critic.params,
                                finals[1].critic.params)
    diff = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(),
                        initial.ae.params, finals[0].ae.params)
    self.assertGreater(max(jax.tree.leaves(diff)), 0)  # It did train.

  def test_scan_of_steps_equals_single_steps(self):
    config = _tiny_config()
    ae, critic = nets.create_models(config.model, _SHAPE,
                                      axis_name=placement.AXIS)
    rng = jax.random.key(1)
    state, settings, data, devices = _setup(config)
    one = train.make_p_train_step(ae, critic, settings, devices=devices)
    two = train.make_p_train_step(ae, critic, settings, num_steps=2,
                                  devices=devices)
    a = one(one(state, data, rng)[0], data, rng)[0]
    state, _, _, _ = _setup(config)
    b = two(state, data, rng, np.int32(2))[0]
    self.assertEqual(int(a.step), 2)
    self.assertEqual(int(b.step), 2)
    chex.assert_trees_all_close(jax.device_get(a.ae.params),
                                jax.device_get(b.ae.params), atol=1e-5)

  def test_interpolation_anchors_first_and_all_both_train_and_differ(self):
    rng = jax.random.key(1)
    finals = {}
    for anchors in ('first', 'all'):
      config = _tiny_config()
      config.loss.inter_anchors = anchors
      ae, critic = nets.create_models(config.model, _SHAPE,
                                        axis_name=placement.AXIS)
      state, settings, data, devices = _setup(config)
      p_step = train.make_p_train_step(ae, critic, settings, devices=devices)
      state, metrics = p_step(state, data, rng)
      self.assertTrue(bool(metrics['finite']))
      self.assertTrue(np.isfinite(float(metrics['critic_inter'])))
      finals[anchors] = jax.device_get(state.critic.params)
    # 'first' pairs each interpolant with its own row only: another loss.
    diff = jax.tree.map(lambda a, b: np.abs(a - b).max(), finals['first'],
                        finals['all'])
    self.assertGreater(max(jax.tree.leaves(diff)), 0)


class MultiDeviceTest(absltest.TestCase):

  def test_eight_devices_match_one_device_with_every_random_term_on(self):
    # 8 fake devices need XLA_FLAGS before jax is imported: a subprocess.
    script = pathlib.Path(__file__).with_name('multidevice_check.py')
    # On a loaded 2-core machine the 8 fake devices' threads can reach a
    # collective minutes apart: XLA:CPU's default rendezvous timeout then
    # aborts the process ("only 7 of them arrived on time").
    env = dict(os.environ, PYTHONPATH=str(script.parent.parent),
               XLA_FLAGS='--xla_force_host_platform_device_count=8 '
               '--xla_cpu_collective_call_terminate_timeout_seconds=1200 '
               '--xla_cpu_collective_timeout_seconds=1200')
    out = subprocess.run([sys.executable, str(script)], env=env,
                         capture_output=True, text=True, timeout=900,
                         cwd=script.parent.parent)
    self.assertEqual(out.returncode, 0, out.stderr[-3000:])
    self.assertIn('REPLICAS IDENTICAL', out.stdout)
    self.assertIn('MATCHES ONE DEVICE', out.stdout)


if __name__ == '__main__':
  absltest.main()
