"""What every data module shares: errors, dataset names, conversion, Source.

* `DataError`, `DataUnavailableError`: a dataset cannot be found, read or
  split as the config asks (re-exported by `ama_jax.data.input_pipeline`).
* The built-in datasets and their class names (`DATASETS`, `class_index`).
* The conversion settings `data.image_size`, `data.channels`, `data.resize`
  (`conversion`), and where the data lives (`data_dir`, `raw_dir`).
* `Source`: the interface of a resolved dataset, implemented by
  `ama_jax.data.tfds_source` (TFDS) and `ama_jax.data.data_sources` (folders, arrays).
"""
import dataclasses
import pathlib
import re
from typing import Any, Optional, Sequence, Union

import numpy as np

from ama_jax import errors
from ama_jax.data import archives
from ama_jax.data import idx_images
from ama_jax.data import image_files
from ama_jax.data import image_folder

# Built-in TFDS names -> class names in label order.
DATASETS: dict[str, tuple[str, ...]] = {
    'mnist': idx_images.CLASS_NAMES['mnist'],
    'fashion_mnist': idx_images.CLASS_NAMES['fashion_mnist'],
    'cifar10': archives.CIFAR10_CLASSES,
    'svhn_cropped': archives.SVHN_CLASSES,
}
# Extra accepted spellings, compared after `_canonical`.
CLASS_ALIASES = {
    'fashion_mnist': {'tshirt': 0, 'top': 0, 'boot': 9},
    'cifar10': {'plane': 0, 'aeroplane': 0, 'car': 1},
}
SPLITS = ('train', 'test')
RESIZE_METHODS = image_files.RESIZE_METHODS
ALL = image_folder.ALL  # The split of a source without train/test splits.


class DataError(errors.DataError):
  """A dataset cannot be found, read or split as the config asks.

  The message names the field or file, the problem and the fix. An
  `errors.DataError` (a UserError and a ValueError): the command-line
  programs print it as one line.
  """


class DataUnavailableError(DataError, FileNotFoundError):
  """A dataset is neither on disk nor obtainable (no network, no download)."""


# --- Names and checks. ---


def check_dataset(name: Any, field: str = 'data.dataset') -> str:
  """A built-in dataset name (for `class_index` and `load_raw`)."""
  if name not in DATASETS:
    raise DataError(f'Unknown dataset {field}={name!r}; built-in names: '
                    f'{", ".join(DATASETS)}.')
  return name


def _canonical(name: str) -> str:
  return re.sub(r'[^a-z0-9]', '', str(name).lower())


def _class_index(names: Sequence[str], value: Union[int, str], what: str,
                 aliases: Optional[dict[str, int]] = None,
                 by_name_first: bool = False) -> int:
  """A class given by index or (case-insensitive) name -> its index.

  `by_name_first`: an integer that is also a class name (a folder `3/`)
  means that class, not the index.
  """
  lookup = {_canonical(n): i for i, n in enumerate(names)}
  lookup.update(aliases or {})
  valid = (f'valid names: {list(names)} (or indices 0..{len(names) - 1})'
           if names else 'it has no classes')
  is_int = isinstance(value, (int, np.integer)) and not isinstance(value,
                                                                    bool)
  if by_name_first and (is_int or isinstance(value, str)):
    key = _canonical(str(int(value)) if is_int else value)
    if key in lookup:
      return lookup[key]
  if is_int:
    index = int(value)
  elif isinstance(value, str) and value.strip().isdigit():
    index = int(value)
  elif isinstance(value, str):
    if _canonical(value) not in lookup:
      raise DataError(f'Unknown class {value!r} of {what}; {valid}.')
    return lookup[_canonical(value)]
  else:
    raise DataError(f'A class of {what} must be an index or a name, got '
                    f'{value!r}.')
  if not 0 <= index < len(names):
    raise DataError(f'Class index {index} is out of range for {what}: '
                    f'{valid}.')
  return index


def class_index(dataset: str, value: Union[int, str]) -> int:
  """Resolves a class of a built-in dataset given by index or name.

  Args:
    dataset: a built-in name, e.g. 'fashion_mnist'.
    value: an index (int or digit string) or a class name such as 'Trouser',
      't-shirt' or 'airplane'.

  Returns:
    The class index in [0, num_classes).

  Raises:
    DataError (a ValueError): unknown dataset, or a class out of range / not
      found.
  """
  names = DATASETS[check_dataset(dataset)]
  return _class_index(names, value, dataset, CLASS_ALIASES.get(dataset))


# --- Conversion settings: data.image_size, data.channels, data.resize. ---


Conversion = image_files.Conversion


def conversion(data_config: Any) -> Conversion:
  """`image_files.conversion` of `config.data`, errors as DataError."""
  try:
    return image_files.conversion(data_config)
  except image_files.ImageError as e:
    raise DataError(str(e)) from e


def _fit_all(images: Union[np.ndarray, Sequence[np.ndarray]],
             shape: tuple[int, int, int], resize: str, what: str
             ) -> np.ndarray:
  """uint8 images (an array or a list of any shapes) -> [N, *shape]."""
  if isinstance(images, np.ndarray) and images.shape[1:] == shape:
    return images
  out = np.empty((len(images), *shape), np.uint8)
  for i, image in enumerate(images):
    try:
      out[i] = image_files.fit(np.asarray(image, np.uint8), shape, resize,
                               what=f'{what} image {i}')
    except image_files.ImageError as e:
      raise DataError(str(e)) from e
  return out


# --- Where the data lives. ---


def data_dir(data_config) -> pathlib.Path:
  return pathlib.Path(data_config.get('data_dir')
                      or idx_images.DEFAULT_DATA_DIR).expanduser()


def raw_dir(data_config) -> pathlib.Path:
  return pathlib.Path(data_config.get('raw_dir')
                      or idx_images.DEFAULT_RAW_DIR).expanduser()


# --- Sources: where the images of data.dataset / data.ood_dataset come from.


@dataclasses.dataclass
class Source:
  """A resolved dataset: its classes, shapes and a reader per split.

  Subclasses set the fields and implement `shapes` and `_read`.
  """
  field: str  # 'data.dataset' or 'data.ood_dataset'.
  spec: str  # The field's value.
  name: str  # For messages and logs.
  class_names: tuple[str, ...]  # () when the images carry no labels.
  splits: tuple[str, ...]  # ('train', 'test'), or (ALL,) for a hold-out.

  aliases: Optional[dict[str, int]] = None
  by_name_first = False  # Class folders named by digits win over indices.

  def shapes(self, conv: Conversion) -> dict[tuple, int]:
    """Native (H, W, C) -> count; None entries: unknown (may vary)."""
    raise NotImplementedError

  def check_available(self) -> None:
    """Raises DataUnavailableError, within seconds, if it cannot be read."""

  def read(self, split: str, shape: tuple[int, int, int], conv: Conversion
           ) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [N, *shape] images and int64 [N] classes of one split."""
    images, labels = self._read(split, shape, conv)
    if len(images) != len(labels):
      raise DataError(f'{self.name}/{split}: {len(images)} images but '
                      f'{len(labels)} labels.')
    return _fit_all(images, shape, conv.resize, f'{self.name}/{split}'), \
        np.asarray(labels, np.int64)

  def _read(self, split, shape, conv):
    raise NotImplementedError

  def class_index(self, value: Union[int, str]) -> int:
    return _class_index(self.class_names, value, self.name, self.aliases,
                        self.by_name_first)
