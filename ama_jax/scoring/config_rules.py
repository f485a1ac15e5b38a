"""Config rules of the eval.* fields, which validation and scoring read."""
from ama_jax.config import rules
from ama_jax.scoring import scoring

FIELDS: dict[str, rules.Rule] = {
    'eval.batch_size': rules.Int(min=1),
    'eval.first_epoch': rules.Int(min=1),
    'eval.every_epochs': rules.Int(min=1),
    'eval.threshold_fpr': rules.FRACTION,
    'eval.score': rules.Choice(lambda: scoring.SCORES + ('auto',)),
    'eval.calibration_size': rules.Int(min=2, optional=True),  # A Gaussian fit.
    'eval.knn_k': rules.Int(min=0),
    'eval.knn_bank_size': rules.Int(min=1, optional=True),
    'eval.knn_shrinkage': rules.Float(min=0, optional=True),
    'eval.selection': rules.Choice(lambda: scoring.SELECTIONS),
    'eval.label_free_score': rules.Choice(lambda: scoring.LABEL_FREE_SCORES),
}


def _validation_runs(config, context) -> list[str]:
  """At least one epoch validates (model selection, calibration)."""
  del context
  e, epochs = config.eval, config.train.num_epochs
  first = -(-e.first_epoch // e.every_epochs) * e.every_epochs
  if first > epochs:
    return [f'eval.first_epoch={e.first_epoch}, eval.every_epochs='
            f'{e.every_epochs} with train.num_epochs={epochs}: no epoch would '
            'be validated (no best checkpoint, no calibration); validate at '
            f'an epoch <= {epochs}']
  return []


COMBINATIONS: tuple[rules.Combination, ...] = (
    rules.Combination(('eval.first_epoch', 'eval.every_epochs',
                       'train.num_epochs'), _validation_runs),
)
