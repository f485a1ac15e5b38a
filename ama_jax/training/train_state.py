"""The training state: both players' parameters, optimizer states and
normalisation statistics, and the moving average of their weights.

`create_train_state` initialises it from the config; `apply_update` and
`ema_update` are the two ways the step changes it; `scoring_variables` is
what validation and scoring use.
"""
from typing import Any, Optional

import flax
from flax.training import train_state as flax_train_state
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ama_jax.models import nets

PRNGKey = jax.Array


class PlayerState(flax_train_state.TrainState):
  """Params, optimizer state and normalization statistics of one player.

  `tx` gives the update direction (Adam without its learning rate); the
  step multiplies it by the scheduled rate (`schedules.learning_rate`).
  """
  batch_stats: Any  # BatchNorm stats (AE) or spectral-norm u/sigma (critic).


@flax.struct.dataclass
class AMAState:
  """Everything training updates; a pytree, so pmap and orbax see all of it."""
  ae: PlayerState  # params == {'encoder': ..., 'generator': ...}
  critic: PlayerState
  # Exponential moving average of both players' variables (`optim.ema_decay`
  # > 0): {'ae': {'params', 'batch_stats'}, 'critic': {...}}; None when off.
  ema: Optional[dict[str, Any]] = None

  @property
  def step(self) -> jax.Array:
    return self.ae.step


def variables(player: PlayerState) -> dict[str, Any]:
  """The flax variables of a player: {'params', 'batch_stats'}."""
  return {'params': player.params, 'batch_stats': player.batch_stats}


def scoring_variables(state: AMAState) -> tuple[dict, dict]:
  """(AE variables, critic variables) that validation and scoring use.

  The moving averages when the run keeps them (`optim.ema_decay` > 0), else
  the trained variables.
  """
  if state.ema is not None:
    return state.ema['ae'], state.ema['critic']
  return variables(state.ae), variables(state.critic)


def make_optimizers(config: ml_collections.ConfigDict
                    ) -> tuple[optax.GradientTransformation,
                               optax.GradientTransformation]:
  """Adam directions (no learning rate) for E, G (two betas) and the critic.

  The step scales them by the scheduled rate: params -= lr(t) * direction,
  which is Adam with that rate.
  """
  optim = config.optim
  ae_tx = optax.multi_transform(
      {'encoder': optax.scale_by_adam(b1=optim.b1_encoder, b2=optim.b2),
       'generator': optax.scale_by_adam(b1=optim.b1_generator, b2=optim.b2)},
      lambda params: {k: k for k in params})
  critic_tx = optax.scale_by_adam(b1=optim.b1_critic, b2=optim.b2)
  return ae_tx, critic_tx


# XLA:CPU compiles the initialisers (random bits and their transforms; no
# convolution is left once the unused forward pass is removed) 4x faster with
# LLVM at optimisation level 1 than at its default, to the same values bit
# for bit (docs/PERFORMANCE.md, "Compilation"); the step keeps the default.
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 1}


def create_train_state(rng: PRNGKey, config: ml_collections.ConfigDict,
                       image_shape: tuple[int, int, int]) -> AMAState:
  """Initializes both players (under jit) with their optimizers."""
  ae_model, critic_model = nets.create_models(config.model, image_shape)
  ae_tx, critic_tx = make_optimizers(config)
  x = jnp.zeros((2, *image_shape), jnp.float32)
  keep_ema = bool(config.optim.get('ema_decay'))

  @jax.jit
  def init(rng):
    ae_rng, critic_rng = jax.random.split(rng)
    ae_vars = ae_model.init(ae_rng, x, train=False)
    critic_vars = critic_model.init(critic_rng, x, x, train=False)
    ae = PlayerState.create(apply_fn=ae_model.apply, params=ae_vars['params'],
                            tx=ae_tx,
                            batch_stats=ae_vars.get('batch_stats', {}))
    critic = PlayerState.create(
        apply_fn=critic_model.apply, params=critic_vars['params'],
        tx=critic_tx, batch_stats=critic_vars.get('batch_stats', {}))
    ema = ({'ae': variables(ae), 'critic': variables(critic)} if keep_ema
           else None)
    return AMAState(ae=ae, critic=critic, ema=ema)

  if isinstance(rng, jax.core.Tracer) or jax.default_backend() != 'cpu':
    return init(rng)  # Under eval_shape or jit; or an accelerator.
  return init.lower(rng).compile(compiler_options=INIT_COMPILER_OPTIONS)(rng)


def apply_update(player: PlayerState, grads, lr: jax.Array,
            batch_stats) -> PlayerState:
  """One optimizer step at learning rate `lr` (Adam's direction x lr)."""
  direction, opt_state = player.tx.update(grads, player.opt_state,
                                          player.params)
  params = jax.tree.map(lambda p, u: p - lr * u, player.params, direction)
  return player.replace(step=player.step + 1, params=params,
                        opt_state=opt_state, batch_stats=batch_stats)


def ema_update(state: AMAState, decay: float) -> Optional[dict[str, Any]]:
  """EMA of both players' variables; the decay warms up as (1 + t)/(10 + t).

  The warm-up keeps the early average from being dominated by the random
  initialisation in short runs.
  """
  if state.ema is None:
    return None
  t = state.step.astype(jnp.float32)
  d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
  new = {'ae': variables(state.ae), 'critic': variables(state.critic)}
  return jax.tree.map(lambda e, v: d * e + (1 - d) * v, state.ema, new)
