"""Whole prepared splits kept as numpy files beside their TFDS copy.

A run reads whole splits into memory (the training set then lives on the
device). Through `builder.as_data_source(split)` that decodes every record in
Python, ~80 us each: 5 s for MNIST's 60,000 training images on a 2-core VM,
13 s of each Fashion-MNIST -> MNIST run's set-up. For the builders this
project prepares itself (`idx_images`, `local_images`), the first read of a
split also writes it to `<builder.data_dir>/arrays/<split>.npz`, and later
reads load that file (well under a second):

  images, labels = split_arrays.read(builder, 'train',
                                     lambda: decode_every_record())

The file is only ever a copy of what the TFDS records decode to:
* it records a fingerprint of the prepared copy (its `dataset_info.json`,
  which lists every shard and its length) and the split's length, and is
  used only while both still match;
* it is written to a temporary file and renamed, so an interrupted write or
  two processes writing at once never leave a partial file;
* a file that cannot be read is ignored (and written again), and a folder
  that cannot be written (a read-only data_dir) only costs the speed-up.
"""
import hashlib
import os
import pathlib
import re
from typing import Callable, Optional, Union
import uuid

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

PathLike = Union[str, os.PathLike]
Arrays = tuple[np.ndarray, np.ndarray]  # uint8 images [N, H, W, C], labels.

FOLDER = 'arrays'
_INFO = 'dataset_info.json'
_SPLIT_NAME = re.compile(r'^[A-Za-z0-9_+-]+$')


def fingerprint(builder_dir: PathLike) -> Optional[str]:
  """sha256 of the prepared copy's dataset_info.json (None: not prepared)."""
  try:
    return hashlib.sha256((pathlib.Path(builder_dir) / _INFO).read_bytes()
                          ).hexdigest()
  except OSError:
    return None


def _split_length(builder, split: str) -> Optional[int]:
  """The number of records of a prepared builder's split (None: unknown)."""
  try:
    return builder.info.splits[split].num_examples
  except (KeyError, ValueError):
    return None


def path(builder_dir: PathLike, split: str) -> pathlib.Path:
  return pathlib.Path(builder_dir) / FOLDER / f'{split}.npz'


def _load(file: pathlib.Path, stamp: str) -> Optional[Arrays]:
  try:
    with np.load(file, allow_pickle=False) as saved:
      if str(saved['fingerprint']) != stamp:
        logging.info('%s is from another preparation of the data: '
                     'decoding the records again.', file)
        return None
      images, labels = saved['images'], saved['labels']
  except (FileNotFoundError, NotADirectoryError):  # Not saved yet.
    return None
  except Exception as e:  # pylint: disable=broad-except
    # Damaged or foreign file (zip/npy errors, missing keys): decode instead.
    logging.warning('Ignoring %s (%s: %s); decoding the records again.', file,
                    type(e).__name__, e)
    return None
  if (images.dtype != np.uint8 or images.ndim != 4 or labels.ndim != 1 or
      len(images) != len(labels)):
    logging.warning('Ignoring %s (images %s %s, labels %s); decoding the '
                    'records again.', file, images.dtype, images.shape,
                    labels.shape)
    return None
  return images, labels


def _save(file: pathlib.Path, stamp: str, images: np.ndarray,
          labels: np.ndarray) -> None:
  try:
    file.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per writer; the umask's permissions, as the records.
    tmp = file.with_name(f'.{file.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp')
    try:
      with open(tmp, 'xb') as f:
        np.savez(f, images=images, labels=labels,
                 fingerprint=np.asarray(stamp))
      os.replace(tmp, file)
    except BaseException:
      tmp.unlink(missing_ok=True)
      raise
  except OSError as e:
    logging.warning('Could not keep %s as numpy (%s); later runs decode its '
                    'records again.', file, e)


def read(builder: tfds.core.DatasetBuilder, split: str,
         decode: Callable[[], Arrays]) -> Arrays:
  """One whole split: from `<data_dir>/arrays/<split>.npz`, else decoded.

  Args:
    builder: the prepared copy (its `data_dir`, and its split's length: a
      saved file of another length is not used).
    split: a split name ('train', 'test', 'all', 'train+test').
    decode: reads the split from its TFDS records: (uint8 images
      [N, H, W, C], labels [N]).

  Returns:
    (images, labels), equal to what `decode()` returns.
  """
  stamp = fingerprint(builder.data_dir)
  if stamp is None or not _SPLIT_NAME.match(split):
    return decode()
  stamp = f'{stamp}:{split}'
  file = path(builder.data_dir, split)
  saved = _load(file, stamp)
  if saved is not None:
    num_examples = _split_length(builder, split)
    if num_examples in (None, len(saved[0])):
      return saved
    logging.info('%s holds %d images, the split %d: decoding the records '
                 'again.', file, len(saved[0]), num_examples)
  images, labels = decode()
  if isinstance(images, np.ndarray) and images.ndim == 4:
    _save(file, stamp, images, labels)
  return images, labels
