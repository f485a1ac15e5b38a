"""Config rules of the data.* fields, which the input pipeline reads.

`FIELDS` holds one rule per field and `COMBINATIONS` the rules on several
fields: the protocol's classes and datasets, and the image shapes the
model's architecture takes (`ama_jax.config.config_checks` applies them).
"""
import dataclasses
import numbers
import pathlib
import re

from ama_jax import errors
from ama_jax.config import rules
from ama_jax.data import input_pipeline
from ama_jax.models import nets

# Image shape (H, W, C) of each built-in dataset as stored, for checks
# before loading (other datasets are checked by the input pipeline).
NATIVE_SHAPES = {
    'mnist': (28, 28, 1), 'fashion_mnist': (28, 28, 1),
    'cifar10': (32, 32, 3), 'svhn_cropped': (32, 32, 3),
}

# A bare TFDS name as `tfds.load` takes it: [namespace:]name[/config]
# [:version]. Anything else that is not a built-in name or a prefixed spec
# must be an existing folder or .npy/.npz file (`data_sources.open_source`).
_TFDS_NAME = re.compile(r'([A-Za-z0-9_]+:)?[A-Za-z0-9_]+(/[A-Za-z0-9_.+-]+)?'
                        r'(:[0-9*]+(\.[0-9*]+)*)?')


@dataclasses.dataclass(frozen=True)
class Dataset(rules.Rule):
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
class Classes(rules.Rule):
  """A non-empty tuple of class indices (>= 0) or names."""

  def accepts(self, value):
    if isinstance(value, (str, numbers.Integral)) and not isinstance(
        value, bool):
      value = (value,)
    return (isinstance(value, (list, tuple)) and bool(value) and all(
        (rules.is_int(c) and c >= 0) or (isinstance(c, str) and c.strip())
        for c in value))

  def allowed(self):
    return ('must be a non-empty tuple of class indices or names, e.g. (3,) '
            "or ('trouser',)")


def _datasets() -> tuple[str, ...]:
  return tuple(input_pipeline.DATASETS)


FIELDS: dict[str, rules.Rule] = {
    'data.dataset': Dataset(),
    'data.protocol': rules.Choice(input_pipeline.PROTOCOLS),
    'data.normal_classes': Classes(),
    'data.ood_dataset': Dataset(optional=True),
    'data.num_val_normal': rules.Int(min=1),  # Threshold and AUROC need both.
    'data.num_val_anomaly': rules.Int(min=1),
    'data.num_test_anomaly': rules.Int(min=0, optional=True),  # None: all.
    'data.semi_supervised_ratio': rules.FRACTION,
    'data.corruption_ratio': rules.FRACTION,
    # None: the images' own size, channels.
    'data.image_size': rules.Int(min=1, optional=True),
    'data.channels': rules.Choice((1, 3), optional=True),
    'data.resize': rules.Choice(input_pipeline.RESIZE_METHODS),
    'data.test_fraction': rules.Float(0, 1, min_open=True, max_open=True),
    'data.download': rules.Bool(),
    'data.data_dir': rules.Text(optional=True),
    'data.raw_dir': rules.Text(optional=True),
    'data.max_train': rules.Int(min=1, optional=True),
    'data.max_test': rules.Int(min=2, optional=True),  # Both labels in test.
}


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


COMBINATIONS: tuple[rules.Combination, ...] = (
    rules.Combination(('data.protocol', 'data.dataset', 'data.ood_dataset',
                       'data.normal_classes', 'data.num_test_anomaly'),
                      _protocol_classes),
    rules.Combination(('data.protocol', 'data.dataset', 'data.ood_dataset',
                       'data.image_size', 'data.channels', 'model.arch'),
                      _image_shapes),
)
