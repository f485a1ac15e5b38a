"""The training state's initialisation: compiled for speed, same values."""
from absl.testing import absltest
import chex
import jax

from ama_jax.training import train_state
from configs import default


class CreateTrainStateTest(absltest.TestCase):

  def test_init_options_give_the_default_compilations_values(self):
    # `create_train_state` compiles the initialisers with
    # INIT_COMPILER_OPTIONS on CPU (faster to compile); the values must be
    # those of XLA's default options, bit for bit.
    config = default.get_config('runlocal')
    shape = (28, 28, 1)
    rng = jax.random.key(3)
    fast = train_state.create_train_state(rng, config, shape)
    # The same function traced under jit as a whole takes the default
    # options (create_train_state sees a tracer and calls its init).
    plain = jax.jit(lambda r: train_state.create_train_state(
        r, config, shape))(rng)
    chex.assert_trees_all_equal(fast.ae.params, plain.ae.params)
    chex.assert_trees_all_equal(fast.critic.params, plain.critic.params)
    chex.assert_trees_all_equal(fast.critic.batch_stats,
                                plain.critic.batch_stats)

  def test_under_eval_shape_it_only_traces(self):
    config = default.get_config('runlocal')
    abstract = jax.eval_shape(lambda: train_state.create_train_state(
        jax.random.key(0), config, (28, 28, 1)))
    leaves = jax.tree_util.tree_leaves(abstract.ae.params)
    self.assertTrue(leaves)
    self.assertTrue(all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves))


if __name__ == '__main__':
  absltest.main()
