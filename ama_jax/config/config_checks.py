"""Validation of a whole experiment config before any work is done.

`validate(config, num_devices=..., num_processes=...)` runs when training
starts, before data loading and compilation, and raises one
`errors.ConfigError` that lists every problem: the field, its value and
what is allowed, e.g.

  Invalid config (2 problems): train.batch_size=-4: must be an integer >= 1;
  sampling.style='sideways': must be one of 'inward', 'outward', 'radial',
  'cube', 'rotate', 'none'.

Two tables, one entry per rule:

- `FIELDS`: dotted field path -> `Rule`, one per field of
  `configs/default.py` (type, range, enumeration; placeholders may be None
  only where the rule says `optional=True`). `tests/config_checks_test.py`
  fails when a field has no rule, so a new field needs one here:

    'train.warmup_steps': Int(min=0),
    'data.folder': Text(optional=True),

- `COMBINATIONS`: functions `(config, context) -> [problem, ...]` for rules
  that involve several fields or the devices (batch versus device count,
  epochs versus the schedule, ...). Each runs only if the fields it reads
  passed their own rules (`Combination.fields`).

`check_plan(config, steps_per_epoch)` checks what depends on the data size
(known after loading, before compilation): the lr schedule's decay points.
`check_resume(stored, config, ...)` refuses to resume a workdir whose
checkpoint was trained with another config (`RESUME_MAY_CHANGE` lists the
fields that may differ); `config_differences` lists the differing fields
(also for `ama_jax.tools.reproduce`'s stored results).
"""
import dataclasses
import math
import numbers
import pathlib
import re
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from absl import logging
import ml_collections
import numpy as np

from ama_jax.models import conv_layers
from ama_jax import errors
from ama_jax.data import input_pipeline
from ama_jax.reporting import json_safe
from ama_jax.training import losses
from ama_jax.models import nets
from ama_jax.training import sampling
from ama_jax.training import schedules
from ama_jax.scoring import scoring

# Image shape (H, W, C) of each built-in dataset as stored, for checks
# before loading (other datasets are checked by the input pipeline).
NATIVE_SHAPES = {
    'mnist': (28, 28, 1), 'fashion_mnist': (28, 28, 1),
    'cifar10': (32, 32, 3), 'svhn_cropped': (32, 32, 3),
}
MAX_SEED = 2**32 - 1  # jax.random.key folds larger seeds onto smaller ones.
SHELL_RADII = ('sqrt_d', 'measured')  # sampling.shell_radius (train.py).


# ----------------------------------------------------------------------------
# Field rules.
# ----------------------------------------------------------------------------
def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _choices(choices) -> tuple:
  return tuple(choices() if callable(choices) else choices)


@dataclasses.dataclass(frozen=True)
class Rule:
  """Checks one field; `problem` returns None or what is allowed.

  A rule states its test (`accepts`) and what it allows (`allowed`, with
  `_or_none()` where it names None); `problem` handles None and the rest.
  A rule whose message depends on the value overrides `_problem` instead.
  `optional` is keyword-only, so a rule's own fields stay positional.
  """
  optional: bool = dataclasses.field(default=False, kw_only=True)

  def problem(self, value: Any) -> Optional[str]:
    if value is None:
      return None if self.optional else 'must be set (is None)'
    return self._problem(value)

  def _problem(self, value: Any) -> Optional[str]:
    return None if self.accepts(value) else self.allowed()

  def accepts(self, value: Any) -> bool:
    raise NotImplementedError

  def allowed(self) -> str:
    raise NotImplementedError

  def _or_none(self) -> str:
    return ' or None' if self.optional else ''


@dataclasses.dataclass(frozen=True)
class Int(Rule):
  """An integer in [min, max]."""
  min: Optional[int] = None
  max: Optional[int] = None

  def accepts(self, value):
    return (_is_int(value) and (self.min is None or value >= self.min)
            and (self.max is None or value <= self.max))

  def allowed(self):
    if self.min is not None and self.max is not None:
      return (f'must be an integer in [{self.min}, {self.max}]'
              f'{self._or_none()}')
    if self.min is not None:
      return f'must be an integer >= {self.min}{self._or_none()}'
    return f'must be an integer{self._or_none()}'


@dataclasses.dataclass(frozen=True)
class Float(Rule):
  """A finite real number in an interval ([ or ( ends by `*_open`)."""
  min: Optional[float] = None
  max: Optional[float] = None
  min_open: bool = False
  max_open: bool = False

  def interval(self) -> str:
    if self.min is not None and self.max is not None:
      return (f'{"(" if self.min_open else "["}{self.min:g}, {self.max:g}'
              f'{")" if self.max_open else "]"}')
    if self.min is not None:
      return f'{">" if self.min_open else ">="} {self.min:g}'
    if self.max is not None:
      return f'{"<" if self.max_open else "<="} {self.max:g}'
    return ''

  def accepts(self, value):
    if not _is_real(value) or not math.isfinite(value):
      return False
    if self.min is not None and (value < self.min or (
        self.min_open and value == self.min)):
      return False
    if self.max is not None and (value > self.max or (
        self.max_open and value == self.max)):
      return False
    return True

  def allowed(self):
    where = self.interval()
    if ',' in where:
      where = f' in {where}'
    elif where:
      where = f' {where}'
    return f'must be a finite number{where}{self._or_none()}'


@dataclasses.dataclass(frozen=True)
class Bool(Rule):
  """True or False."""

  def accepts(self, value):
    return isinstance(value, (bool, np.bool_))

  def allowed(self):
    return 'must be True or False'


@dataclasses.dataclass(frozen=True)
class Choice(Rule):
  """One of `choices` (a sequence, or a function returning one)."""
  choices: Any = ()

  def accepts(self, value):
    return ((isinstance(value, str) or _is_int(value))
            and value in _choices(self.choices))

  def allowed(self):
    return ('must be one of '
            + ', '.join(repr(c) for c in _choices(self.choices))
            + self._or_none())


@dataclasses.dataclass(frozen=True)
class Text(Rule):
  """A non-empty string (a path, a name)."""

  def accepts(self, value):
    return isinstance(value, str) and bool(value.strip())

  def allowed(self):
    return f'must be a non-empty string{self._or_none()}'


def _increasing(value: Any, each: Float) -> bool:
  """A list or tuple of numbers that `each` accepts, strictly increasing."""
  return (isinstance(value, (list, tuple))
          and all(each.accepts(v) for v in value)
          and all(a < b for a, b in zip(value, value[1:])))


@dataclasses.dataclass(frozen=True)
class Fractions(Rule):
  """A strictly increasing sequence of numbers in (0, 1) (may be empty)."""

  def accepts(self, value):
    return _increasing(value, Float(0, 1, True, True))

  def allowed(self):
    return ('must be a tuple of increasing fractions in (0, 1), e.g. '
            '(0.3, 0.6, 0.9), or ()')


@dataclasses.dataclass(frozen=True)
class EpochPoints(Rule):
  """A strictly increasing sequence of epochs > 0 (may be fractional)."""

  def accepts(self, value):
    return _increasing(value, Float(0, min_open=True))

  def allowed(self):
    return ('must be a tuple of increasing epochs > 0, e.g. (30, 60, 90)'
            f'{self._or_none()}')


# A bare TFDS name as `tfds.load` takes it: [namespace:]name[/config]
# [:version]. Anything else that is not a built-in name or a prefixed spec
# must be an existing folder or .npy/.npz file (`data_sources.open_source`).
_TFDS_NAME = re.compile(r'([A-Za-z0-9_]+:)?[A-Za-z0-9_]+(/[A-Za-z0-9_.+-]+)?'
                        r'(:[0-9*]+(\.[0-9*]+)*)?')


@dataclasses.dataclass(frozen=True)
class Dataset(Rule):
  """A dataset as `data_sources.open_source` reads it.

  A built-in name, `folder:PATH`, `array:PATH[,labels=PATH]`, `tfds:NAME`,
  a bare TFDS name, or an existing folder / .npy / .npz path. Only the form
  is checked here: whether the folder, array or TFDS dataset can be read
  (and its classes and image shapes) is the input pipeline's to say.
  """

  def allowed(self):
    return ('must be a built-in dataset ('
            + ', '.join(repr(d) for d in _datasets())
            + "), 'folder:PATH', 'array:X.npy[,labels=Y.npy]' or "
            "'array:D.npz', 'tfds:NAME', a TFDS name or an existing "
            f'folder / .npy / .npz path{self._or_none()}')

  def _problem(self, value):
    allowed = self.allowed()
    if not isinstance(value, str) or not value.strip():
      return allowed
    spec = value.strip()
    if spec in input_pipeline.DATASETS:
      return None
    for prefix in input_pipeline.SPEC_PREFIXES:
      if spec.startswith(prefix):
        return None if spec[len(prefix):].strip() else (
            f'{prefix} needs a {"name" if prefix == "tfds:" else "path"} '
            f'after it; {allowed}')
    path = pathlib.Path(spec.partition(',')[0]).expanduser()
    if path.suffix.lower() in ('.npy', '.npz'):
      return None if path.is_file() else f'no such file {path}; {allowed}'
    if path.is_dir() or _TFDS_NAME.fullmatch(spec):
      return None
    return f'no such folder, and not a TFDS name; {allowed}'


@dataclasses.dataclass(frozen=True)
class Classes(Rule):
  """A non-empty tuple of class indices (>= 0) or names."""

  def accepts(self, value):
    if isinstance(value, (str, numbers.Integral)) and not isinstance(
        value, bool):
      value = (value,)
    return (isinstance(value, (list, tuple)) and bool(value) and all(
        (_is_int(c) and c >= 0) or (isinstance(c, str) and c.strip())
        for c in value))

  def allowed(self):
    return ('must be a non-empty tuple of class indices or names, e.g. (3,) '
            "or ('trouser',)")


def _datasets() -> tuple[str, ...]:
  return tuple(input_pipeline.DATASETS)


FRACTION = Float(0, 1, max_open=True)  # [0, 1)
WEIGHT = Float(min=0)  # A loss weight.
BETA = Float(0, 1, max_open=True)  # Adam's b1, b2.

FIELDS: dict[str, Rule] = {
    'seed': Int(0, MAX_SEED),
    # --- data ---
    'data.dataset': Dataset(),
    'data.protocol': Choice(input_pipeline.PROTOCOLS),
    'data.normal_classes': Classes(),
    'data.ood_dataset': Dataset(optional=True),
    'data.num_val_normal': Int(min=1),  # Threshold and AUROC need both.
    'data.num_val_anomaly': Int(min=1),
    'data.num_test_anomaly': Int(min=0, optional=True),  # None: all.
    'data.semi_supervised_ratio': FRACTION,
    'data.corruption_ratio': FRACTION,
    'data.image_size': Int(min=1, optional=True),  # None: the images' own.
    'data.channels': Choice((1, 3), optional=True),  # None: the images' own.
    'data.resize': Choice(input_pipeline.RESIZE_METHODS),
    'data.test_fraction': Float(0, 1, min_open=True, max_open=True),
    'data.download': Bool(),
    'data.data_dir': Text(optional=True),
    'data.raw_dir': Text(optional=True),
    'data.max_train': Int(min=1, optional=True),
    'data.max_test': Int(min=2, optional=True),  # Both labels in test.
    # --- model ---
    'model.arch': Choice(lambda: sorted(nets._SHAPES)),  # pylint: disable=protected-access
    'model.latent_dim': Int(min=1),
    'model.width': Int(min=1),
    'model.spectral_norm': Bool(),
    'model.conv_impl': Choice(conv_layers.CONV_IMPLS),
    'model.compute_dtype': Choice(lambda: sorted(nets.COMPUTE_DTYPES)),
    # --- loss ---
    'loss.lambda_inter': WEIGHT,
    'loss.num_inter': Int(min=2),  # One encoding is no interpolation.
    'loss.detach_inter': Bool(),
    'loss.inter_anchors': Choice(('all', 'first')),
    'loss.lambda_neg': WEIGHT,
    'loss.lambda_reg': WEIGHT,
    'loss.reg_squared': Bool(),
    'loss.lambda_gp': WEIGHT,
    'loss.gp_style': Choice(lambda: sorted(losses.GP_STYLES)),
    'loss.gp_inter': Bool(),
    # --- sampling ---
    'sampling.style': Choice(sampling.NEGATIVE_STYLES),
    'sampling.radial_direction': Choice(sampling.RADIAL_DIRECTIONS),
    'sampling.turns': Choice(sampling.TURNS),
    'sampling.delta': Float(min=0, min_open=True),
    'sampling.shell_radius': Choice(SHELL_RADII),
    'sampling.radius_quantile': Float(0, 1),
    'sampling.start_epoch': Int(min=0),
    'sampling.start_step': Int(min=0, optional=True),
    'sampling.start_fraction': Float(0, 1, max_open=True, optional=True),
    'sampling.earliest_start_epoch': Int(min=0, optional=True),
    'sampling.ramp_fraction': Float(0, 1),
    'sampling.fraction': FRACTION,
    # --- optim ---
    'optim.lr': Float(min=0, min_open=True),
    'optim.b1_encoder': BETA,
    'optim.b1_generator': BETA,
    'optim.b1_critic': BETA,
    'optim.b2': BETA,
    'optim.schedule': Choice(schedules.SCHEDULES),
    'optim.decay_at': Fractions(),
    'optim.decay_at_epochs': EpochPoints(optional=True),
    'optim.decay': Float(0, 1, min_open=True),
    'optim.warmup_steps': Int(min=0),
    'optim.final_lr_fraction': Float(0, 1),
    'optim.ema_decay': Float(0, 1, max_open=True),  # 0: no average.
    # --- train ---
    'train.batch_size': Int(min=1),
    'train.num_epochs': Int(min=1),  # 0 would train nothing.
    'train.n_critic': Int(min=1),
    'train.steps_per_call': Int(min=1),
    'train.halt_after_steps': Int(min=1, optional=True),
    'train.time_limit_s': Float(min=0, min_open=True, optional=True),
    'train.allow_resume_changes': Bool(),
    'train.max_steps_per_epoch': Int(min=1, optional=True),
    # --- eval ---
    'eval.batch_size': Int(min=1),
    'eval.first_epoch': Int(min=1),
    'eval.every_epochs': Int(min=1),
    'eval.threshold_fpr': FRACTION,
    'eval.score': Choice(lambda: scoring.SCORES + ('auto',)),
    'eval.calibration_size': Int(min=2, optional=True),  # A Gaussian fit.
    'eval.knn_k': Int(min=0),
    'eval.knn_bank_size': Int(min=1, optional=True),
    'eval.selection': Choice(lambda: scoring.SELECTIONS),
    'eval.label_free_score': Choice(lambda: scoring.LABEL_FREE_SCORES),
    # --- log ---
    'log.every_steps': Int(min=1),
    'log.checkpoint_every_steps': Int(min=1),
    'log.figures': Bool(),
}


# ----------------------------------------------------------------------------
# Combinations.
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Context:
  """What the checks know besides the config."""
  num_devices: int = 1  # Of every process: the global batch's divisor.
  num_processes: int = 1


@dataclasses.dataclass(frozen=True)
class Combination:
  """A rule on several fields; runs only if `fields` passed their rules."""
  fields: tuple[str, ...]
  check: Callable[[ml_collections.ConfigDict, Context], list[str]]


def _val(config, path: str) -> Any:
  node = config
  for key in path.split('.'):
    node = node[key]
  return node


def _protocol_classes(config, context) -> list[str]:
  del context
  data = config.data
  if data.protocol == 'ood':
    problems = []
    if data.ood_dataset is None or data.ood_dataset == data.dataset:
      problems.append(
          f'data.ood_dataset={data.ood_dataset!r}: the ood protocol needs an '
          f'anomaly dataset other than data.dataset={data.dataset!r}: one of '
          + ', '.join(repr(d) for d in _datasets() if d != data.dataset)
          + ", 'folder:PATH', 'array:PATH', 'tfds:NAME' or a TFDS name")
    if data.num_test_anomaly is not None and data.num_test_anomaly < 1:
      problems.append(f'data.num_test_anomaly={data.num_test_anomaly}: the '
                      'ood protocol needs >= 1 test anomaly (None: all of '
                      "the anomaly dataset's test split)")
    return problems
  # one_class: the classes must exist and leave at least one anomaly class.
  # Known ahead for the built-in datasets only; a folder's, array's or TFDS
  # dataset's classes are checked when it is opened (input_pipeline).
  if data.dataset not in input_pipeline.DATASETS:
    return []
  classes = data.normal_classes
  if isinstance(classes, (str, numbers.Integral)):
    classes = (classes,)
  try:
    indices = {input_pipeline.class_index(data.dataset, c) for c in classes}
  except ValueError as e:
    return [f'data.normal_classes={data.normal_classes!r}: '
            f'{errors.one_line(e)}']
  num_classes = len(input_pipeline.DATASETS[data.dataset])
  if len(indices) >= num_classes:
    return [f'data.normal_classes={data.normal_classes!r} names all '
            f'{num_classes} classes of {data.dataset}; at least one class '
            'must be left as anomalies']
  return []


def _image_shapes(config, context) -> list[str]:
  """The images the model gets fit its architecture (where known ahead).

  `data.image_size` is the size of every image the model gets, whatever the
  dataset. Without it, the stored shapes of the built-in datasets are known
  ahead; a folder's, array's or other TFDS dataset's images are checked by
  the input pipeline when it reads them.
  """
  del context
  data, arch = config.data, config.model.arch
  arch_shapes = nets._SHAPES  # pylint: disable=protected-access
  want = arch_shapes[arch]

  def archs_for(size) -> str:
    fits = [repr(a) for a, s in arch_shapes.items() if s == tuple(size)]
    return f' or model.arch={" or ".join(fits)}' if fits else ''

  problems = []
  if data.image_size is not None:
    size = (data.image_size, data.image_size)
    if size != want:
      problems.append(
          f'data.image_size={data.image_size} but model.arch={arch!r} takes '
          f'{want[0]}x{want[1]} images; set data.image_size={want[0]}'
          f'{archs_for(size)}')
  names = [data.dataset] + ([data.ood_dataset] if data.protocol == 'ood'
                            else [])
  if not all(n in NATIVE_SHAPES for n in names):
    return problems  # The rest once the data is opened (input_pipeline).
  native = {n: NATIVE_SHAPES[n] for n in names}
  sizes = {tuple(s[:2]) for s in native.values()}
  if data.image_size is None and len(sizes) > 1:
    problems.append(
        'data.image_size=None but ' + ' and '.join(
            f'{n} images are {s[0]}x{s[1]}' for n, s in native.items())
        + f'; set data.image_size={want[0]} (model.arch={arch!r}) to '
        'convert them')
  elif data.image_size is None and sizes != {want}:
    (h, w), = sizes
    problems.append(
        f'model.arch={arch!r} takes {want[0]}x{want[1]} images but '
        f'{data.dataset} images are {h}x{w}; set data.image_size={want[0]} '
        f'to convert them{archs_for((h, w))}')
  if data.channels is None and len({s[2] for s in native.values()}) > 1:
    problems.append(
        'data.channels=None but ' + ' and '.join(
            f'{n} images have {s[2]} channel{"s" if s[2] > 1 else ""}'
            for n, s in native.items())
        + '; set data.channels=1 (grey) or 3 (RGB) to convert them')
  return problems


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


COMBINATIONS: tuple[Combination, ...] = (
    Combination(('data.protocol', 'data.dataset', 'data.ood_dataset',
                 'data.normal_classes', 'data.num_test_anomaly'),
                _protocol_classes),
    Combination(('data.protocol', 'data.dataset', 'data.ood_dataset',
                 'data.image_size', 'data.channels', 'model.arch'),
                _image_shapes),
    Combination(('train.batch_size',), _batch_over_devices),
    Combination(('train.batch_size', 'data.max_train',
                 'data.semi_supervised_ratio', 'data.corruption_ratio'),
                _batch_vs_train_cap),
    Combination(('sampling.style', 'sampling.start_epoch', 'sampling.fraction',
                 'train.num_epochs', 'train.batch_size'), _negatives_schedule),
    Combination(('sampling.style', 'sampling.delta', 'model.latent_dim'),
                _shell_radius),
    Combination(('optim.schedule', 'optim.decay_at_epochs',
                 'train.num_epochs'), _decay_epochs),
    Combination(('eval.first_epoch', 'eval.every_epochs', 'train.num_epochs'),
                _validation_runs),
)


# ----------------------------------------------------------------------------
# Entry points.
# ----------------------------------------------------------------------------
def leaf_fields(config: Mapping[str, Any] | ml_collections.ConfigDict,
                prefix: str = '') -> Iterator[tuple[str, Any]]:
  """(dotted path, value) of every non-dict field, placeholders as None."""
  if isinstance(config, ml_collections.ConfigDict):
    config = config.to_dict()
  for key, value in config.items():
    if isinstance(value, dict):
      yield from leaf_fields(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


def problems(config: ml_collections.ConfigDict,
             context: Context = Context()) -> list[str]:
  """Every problem of `config`, field rules first ([] if none)."""
  found, bad = [], set()
  for path, value in leaf_fields(config):
    rule = FIELDS.get(path)
    if rule is None:
      logging.warning('Config field %s=%r has no validation rule (add one to '
                      'ama_jax/config/config_checks.py FIELDS).', path, value)
      continue
    problem = rule.problem(value)
    if problem:
      found.append(f'{path}={value!r}: {problem}')
      bad.add(path)
  present = {path for path, _ in leaf_fields(config)}
  for combination in COMBINATIONS:
    if set(combination.fields) <= present and not bad & set(
        combination.fields):
      found += combination.check(config, context)
  return found


def validate(config: ml_collections.ConfigDict, *, num_devices: int = 1,
             num_processes: int = 1) -> None:
  """Raises ConfigError listing every problem of `config` (see docstring).

  Args:
    config: the experiment config (`configs/*.py`).
    num_devices: devices of all processes (the global batch is split over
      them).
    num_processes: processes (for messages).
  """
  found = problems(config, Context(num_devices=num_devices,
                                   num_processes=num_processes))
  if found:
    what = (f'{len(found)} problems' if len(found) > 1 else '1 problem')
    raise errors.ConfigError(f'Invalid config ({what}): ' + '; '.join(found)
                             + '.')


def check_plan(config: ml_collections.ConfigDict, steps_per_epoch: int,
               num_train_normals: Optional[int] = None) -> None:
  """Checks the schedules against the training length and the feature kNN
  score's k against the training normals (after loading).

  Raises:
    ConfigError: two lr decay points fall on the same step or one at or
      after the last step, the warm-up outlasts training, or
      `sampling.start_step` comes after the last step (the schedule would
      not be the one configured), or `eval.knn_k` exceeds the training
      normals (the final evaluation would fail).
  """
  total = steps_per_epoch * config.train.num_epochs
  length = (f'{total} training steps ({steps_per_epoch} per epoch x '
            f'train.num_epochs={config.train.num_epochs})')
  found = []
  at = schedules.decay_boundaries(config, steps_per_epoch, total)
  if len(set(at)) < len(at) or any(s >= total for s in at):
    field = ('optim.decay_at_epochs' if config.optim.get('decay_at_epochs')
             is not None else 'optim.decay_at')
    found.append(
        f'{field}={tuple(config.optim[field.split(".")[1]])} puts the lr '
        f'decays at steps {at} of {length}: '
        + ('two fall on the same step' if len(set(at)) < len(at) else
           'one falls at or after the end')
        + "; train longer or give fewer points (optim.schedule='constant' "
        'for a constant lr)')
  warmup = config.optim.get('warmup_steps') or 0
  if warmup >= total:
    found.append(f'optim.warmup_steps={warmup} is not shorter than the '
                 f'{length}')
  start = schedules.negatives_start_step(config, steps_per_epoch)
  given = config.sampling.get('start_step')
  if given is not None and given >= total:
    found.append(f'sampling.start_step={given}: atypical selection would '
                 f'never run in {length}')
  elif (config.sampling.style != 'none' and start >= total
        and config.sampling.get('earliest_start_epoch') is not None):
    logging.info('No synthetic negatives in this run of %d epochs: '
                 'sampling.earliest_start_epoch=%d (the tuned recipe starts '
                 'them after that many epochs, in the run\'s last third).',
                 config.train.num_epochs,
                 config.sampling.earliest_start_epoch)
  k = config.eval.get('knn_k') or 0
  if num_train_normals is not None and k > num_train_normals:
    found.append(f'eval.knn_k={k} exceeds the {num_train_normals} training '
                 'normals the feature kNN score compares with; lower it '
                 '(0 turns the score off)')
  bank = config.eval.get('knn_bank_size')
  if bank and k > bank:
    found.append(f'eval.knn_k={k} exceeds eval.knn_bank_size={bank}, the '
                 'training features the feature kNN score compares with; '
                 'raise the bank or lower k')
  if found:
    raise errors.ConfigError('; '.join(found) + '.')


# Fields a resumed run may set differently from the run it continues: none
# of them changes the training (when to halt, steps fused per call, what is
# evaluated and logged, where the data files are read from).
RESUME_MAY_CHANGE = ('train.halt_after_steps', 'train.time_limit_s',
                     'train.steps_per_call',
                     'train.allow_resume_changes',
                     'eval.', 'log.', 'data.data_dir', 'data.raw_dir',
                     'data.download')


def config_differences(stored: Mapping[str, Any],
                       config: ml_collections.ConfigDict
                       ) -> list[tuple[str, Any, Any]]:
  """(dotted path, stored value, `config`'s value) of every field whose value
  differs between a stored (JSON) config and `config`, sorted by path. A
  field only one side has (stored before the field existed) is not
  compared."""
  old = dict(leaf_fields(stored))
  new = dict(leaf_fields(json_safe.config_to_dict(config)))
  return [(path, old[path], new[path])
          for path in sorted(old.keys() & new.keys())
          if old[path] != new[path]]


# Where atypical selection starts, by precedence (schedules.py).
START_FIELDS = ('sampling.start_step', 'sampling.start_fraction',
                'sampling.start_epoch')


def apply_start_given(config: ml_collections.ConfigDict,
                      given: Sequence[str]) -> list[str]:
  """Makes the start of negatives set on the command line the one used.

  A config file sets one start (the tuned recipe `sampling.start_fraction`,
  the paper's `sampling.start_epoch`), and `START_FIELDS` take precedence in
  their order; the command line cannot set a field back to None. So when
  `given` (the dotted fields set on the command line, or by `reproduce`)
  holds one start field, the config file's start fields that would take
  precedence over it are cleared, and its `sampling.earliest_start_epoch`
  unless that is given too: `--config.sampling.start_epoch=5` starts at
  epoch 5 with either recipe.

  Returns:
    The cleared fields with their former values (`path=value`), for the log.

  Raises:
    ConfigError: more than one start field given.
  """
  starts = [f for f in START_FIELDS if f in given]
  if len(starts) > 1:
    raise errors.ConfigError(
        f'{" and ".join(starts)} are both set: give one start of atypical '
        f'selection (precedence {" > ".join(START_FIELDS)}).')
  if not starts:
    return []
  cleared = []
  above = START_FIELDS[:START_FIELDS.index(starts[0])]
  if 'sampling.earliest_start_epoch' not in given:
    above += ('sampling.earliest_start_epoch',)  # The file's floor too.
  for path in above:
    leaf = path.split('.')[1]
    if config.sampling.get(leaf) is not None:
      cleared.append(f'{path}={config.sampling[leaf]!r}')
      config.sampling[leaf] = None
  return cleared


def _inert(path: str, stored: Mapping[str, Any],
           config: ml_collections.ConfigDict) -> bool:
  """Whether a field cannot change the training: the atypical-selection
  settings (other than the style) when both runs have none."""
  return (path.startswith('sampling.') and path != 'sampling.style'
          and stored.get('sampling', {}).get('style') == 'none'
          and config.sampling.style == 'none')


def check_resume(stored: Mapping[str, Any], config: ml_collections.ConfigDict,
                 workdir: Any, step: int) -> None:
  """Checks that the run resumed in `workdir` is the one `config` describes.

  Args:
    stored: the config saved with the checkpoint resumed (`meta['config']`).
    config: the config of the command resuming it.
    workdir: the run's directory (for the message).
    step: the step resumed from (for the message).

  Raises:
    ConfigError: a field outside `RESUME_MAY_CHANGE` differs (a different
      seed, model, loss, schedule, data split or length would silently mix
      two trainings in one run), unless `train.allow_resume_changes`, which
      logs the differences instead. Fields only one side has (a checkpoint
      written before the field existed) are not compared, nor the
      atypical-selection settings of two runs without it.
  """
  changed = [d for d in config_differences(stored, config)
             if not d[0].startswith(RESUME_MAY_CHANGE)
             and not _inert(d[0], stored, config)]
  if not changed:
    return
  shown = '; '.join(f'{path}: {was!r} there, {now!r} now'
                    for path, was, now in changed[:8])
  more = f' (and {len(changed) - 8} more)' if len(changed) > 8 else ''
  if config.train.get('allow_resume_changes'):
    logging.warning('Resuming %s from step %d with a changed config '
                    '(train.allow_resume_changes): %s%s.', workdir, step,
                    shown, more)
    return
  raise errors.ConfigError(
      f'{workdir} holds a run (resumable from step {step}) trained with '
      f'another config: {shown}{more}. Use a new --workdir for the new '
      'config, or resume this run with the values it was trained with '
      '(its config is in the checkpoint and in results.json), or continue '
      'it with the new values: --config.train.allow_resume_changes=True. '
      'Only '
      + ', '.join(p.rstrip('.') + ('*' if p.endswith('.') else '')
                  for p in RESUME_MAY_CHANGE) + ' may differ.')


def field_rule(path: str) -> Optional[Rule]:
  """The rule of a dotted field path (None: no rule)."""
  return FIELDS.get(path)


def fields_without_rules(config: ml_collections.ConfigDict) -> list[str]:
  """Fields of `config` that `FIELDS` does not cover."""
  return [path for path, _ in leaf_fields(config) if path not in FIELDS]


def rules_without_fields(config: ml_collections.ConfigDict
                         ) -> Sequence[str]:
  """Rules that name no field of `config` (stale after a rename)."""
  present = {path for path, _ in leaf_fields(config)}
  return [path for path in FIELDS if path not in present]
