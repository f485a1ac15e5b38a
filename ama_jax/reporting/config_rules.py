"""Config rules of the log.* fields: how often training logs and saves, and
whether the report draws figures."""
from ama_jax.config import rules

FIELDS: dict[str, rules.Rule] = {
    'log.every_steps': rules.Int(min=1),
    'log.checkpoint_every_steps': rules.Int(min=1),
    'log.figures': rules.Bool(),
}

COMBINATIONS: tuple[rules.Combination, ...] = ()
