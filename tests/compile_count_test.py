"""A whole `:runlocal` run lowers each of its programs a fixed number of times.

JAX records an event each time it lowers a function to XLA (to compile it,
or to fetch it from the persistent cache); this test counts them over a
whole run, so that a change that makes the run compile more (a shape or a
static argument that changes between steps or epochs) fails here.
"""
import collections
import tempfile
from unittest import mock

from absl.testing import absltest
import chex
import jax
from jax._src import dispatch  # pylint: disable=g-bad-import-order

from configs import default
from ama_jax.training import loop
from ama_jax.training import train

# docs/REFERENCE.md ("Compilation") quotes this number; change both together.
MAX_LOWERINGS = 11  # 10 before the feature kNN score (eval.knn_k) added one.


class CompileCountTest(absltest.TestCase):

  def test_runlocal_run_compiles_its_step_once(self):
    counts = collections.Counter()  # Lowerings, by (jit) name.
    traces = collections.Counter()  # Traces, by the traced function's name.

    def listener(event, duration, **kwargs):
      del duration
      if event == dispatch.JAXPR_TO_MLIR_MODULE_EVENT:
        counts[kwargs.get('fun_name', '?')] += 1
      elif event == dispatch.JAXPR_TRACE_EVENT:
        traces[kwargs.get('fun_name', '?')] += 1

    # Programs compiled by earlier tests in this process would be reused
    # without a lowering and go uncounted: start from empty caches.
    jax.clear_caches()
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
      config = default.get_config('runlocal')
      config.train.num_epochs = 3  # Negatives start after epoch 1.
      config.train.max_steps_per_epoch = 3
      config.log.figures = False
      # The training step is traced once for the whole run (traced = lowered
      # and compiled, or fetched from the persistent cache).
      traced = chex.assert_max_traces(train.train_steps, n=1)
      with tempfile.TemporaryDirectory() as workdir, mock.patch.object(
          train, 'train_steps', traced):
        loop.train_and_evaluate(config, workdir)
    finally:
      jax.monitoring.unregister_event_duration_listener(listener)
    print('lowerings per function:', dict(counts))
    print('traces per function:', dict(traces))
    # pmapped functions all lower as 'jit(_fun)': the training step and the
    # scorer, once each.
    self.assertEqual(counts['jit(_fun)'], 2, (dict(counts), dict(traces)))
    # The feature kNN distances: one program for the best and last states.
    self.assertEqual(counts['jit(kth_sq_distance)'], 1, dict(counts))
    self.assertLessEqual(sum(counts.values()), MAX_LOWERINGS, dict(counts))


if __name__ == '__main__':
  absltest.main()
