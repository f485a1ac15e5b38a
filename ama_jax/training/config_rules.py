"""Config rules of the seed and the train.*, loss.*, sampling.* and optim.*
fields, which the training loop, its losses, negatives and schedules read.

`FIELDS` holds one rule per field and `COMBINATIONS` the rules on several
fields or the devices: the batch over the devices and the training set,
the start of atypical selection, the inward shell, the decay epochs.
"""
import math

from absl import logging

from ama_jax.config import rules
from ama_jax.training import losses
from ama_jax.training import sampling
from ama_jax.training import schedules

MAX_SEED = 2**32 - 1  # jax.random.key folds larger seeds onto smaller ones.
SHELL_RADII = ('sqrt_d', 'measured')  # sampling.shell_radius (train.py).

WEIGHT = rules.Float(min=0)  # A loss weight.
BETA = rules.Float(0, 1, max_open=True)  # Adam's b1, b2.

FIELDS: dict[str, rules.Rule] = {
    'seed': rules.Int(0, MAX_SEED),
    # --- loss ---
    'loss.lambda_inter': WEIGHT,
    'loss.num_inter': rules.Int(min=2),  # One encoding is no interpolation.
    'loss.detach_inter': rules.Bool(),
    'loss.inter_anchors': rules.Choice(('all', 'first')),
    'loss.lambda_neg': WEIGHT,
    'loss.lambda_reg': WEIGHT,
    'loss.reg_squared': rules.Bool(),
    'loss.lambda_gp': WEIGHT,
    'loss.gp_style': rules.Choice(lambda: sorted(losses.GP_STYLES)),
    'loss.gp_inter': rules.Bool(),
    # --- sampling ---
    'sampling.style': rules.Choice(sampling.NEGATIVE_STYLES),
    'sampling.radial_direction': rules.Choice(sampling.RADIAL_DIRECTIONS),
    'sampling.turns': rules.Choice(sampling.TURNS),
    'sampling.delta': rules.Float(min=0, min_open=True),
    'sampling.shell_radius': rules.Choice(SHELL_RADII),
    'sampling.radius_quantile': rules.Float(0, 1),
    'sampling.start_epoch': rules.Int(min=0),
    'sampling.start_step': rules.Int(min=0, optional=True),
    'sampling.start_fraction': rules.Float(0, 1, max_open=True, optional=True),
    'sampling.earliest_start_epoch': rules.Int(min=0, optional=True),
    'sampling.ramp_fraction': rules.Float(0, 1),
    'sampling.fraction': rules.FRACTION,
    # --- optim ---
    'optim.lr': rules.Float(min=0, min_open=True),
    'optim.b1_encoder': BETA,
    'optim.b1_generator': BETA,
    'optim.b1_critic': BETA,
    'optim.b2': BETA,
    'optim.schedule': rules.Choice(schedules.SCHEDULES),
    'optim.decay_at': rules.Fractions(),
    'optim.decay_at_epochs': rules.EpochPoints(optional=True),
    'optim.decay': rules.Float(0, 1, min_open=True),
    'optim.warmup_steps': rules.Int(min=0),
    'optim.final_lr_fraction': rules.Float(0, 1),
    'optim.ema_decay': rules.Float(0, 1, max_open=True),  # 0: no average.
    # --- train ---
    'train.batch_size': rules.Int(min=1),
    'train.num_epochs': rules.Int(min=1),  # 0 would train nothing.
    'train.n_critic': rules.Int(min=1),
    'train.steps_per_call': rules.Int(min=1),
    'train.halt_after_steps': rules.Int(min=1, optional=True),
    'train.time_limit_s': rules.Float(min=0, min_open=True, optional=True),
    'train.allow_resume_changes': rules.Bool(),
    'train.max_steps_per_epoch': rules.Int(min=1, optional=True),
}


def _batch_over_devices(config, context) -> list[str]:
  batch, n = config.train.batch_size, context.num_devices
  if batch % n:
    below = batch // n * n
    fits = ' or '.join(str(b) for b in (below, below + n) if b)
    return [f'train.batch_size={batch} (the global batch) does not divide '
            f'evenly over {n} devices ({context.num_processes} process(es) x '
            f'{n // context.num_processes} device(s) each); use a multiple '
            f'of {n}, e.g. {fits}']
  return []


def _batch_vs_train_cap(config, context) -> list[str]:
  """A training set capped below one batch would train nothing."""
  del context
  data, batch = config.data, config.train.batch_size
  if data.max_train is None:
    return []
  most = data.max_train + round(
      data.max_train * data.semi_supervised_ratio) + round(
          data.max_train * data.corruption_ratio)
  if most < batch:
    return [f'train.batch_size={batch} is larger than the training set '
            f'(data.max_train={data.max_train}: at most {most} images), so '
            'no step would run; lower train.batch_size or raise '
            'data.max_train']
  return []


def _negatives_schedule(config, context) -> list[str]:
  s, epochs = config.sampling, config.train.num_epochs
  if s.style == 'none':
    return []
  problems = []
  if (s.get('start_step') is None and s.get('start_fraction') is None
      and s.start_epoch >= epochs):
    problems.append(
        f'sampling.start_epoch={s.start_epoch} with train.num_epochs='
        f'{epochs}: atypical selection (sampling.style={s.style!r}) would '
        f'never run; set sampling.start_epoch below {epochs} (epochs count '
        "from 0), or sampling.style='none' to train without negatives")
  if s.fraction == 0:
    problems.append(
        f'sampling.fraction=0 with sampling.style={s.style!r} draws no '
        "negatives; set a fraction in (0, 1) or sampling.style='none'")
  elif config.train.batch_size % context.num_devices == 0:
    local = config.train.batch_size // context.num_devices
    if sampling.num_negatives(local, s.fraction) == 0:
      logging.warning(
          'sampling.fraction=%g of a per-device batch of %d rounds to 0 '
          'synthetic negatives per device: atypical selection is off. Raise '
          'train.batch_size or sampling.fraction.', s.fraction, local)
  return problems


def _shell_radius(config, context) -> list[str]:
  del context
  s, d = config.sampling, config.model.latent_dim
  if (s.style == 'inward' and s.get('shell_radius', 'sqrt_d') == 'sqrt_d'
      and s.delta > math.sqrt(d)):
    return [f'sampling.delta={s.delta:g} with sampling.style=\'inward\': '
            f'the shell [sqrt(d) - delta, sqrt(d)] of model.latent_dim={d} '
            f'needs delta <= sqrt({d}) = {math.sqrt(d):.4g}']
  return []


def _decay_epochs(config, context) -> list[str]:
  """Decay points given in epochs fall inside training."""
  del context
  optim, epochs = config.optim, config.train.num_epochs
  points = optim.get('decay_at_epochs')
  if optim.schedule != 'step' or points is None:
    return []
  late = [p for p in points if p >= epochs]
  if late:
    return [f'optim.decay_at_epochs={tuple(points)} with train.num_epochs='
            f'{epochs}: decay point(s) {late} fall at or after the end; give '
            f'epochs below {epochs}']
  return []


COMBINATIONS: tuple[rules.Combination, ...] = (
    rules.Combination(('train.batch_size',), _batch_over_devices),
    rules.Combination(('train.batch_size', 'data.max_train',
                       'data.semi_supervised_ratio', 'data.corruption_ratio'),
                      _batch_vs_train_cap),
    rules.Combination(('sampling.style', 'sampling.start_epoch',
                       'sampling.fraction', 'train.num_epochs',
                       'train.batch_size'), _negatives_schedule),
    rules.Combination(('sampling.style', 'sampling.delta', 'model.latent_dim'),
                      _shell_radius),
    rules.Combination(('optim.schedule', 'optim.decay_at_epochs',
                       'train.num_epochs'), _decay_epochs),
)
