"""Config rules of the model.* fields, which the networks read."""
from ama_jax.config import rules
from ama_jax.models import conv_layers
from ama_jax.models import nets

FIELDS: dict[str, rules.Rule] = {
    'model.arch': rules.Choice(
        lambda: sorted(nets._SHAPES)),  # pylint: disable=protected-access
    'model.latent_dim': rules.Int(min=1),
    'model.width': rules.Int(min=1),
    'model.spectral_norm': rules.Bool(),
    'model.conv_impl': rules.Choice(conv_layers.CONV_IMPLS),
    'model.compute_dtype': rules.Choice(lambda: sorted(nets.COMPUTE_DTYPES)),
}

COMBINATIONS: tuple[rules.Combination, ...] = ()
