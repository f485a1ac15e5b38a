r"""Where images come from: `open_source` and the folder and array sources.

`open_source` resolves `data.dataset` / `data.ood_dataset` to a source
(`data_common.Source`) without reading pixels; `target_shape` decides the
one (H, W, C) all of a run's sources are brought to.

Datasets (`data.dataset`, `data.ood_dataset`):

* `mnist`, `fashion_mnist`: the local IDX files (`ama_jax.data.
  idx_images`) when `bash scripts/setup.sh` fetched them, else TFDS.
* `cifar10`, `svhn_cropped`: a prepared TFDS copy in `data.data_dir`, else the
  published archives in `<data.raw_dir>/<name>/` (`ama_jax.data.
  archives`), else a TFDS download.
* any other TFDS image dataset by name (`tfds:NAME` or `NAME`): its image
  feature and (for one-class) its ClassLabel feature; class names from its
  `info`.
  These three: `ama_jax.data.tfds_source`.
* `folder:PATH`: a folder of PNG/JPEG/BMP images
  (`ama_jax.data.image_folder` describes the layouts), decoded and
  brought to the model's shape once into a TFDS copy
  (`ama_jax.data.local_images`).
* `array:PATH[,labels=PATH]`: a `.npy` (memory-mapped) or `.npz` array of
  images, with optional labels (see `_ArraySource`).

Images of every source are brought to one shape (H, W, C) by
`data.image_size`, `data.channels` and `data.resize`
(`ama_jax.data.image_files.fit`); without them, sources whose shapes
differ from each other or from the model's input (`input_size`) are an
error that names these fields.
"""
import dataclasses
import functools
import pathlib
from typing import Any, Optional, Sequence, Union

from absl import logging
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from ama_jax.data import data_common
from ama_jax.data import tfds_source
from ama_jax.data import image_files
from ama_jax.data import image_folder
from ama_jax.data import local_images

SPEC_PREFIXES = ('folder:', 'array:', 'tfds:')


@dataclasses.dataclass
class _FolderSource(data_common.Source):
  """A folder of image files (`image_folder`), prepared via `local_images`."""
  folder: Any = dataclasses.field(default=None, repr=False)
  data_config: Any = dataclasses.field(default=None, repr=False)
  names: dict = dataclasses.field(default_factory=dict, repr=False)
  by_name_first = True

  @classmethod
  def open(cls, path: str, data_config, field: str) -> '_FolderSource':
    try:
      folder = image_folder.scan(path)
    except image_folder.FolderError as e:
      raise data_common.DataError(f'{field}=folder:{path}: {e}') from e
    except OSError as e:
      raise data_common.DataError(
          f'{field}=folder:{path}: cannot list it ({e}).') from e
    splits = data_common.SPLITS if folder.has_test else (data_common.ALL,)
    return cls(field=field, spec=f'folder:{path}', name=f'folder {path}',
               class_names=folder.class_names, splits=splits, folder=folder,
               data_config=data_config)

  def class_index(self, value: Union[int, str]) -> int:
    try:
      return super().class_index(value)
    except data_common.DataError as e:
      raise data_common.DataError(
          f'{e} Name the normal class folder(s) in '
          'data.normal_classes (configs/folder.py:<class>).') from e

  def _name(self, conv: data_common.Conversion) -> str:
    """The prepared copy's name: a fingerprint of the files and `conv`."""
    key = (conv.image_size, conv.channels, conv.resize)
    if key not in self.names:  # Stats every file: once per run.
      self.names[key] = f'folder-{self.folder.fingerprint(*key)}'
    return self.names[key]

  def _config(self, conv: data_common.Conversion,
              shape: tuple[int, int, int]) -> local_images.LocalConfig:
    return local_images.LocalConfig(
        name=self._name(conv), image_shape=shape,
        class_names=self.folder.class_names or ('image',),
        splits=tuple(self.folder.files),
        examples=functools.partial(self._examples, shape=shape,
                                   resize=conv.resize),
        description=f'Images of {self.folder.root}')

  def _prepared(self, conv: data_common.Conversion):
    """A read-only builder of the copy prepared for `conv`, or None."""
    path = (data_common.data_dir(self.data_config) / 'local_images' /
            self._name(conv) / str(local_images.LocalImages.VERSION))
    if not (path / 'dataset_info.json').is_file():
      return None
    return tfds.builder_from_directory(path)

  def shapes(self, conv: data_common.Conversion) -> dict[tuple, int]:
    builder = self._prepared(conv)
    if builder is not None:  # Its images have the shape it was made with.
      n = sum(len(f) for f in self.folder.files.values())
      return {tuple(builder.info.features['image'].shape): n}
    if conv.image_size is not None and conv.channels is not None:
      return {}  # Any shape converts.
    paths = [p for files in self.folder.files.values() for p in files]
    try:
      return image_folder.native_shapes(paths)
    except image_files.ImageError as e:
      raise data_common.DataError(
          f'{self.field}={self.spec}: {e} Remove or replace the '
          'file.') from e

  def _examples(self, split: str, shape: tuple[int, int, int], resize: str):
    for path, label in zip(self.folder.files[split],
                           self.folder.labels[split].tolist()):
      try:
        yield image_files.fit(image_files.read(path), shape, resize,
                              what=str(path)), label
      except image_files.ImageError as e:
        raise data_common.DataError(f'{self.field}={self.spec}: {e}') from e

  def _read(self, split, shape, conv):
    config = self._config(conv, shape)
    data_dir = data_common.data_dir(self.data_config)
    builder = local_images.prepare(config, data_dir)
    stored = tuple(builder.info.features['image'].shape)
    if stored != tuple(shape):  # Cannot happen; guards the cache key.
      raise data_common.DataError(
          f'{data_dir}/local_images/{config.name} holds '
          f'{stored} images, expected {shape}; delete it.')
    logging.info('%s (%s split, %s layout): prepared in %s.', self.name,
                 split, self.folder.layout, builder.data_dir)
    return local_images.read_split(builder, split)



@dataclasses.dataclass
class _ArraySource(data_common.Source):
  """A `.npy` or `.npz` array of images, with optional labels.

  `array:IMAGES.npy[,labels=LABELS.npy]`: images [N, H, W] or [N, H, W, C]
  (C = 1 or 3), memory-mapped; labels [N] integers (class = value) or
  strings (classes sorted). `array:DATA.npz`: images under `images`, `x`,
  `x_train` or `train_images`, labels under `labels`, `y`, `y_train` or
  `train_labels`; a test split of its own under `x_test`/`test_images`
  (+ `y_test`/`test_labels`). Pixels: integers 0..255, or floats in
  [-1, 1] (rounded to 8 bits, as the model's inputs are).
  """
  arrays: dict = dataclasses.field(default_factory=dict)  # split -> (x, y).

  _IMAGE_KEYS = ('images', 'x', 'x_train', 'train_images')
  _LABEL_KEYS = ('labels', 'y', 'y_train', 'train_labels')
  _TEST_IMAGE_KEYS = ('x_test', 'test_images')
  _TEST_LABEL_KEYS = ('y_test', 'test_labels')

  @classmethod
  def open(cls, spec: str, field: str) -> '_ArraySource':
    path, _, options = spec.partition(',')
    labels_path = None
    if options:
      key, _, value = options.partition('=')
      if key.strip() != 'labels' or not value:
        raise data_common.DataError(f'{field}=array:{spec}: expected '
                                    'array:IMAGES.npy[,labels=LABELS.npy].')
      labels_path = pathlib.Path(value.strip()).expanduser()
    path = pathlib.Path(path).expanduser()
    where = f'{field}=array:{spec}'
    if not path.is_file():
      raise data_common.DataError(f'{where}: {path} does not exist.')
    if path.suffix.lower() not in ('.npy', '.npz'):
      raise data_common.DataError(f'{where}: expected a .npy or .npz file.')
    try:
      if path.suffix.lower() == '.npy':
        arrays = {data_common.ALL: (
            np.load(path, mmap_mode='r', allow_pickle=False),
            None if labels_path is None else
            np.load(labels_path, allow_pickle=False))}
      else:
        arrays = cls._from_npz(path, where)
    except (OSError, ValueError, EOFError) as e:
      raise data_common.DataError(f'{where}: cannot read it ({e}).') from e
    labels = [y for _, y in arrays.values() if y is not None]
    if labels and len(labels) != len(arrays):
      raise data_common.DataError(f'{where}: labels for some splits only.')
    class_names: tuple[str, ...] = ()
    if labels:
      values = np.concatenate([np.asarray(y).reshape(-1) for y in labels])
      if values.dtype.kind in 'iu':
        if values.min() < 0:
          raise data_common.DataError(
              f'{where}: integer labels must be >= 0, got '
              f'{values.min()}.')
        class_names = tuple(str(i) for i in range(int(values.max()) + 1))
      elif values.dtype.kind == 'U':
        class_names = tuple(sorted(set(values.tolist())))
      else:
        raise data_common.DataError(
            f'{where}: labels must be integers or strings, got '
            f'{values.dtype}.')
      arrays = {s: (x, cls._label_indices(y, class_names))
                for s, (x, y) in arrays.items()}
    for split, (x, y) in arrays.items():
      cls._check(x, y, f'{where} ({split})')
    return cls(field=field, spec=f'array:{spec}', name=f'array {path.name}',
               class_names=class_names, splits=tuple(arrays), arrays=arrays)

  @classmethod
  def _from_npz(cls, path: pathlib.Path, where: str) -> dict:
    with np.load(path, allow_pickle=False) as npz:
      keys = list(npz.files)
      pick = lambda names: next((k for k in names if k in keys), None)
      image_key = pick(cls._IMAGE_KEYS) or (keys[0] if len(keys) == 1
                                            else None)
      if image_key is None:
        raise data_common.DataError(
            f'{where}: no images; expected one of '
            f'{list(cls._IMAGE_KEYS)} among its arrays {keys}.')
      label_key = pick(cls._LABEL_KEYS)
      test_key, test_label_key = pick(cls._TEST_IMAGE_KEYS), pick(
          cls._TEST_LABEL_KEYS)
      read = lambda k: None if k is None else npz[k]
      if test_key is None:
        return {data_common.ALL: (read(image_key), read(label_key))}
      return {'train': (read(image_key), read(label_key)),
              'test': (read(test_key), read(test_label_key))}

  @staticmethod
  def _label_indices(y, class_names) -> Optional[np.ndarray]:
    if y is None:
      return None
    y = np.asarray(y).reshape(-1)
    if y.dtype.kind == 'U':
      index = {n: i for i, n in enumerate(class_names)}
      return np.asarray([index[v] for v in y.tolist()], np.int64)
    return y.astype(np.int64)

  @staticmethod
  def _check(x: np.ndarray, y: Optional[np.ndarray], where: str) -> None:
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[-1] not in (1, 3)):
      raise data_common.DataError(
          f'{where}: expected images [N, H, W] or [N, H, W, C] '
          f'with C = 1 or 3, got shape {x.shape}.')
    if not len(x):
      raise data_common.DataError(f'{where} holds no images.')
    if y is not None and len(y) != len(x):
      raise data_common.DataError(
          f'{where}: {len(x)} images but {len(y)} labels.')
    if x.dtype == np.bool_ or x.dtype.kind not in 'iuf':
      raise data_common.DataError(
          f'{where}: unsupported dtype {x.dtype}; give uint8 '
          'pixels (0..255) or floats in [-1, 1].')

  def shapes(self, conv: data_common.Conversion) -> dict[tuple, int]:
    out = {}
    for x, _ in self.arrays.values():
      shape = tuple(x.shape[1:]) + ((1,) if x.ndim == 3 else ())
      out[shape] = out.get(shape, 0) + len(x)
    return out

  def _read(self, split, shape, conv):
    x, y = self.arrays[split]
    what = f'{self.field}={self.spec} ({split})'
    pixels = to_uint8(x, what)
    if pixels.ndim == 3:
      pixels = pixels[..., None]
    return pixels, (np.zeros(len(x), np.int64) if y is None else y)


def to_uint8(x: np.ndarray, what: str, chunk: int = 10000) -> np.ndarray:
  """Image pixels -> uint8: integers 0..255 as they are, floats in [-1, 1]
  rounded ((x + 1) * 127.5). Read in chunks (memory-mapped input stays so).

  Raises:
    DataError: values outside those ranges, NaN or Inf.
  """
  if x.dtype == np.uint8:
    return np.asarray(x)
  out = np.empty(x.shape, np.uint8)
  warned = False
  for start in range(0, len(x), chunk):
    part = np.asarray(x[start:start + chunk])
    if part.dtype.kind == 'f':
      bad = ~np.isfinite(part).reshape(len(part), -1).all(1)
      if bad.any():
        raise data_common.DataError(
            f'{what}: NaN/Inf pixel values (first in image '
            f'{start + int(np.flatnonzero(bad)[0])}).')
      lo, hi = float(part.min()), float(part.max())
      if lo < -1.0 or hi > 1.0:
        raise data_common.DataError(
            f'{what}: float pixels must be in [-1, 1], got '
            f'[{lo:g}, {hi:g}]; give uint8 0..255 or rescale.')
      if lo >= 0.0 and not warned:
        logging.warning('%s: every pixel is >= 0; float input is read as '
                        '[-1, 1]. If these are [0, 1] images, pass 2 x - 1.',
                        what)
        warned = True
      out[start:start + chunk] = np.round((part + 1.0) * 127.5)
    else:
      lo, hi = int(part.min()), int(part.max())
      if lo < 0 or hi > 255:
        raise data_common.DataError(
            f'{what}: integer pixels must be in 0..255, got '
            f'{lo}..{hi}.')
      out[start:start + chunk] = part
  return out


def open_source(spec: Any, data_config: ml_collections.ConfigDict,
                field: str = 'data.dataset') -> data_common.Source:
  """Resolves `data.dataset` / `data.ood_dataset` to a source (no pixels
  read; a folder's files are listed, a TFDS builder's metadata read).

  Raises:
    DataError: unknown name, missing path, unusable folder/array/features.
    DataUnavailableError: a TFDS dataset with no local copy and no download.
  """
  if not isinstance(spec, str) or not spec.strip():
    raise data_common.DataError(
        f'{field}={spec!r} must name a dataset: a built-in name '
        f'({", ".join(data_common.DATASETS)}), folder:PATH, array:PATH or a '
        'TFDS name.')
  spec = spec.strip()
  if spec.startswith('folder:'):
    return _FolderSource.open(spec[len('folder:'):], data_config, field)
  if spec.startswith('array:'):
    return _ArraySource.open(spec[len('array:'):], field)
  if spec.startswith('tfds:'):
    return tfds_source.TfdsSource.open(spec[len('tfds:'):], data_config, field)
  if spec not in data_common.DATASETS:
    path = pathlib.Path(spec.partition(',')[0]).expanduser()
    if path.is_dir():
      return _FolderSource.open(spec, data_config, field)
    if path.suffix.lower() in ('.npy', '.npz'):
      return _ArraySource.open(spec, field)
  return tfds_source.TfdsSource.open(spec, data_config, field)


# --- Shapes. ---


def _shape_str(shape: Sequence[Any]) -> str:
  return 'x'.join('?' if d is None else str(int(d)) for d in shape)


def target_shape(sources: Sequence[data_common.Source],
                 conv: data_common.Conversion,
                 input_size: Optional[Sequence[int]]
                 ) -> tuple[int, int, int]:
  """The one (H, W, C) every image is brought to, or a DataError."""
  shapes = {s.name: s.shapes(conv) for s in sources}
  fields = ('data.image_size (with data.resize: '
            + '|'.join(data_common.RESIZE_METHODS) + ')')

  def common(axis: slice, what: str, field: str, suggestion: str):
    seen = {}  # value -> [(source name, count)]
    for name, counts in shapes.items():
      for shape, n in counts.items():
        value = tuple(shape[axis])
        seen.setdefault(value, []).append((name, n))
    unknown = [(n, v) for v, names in seen.items() if None in v
               for n, _ in names]
    if unknown:
      raise data_common.DataError(
          f'{unknown[0][0]} images have no fixed {what} (TFDS '
          f'shape {_shape_str(unknown[0][1])}); set {field} '
          f'(e.g. {suggestion}).')
    if len(seen) > 1:
      def where(names):
        return ', '.join(f'{n} ({c} images)' if c else n for n, c in names)
      listed = '; '.join(
          f'{_shape_str(v)} in {where(names)}'
          for v, names in sorted(seen.items(), key=lambda kv: -sum(
              c or 0 for _, c in kv[1]))[:3])
      raise data_common.DataError(
          f'Images differ in {what}: {listed}; set {field} '
          f'(e.g. {suggestion}) to convert them explicitly.')
    return next(iter(seen))

  if conv.image_size is not None:
    size = conv.image_size
  else:
    size = common(slice(0, 2), 'size (HxW)', fields,
                  f'data.image_size={input_size[0] if input_size else 28}')
  if conv.channels is not None:
    channels = conv.channels
  else:
    channels = common(slice(2, 3), 'channels', 'data.channels',
                      'data.channels=1 for grey, 3 for RGB')[0]
  if input_size is not None and tuple(size) != tuple(input_size):
    h, w = input_size
    how = (f'data.image_size={conv.image_size[0]} is' if conv.image_size
           else f'the images are {_shape_str(size)} (HxW), which is')
    raise data_common.DataError(
        f'{how} not the model\'s input size {h}x{w} (model.arch); set '
        f'data.image_size={h} (data.resize={conv.resize!r} of '
        f'{list(data_common.RESIZE_METHODS)}) or choose the model.arch for '
        f'{_shape_str(size)} images.')
  return (int(size[0]), int(size[1]), int(channels))
