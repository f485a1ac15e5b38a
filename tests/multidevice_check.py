"""Run by train_test.py with 8 fake CPU devices (XLA_FLAGS set by the test).

Every random term is on (negatives, simplex interpolation, gradient
penalty, labelled anomalies): they are keyed per example, so 8 devices x 2
rows must give what 1 device x 16 rows gives on the same global batch.

The optimizers are replaced by plain SGD here: Adam with beta1 = 0 turns
gradients at float-noise level (whose sign depends on summation order) into
+-lr updates, which would hide real differences behind a loose tolerance.
With SGD, equal gradients give equal parameters up to float32 noise.
"""
import jax
import numpy as np
import optax

from configs import default
from ama_jax.models import nets
from ama_jax.training import placement
from ama_jax.training import schedules
from ama_jax.training import step_settings
from ama_jax.training import train
from ama_jax.training import train_state

SHAPE = (28, 28, 1)


def run(devices, per_device_state, steps=3):
  config = default.get_config('runlocal')
  config.loss.lambda_gp = 1.0
  config.train.n_critic = 2
  # 0.1 of the global batch of 16: 2 negatives, which 8 devices x 2 rows
  # must place where one device x 16 rows does.
  config.sampling.fraction = 0.1
  config.sampling.start_step = 0
  config.optim.lr = 0.05  # Plain SGD (see sgd_optimizers).
  # The non-paper options that reach across devices, on too.
  config.sampling.shell_radius = 'measured'
  config.loss.gp_inter = True
  config.loss.inter_anchors = 'all'  # Anchors gathered across devices.
  config.optim.ema_decay = 0.9
  num_train = 64
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (num_train, *SHAPE)).astype(np.float32)
  labels = np.zeros(num_train, np.int32)
  labels[::7] = 1  # Some labelled anomalies (semi-supervised rows) too.
  state = train_state.create_train_state(jax.random.key(0), config, SHAPE)
  ae, critic = nets.create_models(config.model, SHAPE,
                                    axis_name=placement.AXIS)
  settings = step_settings.StepSettings.from_config(
      config, local_batch=16 // len(devices), num_devices=len(devices))
  p_step = train.make_p_train_step(ae, critic, settings, devices=devices,
                                   per_device_state=per_device_state)
  order = placement.epoch_order(jax.random.key(2), 0, num_train)
  schedule = schedules.make_schedule(config, 4, 100)
  data = placement.epoch_data(
      placement.put_train_set(images, labels, 4, schedule, devices), order,
      settings.local_batch, 4, devices)
  state, rng = placement.replicate((state, jax.random.key(1)), devices)
  history = []
  for _ in range(steps):
    out, metrics = p_step(state, data, rng)
    state = (jax.tree.map(lambda a: a[0], out) if per_device_state
             else out)
    history.append(jax.device_get(metrics))
  assert all(bool(m['finite']) for m in history)
  return jax.device_get(out), history


def sgd_optimizers(config):
  """Update direction = the gradient: with the step's lr, plain SGD."""
  del config
  return optax.identity(), optax.identity()


def main():
  train_state.make_optimizers = sgd_optimizers
  devices = jax.devices()
  assert len(devices) == 8, devices
  many, many_metrics = run(devices, per_device_state=True)
  for leaf in jax.tree.leaves((many.ae.params, many.critic.params,
                               many.ae.batch_stats, many.critic.batch_stats,
                               many.ema)):
    leaf = np.asarray(leaf)
    np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[:1], leaf.shape))
  print('REPLICAS IDENTICAL')
  one, one_metrics = run(devices[:1], per_device_state=False)
  # Every loss term and gradient norm of every step.
  for step, (m8, m1) in enumerate(zip(many_metrics, one_metrics)):
    for key, value in m1.items():
      np.testing.assert_allclose(m8[key], value, rtol=1e-4, atol=1e-6,
                                 err_msg=f'step {step + 1} {key}')
  print('metrics of the last step:', {k: float(v) for k, v in m1.items()})
  # 2 synthetic negatives (round(0.1 x 16)) on 8 devices as on one, plus
  # the labelled anomalies of the batch.
  assert all(m['num_negatives'] >= 2 for m in many_metrics), many_metrics
  first = jax.tree.map(lambda a: a[0], many)
  for a, b in zip(jax.tree.leaves((first.ae.params, first.critic.params,
                                   first.ema)),
                  jax.tree.leaves((one.ae.params, one.critic.params,
                                   one.ema))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  print('MATCHES ONE DEVICE')


if __name__ == '__main__':
  main()
