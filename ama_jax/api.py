r"""A detector object in the style of scikit-learn: fit on normal images.

  from ama_jax import AMADetector
  detector = AMADetector(epochs=3, seed=0).fit(x_train)  # normal images
  scores = detector.score_samples(x_new)  # higher = more anomalous
  labels = detector.predict(x_new)  # 1 = anomaly, 0 = normal
  detector.save('my_detector')
  detector = AMADetector.load('my_detector')

`fit` runs one training (`loop.train_and_evaluate`) of the one-class
protocol with every given image normal: the images go to
`<workdir>/images/normal/` (README, "Your own data": a folder of normal
images only), 100 of them are held out to set the threshold (and
`data.test_fraction` for the run's test split), and the run keeps the
detector its `eval.selection` chooses (label-free by default: the last
state with the feature kNN score; results.json['chosen']). Scoring is that
of `python -m ama_jax.tools.score --score=chosen`: the same checkpoint,
score and threshold, so the two give the same numbers.

Inputs: numpy arrays [N, H, W] or [N, H, W, C] (C = 1 or 3) of uint8
pixels 0..255 or floats in [-1, 1], or a path: a .npy / .npz file, or a
folder of PNG/JPEG/BMP images (flat, `normal/` (+ `anomaly/`), or class
subfolders with `overrides={'data.normal_classes': (...)}`). The
architecture follows the images when no config is named: the CIFAR one
(32x32) for colour images of at least 32x32 pixels, else the MNIST one
(28x28); images are resized to it (`data.image_size`, `data.resize`).
Problems with the inputs raise `errors.UserError`s whose message says what
to fix: `DetectorError`, `NotFittedError`, or `score_error.ScoreError` for
the images to score.
"""
import contextlib
import copy
import importlib
import io
import json
import os
import pathlib
import pkgutil
import shutil
import tempfile
import weakref
from typing import Any, Mapping, Optional, Union

from absl import logging
import ml_collections
import numpy as np

from ama_jax import errors

ImagesLike = Union[np.ndarray, str, os.PathLike]

DETECTOR_FILE = 'ama_detector.json'  # The detector's own arguments.
IMAGES_DIR = 'images'  # <workdir>/images/normal/: the training images.
DATA_DIR = 'data'  # The training folder's prepared copy (data.data_dir).
NOT_SAVED = (IMAGES_DIR, DATA_DIR, '.locks')  # Top-level, not in `save`.
ARRAY_SUFFIXES = ('.npy', '.npz')
NPZ_IMAGE_KEYS = ('images', 'x', 'x_train', 'train_images')


class DetectorError(errors.UserError, ValueError):
  """A bad argument or input of `AMADetector`; the message says the fix."""


class NotFittedError(DetectorError):
  """The detector is used before `fit` (or `load`)."""


def _config_names() -> list[str]:
  try:
    configs = importlib.import_module('configs')
  except ImportError:
    return []
  return sorted(m.name for m in pkgutil.iter_modules(configs.__path__))


def _base_config(config: Union[str, ml_collections.ConfigDict]
                 ) -> ml_collections.ConfigDict:
  """A copy of a ConfigDict, or `configs/<name>.py[:arg]`'s config."""
  if isinstance(config, ml_collections.ConfigDict):
    return copy.deepcopy(config)
  name, _, arg = str(config).partition(':')
  if name not in _config_names():
    raise DetectorError(f'config={config!r}: no such config; expected one '
                        f'of {_config_names()} (optionally with its :arg, '
                        "e.g. 'fmnist_oneclass:runlocal') or a ConfigDict.")
  module = importlib.import_module(f'configs.{name}')
  with errors.reraise_as(DetectorError, ValueError):
    return module.get_config(arg or None)


def _apply_overrides(config: ml_collections.ConfigDict,
                     overrides: Mapping[str, Any]) -> None:
  """Sets dotted fields ('model.width': 8), as `--config.<field>=` does."""
  from ama_jax.config import config_checks  # pylint: disable=g-import-not-at-top
  for path, value in overrides.items():
    node, parts = config, str(path).split('.')
    for i, part in enumerate(parts):
      if not isinstance(node, ml_collections.ConfigDict) or part not in node:
        raise DetectorError(
            f'overrides: {path!r} is not a config field ('
            f'{".".join(parts[:i]) or "the config"} has '
            f'{sorted(node.keys()) if hasattr(node, "keys") else "none"}'
            '); configs/default.py lists every field.')
      if i < len(parts) - 1:
        node = node[part]
    try:
      node[parts[-1]] = tuple(value) if isinstance(value, list) else value
    except (TypeError, ValueError) as e:
      raise DetectorError(f'overrides[{path!r}]={value!r}: {e}') from e
  config_checks.apply_start_given(config, list(overrides))


def _check_train_array(x: Any) -> np.ndarray:
  """The training images, checked as scoring checks its inputs."""
  # pylint: disable=g-import-not-at-top
  from ama_jax.scoring import score_error
  from ama_jax.scoring import score_inputs
  # pylint: enable=g-import-not-at-top
  x = np.asarray(x)
  if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
    raise DetectorError(
        f'x: expected images [N, H, W] or [N, H, W, C] with C = 1 or 3, got '
        f'shape {x.shape}; pass a batch of images (x[None] for one image).')
  shape = x.shape[1:] + ((1,) if x.ndim == 3 else ())
  try:
    score_inputs.array_inputs(x, shape, source='x')
  except score_error.ScoreError as e:
    raise DetectorError(str(e)) from e
  return x


def _load_array_file(path: pathlib.Path) -> np.ndarray:
  try:
    if path.suffix.lower() == '.npy':
      return np.load(path, mmap_mode='r', allow_pickle=False)
    with np.load(path, allow_pickle=False) as npz:
      keys = [k for k in NPZ_IMAGE_KEYS if k in npz.files] or (
          npz.files if len(npz.files) == 1 else [])
      if not keys:
        raise DetectorError(f'{path}: no images; expected one of '
                            f'{list(NPZ_IMAGE_KEYS)} among {npz.files}.')
      return npz[keys[0]]
  except (OSError, ValueError, EOFError) as e:
    raise DetectorError(f'Cannot read {path}: {errors.one_line(e)}') from e


def _link_flat(folder, images: pathlib.Path) -> None:
  """A flat folder of normals as `images/[<split>/]normal/` (symlinks)."""
  # pylint: disable-next=g-import-not-at-top
  from ama_jax.data import image_folder
  for split in folder.files:
    source = folder.root if split == image_folder.ALL else folder.root / split
    target = (images if split == image_folder.ALL else images / split)
    target.mkdir(parents=True, exist_ok=True)
    (target / image_folder.NORMAL).symlink_to(source.resolve(),
                                              target_is_directory=True)


def _training_data(x: ImagesLike, workdir: pathlib.Path
                   ) -> tuple[str, Optional[tuple], tuple[int, ...]]:
  """(data.dataset, data.normal_classes or None, an image's (H, W, C)).

  Arrays are written as PNGs into `<workdir>/images/normal/`; a folder is
  read where it is (a flat one through links from there).
  """
  # pylint: disable=g-import-not-at-top
  from ama_jax.data import data_sources
  from ama_jax.data import image_files
  from ama_jax.data import image_folder
  # pylint: enable=g-import-not-at-top
  images = workdir / IMAGES_DIR
  if isinstance(x, (str, os.PathLike)):
    path = pathlib.Path(x).expanduser()
    if not path.exists():
      raise DetectorError(f'{path} does not exist; pass an array of images, '
                          'a .npy/.npz file or a folder of images.')
    if path.is_file():
      if path.suffix.lower() not in ARRAY_SUFFIXES:
        raise DetectorError(f'{path}: expected a .npy or .npz file, or a '
                            'folder of PNG/JPEG/BMP images.')
      x = _load_array_file(path)
    else:
      try:
        folder = image_folder.scan(path)
        shape = image_files.probe(next(iter(folder.files.values()))[0])
      except (image_folder.FolderError, image_files.ImageError) as e:
        raise DetectorError(str(e)) from e
      if folder.layout == 'classes':
        return f'folder:{path}', None, shape
      if folder.layout == 'flat':
        _link_flat(folder, images)
        path = images
      return f'folder:{path}', (image_folder.NORMAL,), shape
  x = _check_train_array(x)
  with errors.reraise_as(DetectorError, ValueError):
    pixels = data_sources.to_uint8(x, 'x')
  image_folder.write_pngs(images / image_folder.NORMAL, pixels)
  return (f'folder:{images}', (image_folder.NORMAL,),
          x.shape[1:] + ((1,) if x.ndim == 3 else ()))


@contextlib.contextmanager
def _quiet(verbose: bool):
  """absl logging at WARNING and no printed output, unless `verbose`."""
  if verbose:
    yield
    return
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  level = logging.get_verbosity()
  logging.set_verbosity(logging.WARNING)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    logging.set_verbosity(level)


class AMADetector:
  """An AMA anomaly detector trained on normal images (see the module).

  Attributes (after `fit` or `load`):
    threshold_: scores above it are anomalies (`predict` = 1).
    score_: the chosen score, 'knn' (feature kNN) or 'calibrated'.
    chosen_: results.json['chosen'] of the run (None for an export).
    image_shape_: the model's input (H, W, C).
    workdir_: the training run's folder (a temporary one when
      `workdir=None`: removed with the detector; `save` keeps a copy).
  """

  def __init__(self, config: Union[str, ml_collections.ConfigDict,
                                   None] = None,
               epochs: Optional[int] = 3, seed: int = 0,
               workdir: Optional[Union[str, os.PathLike]] = None,
               overrides: Optional[Mapping[str, Any]] = None,
               verbose: bool = False, batch_size: int = 500):
    """Arguments of the training run; nothing is computed here.

    Args:
      config: a config of configs/ by name (with its optional ':arg', e.g.
        'fmnist_oneclass:runlocal'), or a ConfigDict; None: from the images,
        'cifar_oneclass' for colour ones of at least 32x32, else
        'fmnist_oneclass' (their recipe; the data fields are replaced).
      epochs: train.num_epochs (None: the config's own).
      seed: the run's seed (data splits and initialisation).
      workdir: where to train (a folder with a checkpoint is resumed);
        None: a temporary folder.
      overrides: config fields by dotted name, applied last, e.g.
        {'model.width': 32, 'eval.threshold_fpr': 0.01}.
      verbose: show the training's logs and printed output.
      batch_size: images per scoring call.
    """
    self.config, self.epochs, self.seed = config, epochs, seed
    self.workdir, self.overrides = workdir, dict(overrides or {})
    self.verbose, self.batch_size = verbose, batch_size
    self.threshold_ = self.score_ = self.chosen_ = None
    self.image_shape_ = self.workdir_ = None
    self._detector = self._cleanup = None

  def __repr__(self) -> str:
    return (f'AMADetector(config={self.config!r}, epochs={self.epochs!r}, '
            f'seed={self.seed!r}, workdir={self.workdir!r}, '
            f'overrides={self.overrides!r})')

  def _make_config(self, dataset: str, classes: Optional[tuple],
                   shape: tuple[int, ...], workdir: pathlib.Path
                   ) -> ml_collections.ConfigDict:
    from ama_jax.models import nets  # pylint: disable=g-import-not-at-top
    name = self.config
    if name is None:
      colour = shape[2] == 3 and min(shape[:2]) >= 32
      name = 'cifar_oneclass' if colour else 'fmnist_oneclass'
    config = _base_config(name)
    data = config.data
    data.dataset, data.protocol = dataset, 'one_class'
    if classes is not None:
      data.normal_classes = classes
    if data.get('image_size') is None:
      data.image_size = nets.input_size(config.model.arch)[0]
    data.data_dir = str(workdir / DATA_DIR)
    config.seed = int(self.seed)
    if self.epochs is not None:
      config.train.num_epochs = int(self.epochs)
    _apply_overrides(config, self.overrides)
    if classes is None and 'data.normal_classes' not in self.overrides:
      raise DetectorError(
          f'{dataset[len("folder:"):]} holds one subfolder per class; name '
          "the normal one(s): overrides={'data.normal_classes': "
          "('<folder name>',)}, or put the images in one folder.")
    return config

  def fit(self, x: ImagesLike, y: None = None) -> 'AMADetector':
    """Trains on normal images `x` (see the module); returns self.

    Args:
      x: the normal images: an array, a .npy/.npz file or a folder.
      y: ignored (every image is normal); for scikit-learn's signature.
    """
    del y  # Unused.
    from ama_jax.training import loop  # pylint: disable=g-import-not-at-top
    from ama_jax.process import runtime  # pylint: disable=g-import-not-at-top
    if self._cleanup is not None:  # The last fit's temporary folder.
      self._cleanup()
      self._detector = self._cleanup = None
    if self.workdir is None:
      workdir = pathlib.Path(tempfile.mkdtemp(prefix='ama_detector_'))
      self._cleanup = weakref.finalize(self, shutil.rmtree, workdir, True)
    else:
      workdir = pathlib.Path(self.workdir).expanduser()
      workdir.mkdir(parents=True, exist_ok=True)
      if (workdir / IMAGES_DIR).exists():  # Last fit's images: replaced.
        shutil.rmtree(workdir / IMAGES_DIR)
    with _quiet(self.verbose):
      dataset, classes, shape = _training_data(x, workdir)
      config = self._make_config(dataset, classes, shape, workdir)
      runtime.use_compilation_cache()
      loop.train_and_evaluate(config, str(workdir))
    if not (workdir / 'results.json').is_file():
      raise DetectorError(f'The training in {workdir} stopped before its end '
                          '(train.halt_after_steps?); fit again to resume.')
    (workdir / DETECTOR_FILE).write_text(json.dumps(
        {'config': self.config if isinstance(self.config, (str, type(None)))
                   else None,
         'epochs': self.epochs, 'seed': self.seed,
         'overrides': self.overrides}, indent=1))
    self._open(workdir)
    return self

  def _open(self, workdir: pathlib.Path) -> None:
    """Restores the run's chosen detector (`tools.score`'s)."""
    # pylint: disable=g-import-not-at-top
    from ama_jax.scoring import detectors
    from ama_jax.tools import score
    # pylint: enable=g-import-not-at-top
    with _quiet(self.verbose):
      model, chosen = detectors.open_detector(workdir, 'chosen',
                                              batch_size=self.batch_size)
      self._detector = score.Detector.build(model, chosen)
    self.threshold_ = float(self._detector.threshold)
    self.score_, self.image_shape_ = chosen, tuple(model.image_shape)
    self.chosen_ = detectors.chosen_detector(workdir)
    self.workdir_ = workdir

  def _check_fitted(self, what: str) -> None:
    if self._detector is None:
      raise NotFittedError(f'AMADetector.{what}: the detector is not fitted; '
                           'call fit(x) with normal images first, or '
                           'AMADetector.load(path).')

  def score_samples(self, x: ImagesLike) -> np.ndarray:
    """The chosen detector's score of each image, in input order (float32
    [N]); higher = more anomalous."""
    # pylint: disable-next=g-import-not-at-top
    from ama_jax.scoring import score_inputs
    self._check_fitted('score_samples')
    model = self._detector.model
    if isinstance(x, (str, os.PathLike)):
      inputs = score_inputs.open_inputs(x, model.image_shape,
                                        model.conversion,
                                        chunk=self.batch_size)
    else:
      inputs = score_inputs.array_inputs(np.asarray(x), model.image_shape,
                                         model.conversion, source='x',
                                         chunk=self.batch_size)
    return self._detector.scores(inputs, self.batch_size)[1]

  def decision_function(self, x: ImagesLike) -> np.ndarray:
    """score_samples(x) - threshold_: positive = anomaly."""
    return self.score_samples(x) - self.threshold_

  def predict(self, x: ImagesLike) -> np.ndarray:
    """1 for an anomaly (score above threshold_), else 0; int64 [N]."""
    return (self.score_samples(x) > self.threshold_).astype(np.int64)

  def save(self, path: Union[str, os.PathLike]) -> pathlib.Path:
    """Copies what scoring needs (checkpoints, the kNN reference,
    results.json, logs; not the training images) into a new folder."""
    self._check_fitted('save')
    path = pathlib.Path(path).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
      raise DetectorError(f'save: {path} already exists and is not an empty '
                          'folder; give a new path, or remove it first.')
    source = self.workdir_.resolve()
    if path.resolve() == source:
      return path
    shutil.copytree(source, path, dirs_exist_ok=True, ignore=lambda d, names: [
        n for n in names if n in NOT_SAVED and pathlib.Path(d) == source])
    return path

  @classmethod
  def load(cls, path: Union[str, os.PathLike],
           batch_size: int = 500, verbose: bool = False) -> 'AMADetector':
    """A detector saved by `save`, or any finished training workdir (or a
    folder of `python -m ama_jax.tools.export`)."""
    # pylint: disable-next=g-import-not-at-top
    from ama_jax.scoring import export_format
    path = pathlib.Path(path).expanduser()
    if not path.is_dir():
      raise DetectorError(f'load: {path} is not a folder; pass a folder '
                          'written by AMADetector.save or a training run.')
    if not ((path / 'results.json').is_file()
            or export_format.is_exported(path)):
      raise DetectorError(f'load: {path} has no results.json: not a saved '
                          'detector nor a finished training run (train it to '
                          'its end first).')
    params = {}
    if (path / DETECTOR_FILE).is_file():
      saved = json.loads((path / DETECTOR_FILE).read_text())
      params = {k: saved[k] for k in ('config', 'epochs', 'seed', 'overrides')
                if k in saved}
    detector = cls(**params, batch_size=batch_size, verbose=verbose)
    detector._open(path)  # pylint: disable=protected-access
    return detector
