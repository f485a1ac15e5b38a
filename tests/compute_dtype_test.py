"""The training step with `model.compute_dtype='bfloat16'`: it runs, stays
finite, and keeps the whole state (parameters, Adam moments, statistics)
float32."""
from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from ama_jax.models import nets
from ama_jax.training import placement
from ama_jax.training import schedules
from ama_jax.training import step_settings
from ama_jax.training import train
from ama_jax.training import train_state

_SHAPE = (28, 28, 1)


class BFloat16StepTest(absltest.TestCase):

  def test_bfloat16_runlocal_step_is_finite_and_keeps_float32_state(self):
    config = default.get_config('runlocal')
    config.model.compute_dtype = 'bfloat16'
    config.loss.lambda_gp = 1.0  # Every term on: the penalty's 2nd derivative,
    config.sampling.start_step = 0  # negatives from the first step.
    devices = jax.local_devices()
    batch = config.train.batch_size
    images = np.random.default_rng(0).uniform(
        -1, 1, (2 * batch, *_SHAPE)).astype(np.float32)
    settings = step_settings.StepSettings.from_config(
        config, local_batch=batch // len(devices), num_devices=len(devices))
    schedule = schedules.make_schedule(config, 2, 100)
    data = placement.epoch_data(
        placement.put_train_set(images, np.zeros(2 * batch, np.int32), 2,
                            schedule, devices),
        np.arange(2 * batch), settings.local_batch, 2, devices)
    ae, critic = nets.create_models(config.model, _SHAPE,
                                      axis_name=placement.AXIS)
    # On the host: the step donates the state it is given.
    initial = jax.device_get(
        train_state.create_train_state(jax.random.key(0), config, _SHAPE))
    p_step = train.make_p_train_step(ae, critic, settings, devices=devices)
    state, rng = placement.replicate((initial, jax.random.key(1)), devices)
    for _ in range(2):
      state, metrics = p_step(state, data, rng)
    state = jax.device_get(state)
    self.assertEqual(int(state.step), 2)
    self.assertTrue(bool(metrics['finite']))
    for name in ('critic_loss', 'ae_loss', 'gradient_penalty'):
      self.assertTrue(np.isfinite(metrics[name]), name)
    self.assertGreater(float(metrics['num_negatives']), 0)
    for leaf in jax.tree.leaves((state.ae.params, state.ae.opt_state,
                                 state.ae.batch_stats, state.critic.params,
                                 state.critic.opt_state,
                                 state.critic.batch_stats)):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        self.assertEqual(leaf.dtype, jnp.float32)
    moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(),
                         initial.ae.params, state.ae.params)
    self.assertGreater(max(jax.tree.leaves(moved)), 0)  # It did train.


if __name__ == '__main__':
  absltest.main()
