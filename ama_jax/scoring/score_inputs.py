"""Images to score: arrays, .npy/.npz/IDX files, image files and folders.

`open_inputs` reads and validates the images to score (a .npy/.npz array, a
folder of PNG/JPEG/BMP files, one image file or an IDX image file; the
formats, conversions and checks are those `python -m ama_jax.tools.score
--help` describes), `array_inputs` an array in memory, and `load_images`
reads them all into memory. A problem raises `score_error.ScoreError`.
"""
import dataclasses
import math
import mmap
import os
import pathlib
from typing import Callable, Iterator, Sequence

from absl import logging
import numpy as np

from ama_jax.data import image_files
from ama_jax.scoring import score_error

IMAGE_SUFFIXES = image_files.IMAGE_SUFFIXES
IDX_IMAGES_MAGIC = 2051
_NPY_MAGIC, _ZIP_MAGIC, _GZIP_MAGIC = b'\x93NUMPY', b'PK\x03\x04', b'\x1f\x8b'
FORMATS = ('.npy, .npz, a folder of PNG/JPEG/BMP images, one image file or '
           f'an IDX image file (magic {IDX_IMAGES_MAGIC})')



def _shape_str(shape: Sequence[int]) -> str:
  return 'x'.join(str(int(d)) for d in shape)


# ----------------------------------------------------------------------------
# Inputs: validated up front, read in chunks.
# ----------------------------------------------------------------------------
@dataclasses.dataclass
class Inputs:
  """Images to score: ids, and a reader of rows [start, stop).

  `read(start, stop)` returns float32 [stop - start, H, W, C] in [-1, 1];
  every check that needs no pixels was done when the object was made, and
  arrays' values too (`_check_values`).
  """
  source: str
  ids: Sequence[str]
  read: Callable[[int, int], np.ndarray]

  def __len__(self) -> int:
    return len(self.ids)

  def chunks(self, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(self), size):
      yield self.read(start, min(start + size, len(self)))


@dataclasses.dataclass(frozen=True)
class Images:
  """Images to score, all in memory, in the model's input format."""
  ids: list[str]  # One per image: file name or row index.
  images: np.ndarray  # [N, H, W, C] float32 in [-1, 1].


class _RowIds(Sequence[str]):
  """'0', '1', ... without a list of 200,000 strings."""

  def __init__(self, n: int):
    self.n = n

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [str(j) for j in range(*i.indices(self.n))]
    if not -self.n <= i < self.n:
      raise IndexError(i)
    return str(i % self.n)


def _check_array(shape: Sequence[int], dtype: np.dtype,
                 image_shape: tuple[int, int, int], source: str,
                 convert: bool) -> None:
  """Shape and dtype checks of an array input (no pixels read)."""
  height, width, channels = image_shape
  ndim = len(shape) + (1 if len(shape) == 3 and (channels == 1 or convert)
                       else 0)
  if ndim != 4 or (len(shape) == 4 and shape[-1] not in (1, 3)):
    raise score_error.ScoreError(
        f'{source}: expected images of shape [N, {height}, '
        f'{width}, {channels}]' + (
            f' or [N, {height}, {width}]' if channels == 1 else
            '') + f', got shape {tuple(shape)}.')
  if shape[0] == 0:
    raise score_error.ScoreError(f'{source} holds no images.')
  if dtype == np.bool_ or not (np.issubdtype(dtype, np.integer)
                               or np.issubdtype(dtype, np.floating)):
    raise score_error.ScoreError(
        f'{source}: unsupported dtype {dtype}; give uint8 '
        'pixels (0..255) or floats in [-1, 1].')
  own = tuple(shape[1:]) + ((1,) if len(shape) == 3 else ())
  if own != tuple(image_shape) and not (
      convert and np.issubdtype(dtype, np.integer)):
    hint = ('; float arrays are not converted: give uint8 pixels'
            if convert else '; resize or convert them first')
    raise score_error.ScoreError(
        f'{source}: images are {_shape_str(own)} (HxWxC) but '
        f'the model expects {_shape_str(image_shape)}{hint}.')


def _check_values(array, source: str, chunk: int) -> None:
  """One pass over the pixels: range, NaN/Inf (arrays may be mmap'd)."""
  if array.dtype == np.uint8:
    return
  floating = np.issubdtype(array.dtype, np.floating)
  lo, hi, bad, first_bad = math.inf, -math.inf, 0, None
  for start in range(0, len(array), chunk):
    part = np.asarray(array[start:start + chunk])
    if floating:
      finite = np.isfinite(part)
      if not finite.all():
        bad += int((~finite).sum())
        if first_bad is None:
          first_bad = start + int(np.flatnonzero(
              ~finite.reshape(len(part), -1).all(1))[0])
        part = part[finite]
    if part.size:
      lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
  if bad:
    raise score_error.ScoreError(
        f'{source}: {bad} NaN/Inf pixel values (first in image '
        f'{first_bad}); fix or drop those images.')
  if floating:
    if lo < -1.0 or hi > 1.0:
      raise score_error.ScoreError(
          f'{source}: float pixels must be in [-1, 1], got '
          f'[{lo:g}, {hi:g}]; give uint8 0..255 or rescale '
          '(x / 127.5 - 1 for 0..255, 2 x - 1 for [0, 1]).')
    if lo >= 0.0:
      logging.warning('%s: every pixel is >= 0; float input is read as '
                      '[-1, 1]. If these are [0, 1] images, pass 2 x - 1.',
                      source)
  elif lo < 0 or hi > 255:
    raise score_error.ScoreError(
        f'{source}: integer pixels must be in 0..255, got '
        f'{int(lo)}..{int(hi)}.')


def _to_model(pixels: np.ndarray, image_shape: tuple[int, int, int],
              conv, what: str) -> np.ndarray:
  """A chunk of pixels [n, h, w(, c)] -> float32 [n, *image_shape]."""
  if pixels.ndim == 3:
    pixels = pixels[..., None]
  if pixels.shape[1:] != tuple(image_shape):  # Only with conv (checked).
    pixels = np.stack([_fit(p.astype(np.uint8), image_shape, conv,
                            f'{what} image {i}')
                       for i, p in enumerate(pixels)])
  if np.issubdtype(pixels.dtype, np.floating):
    return pixels.astype(np.float32)
  # Exactly as input_pipeline converts training images.
  return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _fit(pixels: np.ndarray, image_shape, conv, what: str) -> np.ndarray:
  try:
    return image_files.fit(pixels, image_shape, conv.resize, what=what)
  except image_files.ImageError as e:
    raise score_error.ScoreError(str(e)) from e


def _array_inputs(array: np.ndarray, image_shape, conv, source: str,
                  chunk: int) -> Inputs:
  _check_array(array.shape, array.dtype, image_shape, source,
               conv is not None)
  _check_values(array, source, chunk)
  return Inputs(source, _RowIds(len(array)),
                lambda a, b: _to_model(np.asarray(array[a:b]), image_shape,
                                       conv, source))


def _npy_inputs(path: pathlib.Path, image_shape, conv, chunk: int) -> Inputs:
  """A .npy file, memory-mapped; pages already read are dropped again."""
  readers = {(1, 0): np.lib.format.read_array_header_1_0,
             (2, 0): np.lib.format.read_array_header_2_0}
  try:
    with open(path, 'rb') as f:
      version = np.lib.format.read_magic(f)
      header = readers[version](f) if version in readers else None
      offset = f.tell()
  except (OSError, ValueError) as e:
    raise score_error.ScoreError(
        f'Cannot read {path} as a .npy array: {e}') from e
  shape, fortran, dtype = header or ((), True, np.dtype(object))
  if fortran or dtype.hasobject or not shape:
    # Rare layouts: numpy's own reader (still memory-mapped).
    try:
      array = np.load(path, mmap_mode='r', allow_pickle=False)
    except (OSError, ValueError) as e:
      raise score_error.ScoreError(
          f'Cannot read {path} as a .npy array: {e}') from e
    return _array_inputs(array, image_shape, conv, str(path), chunk)
  _check_array(shape, dtype, image_shape, str(path), conv is not None)
  row = int(np.prod(shape[1:])) * dtype.itemsize
  size = offset + row * shape[0]
  if path.stat().st_size < size:
    raise score_error.ScoreError(
        f'{path}: the file is truncated ({path.stat().st_size} '
        f'bytes, its header says {size}).')
  with open(path, 'rb') as f:
    mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

  def rows(a: int, b: int) -> np.ndarray:
    return np.frombuffer(mapped, dtype, (b - a) * int(np.prod(shape[1:])),
                         offset + a * row).reshape((b - a, *shape[1:]))

  def release(a: int, b: int) -> None:
    # Drop the pages of rows [a, b) from this process (they stay in the
    # page cache), so that resident memory does not grow with the file.
    start = (offset + a * row) // mmap.PAGESIZE * mmap.PAGESIZE
    stop = offset + b * row
    if hasattr(mapped, 'madvise') and stop > start:
      mapped.madvise(mmap.MADV_DONTNEED, start, stop - start)

  class _Rows:  # What _check_values reads: dtype, len() and slices.

    def __len__(self):
      return shape[0]

    def __getitem__(self, s):
      part = np.array(rows(s.start, min(s.stop, shape[0])))
      release(s.start, min(s.stop, shape[0]))
      return part

  view = _Rows()
  view.dtype = dtype
  _check_values(view, str(path), chunk)

  def read(a: int, b: int) -> np.ndarray:
    out = _to_model(rows(a, b), image_shape, conv, str(path))
    release(a, b)
    return out

  return Inputs(str(path), _RowIds(shape[0]), read)


def _load_npz(path: pathlib.Path) -> np.ndarray:
  try:
    with np.load(path, allow_pickle=False) as npz:
      if not npz.files:
        raise score_error.ScoreError(f'{path} holds no arrays.')
      key = next((k for k in ('images', 'x') if k in npz.files), npz.files[0])
      if key not in ('images', 'x'):
        logging.info('%s: no key `images` or `x`; using %r.', path, key)
      return npz[key]
  except (OSError, ValueError, EOFError) as e:
    raise score_error.ScoreError(
        f'Cannot read {path} as a .npz archive: {e}') from e


def _load_idx(path: pathlib.Path) -> np.ndarray:
  # One IDX reader for the package (imports TFDS: only when needed).
  from ama_jax.data import idx_images  # pylint: disable=g-import-not-at-top
  try:
    images = idx_images.read_idx(path, ndim=3)
  except (OSError, ValueError) as e:
    raise score_error.ScoreError(
        f'{path}: not a valid IDX image file: {str(e).splitlines()[0]}') from e
  if images.dtype != np.uint8:
    raise score_error.ScoreError(
        f'{path}: IDX images must be uint8 pixels, got {images.dtype}.')
  return images


def _read_image_file(path: pathlib.Path, image_shape: tuple[int, int, int],
                     conv) -> np.ndarray:
  """One image file -> uint8 [H, W, C] of the model's shape."""
  try:
    pixels = image_files.read(path)
  except image_files.ImageError as e:
    raise score_error.ScoreError(str(e)) from e
  if conv is not None:  # The run's own conversion.
    return _fit(pixels, image_shape, conv, str(path))
  c, channels = pixels.shape[-1], image_shape[2]
  if (c, channels) == (1, 3):
    pixels = np.repeat(pixels, 3, axis=-1)
  elif (c, channels) == (3, 1):
    if not (pixels == pixels[..., :1]).all():
      raise score_error.ScoreError(
          f'{path}: colour image ({c} channels) but the model '
          f'takes {channels} channel(s); convert it to greyscale first.')
    pixels = pixels[..., :1]
  if pixels.shape != tuple(image_shape):
    raise score_error.ScoreError(
        f'{path}: image is {_shape_str(pixels.shape)} (HxWxC) '
        f'but the model expects {_shape_str(image_shape)}; resize it first.')
  return pixels


def _file_inputs(paths: Sequence[pathlib.Path], image_shape, conv,
                 source: str) -> Inputs:
  """Image files, their headers checked first, pixels read per chunk."""
  if conv is None:  # Sizes must match: check them before any scoring.
    for p in paths:
      try:
        h, w, c = image_files.probe(p)
      except image_files.ImageError as e:
        raise score_error.ScoreError(str(e)) from e
      if (h, w) != tuple(image_shape[:2]):
        raise score_error.ScoreError(
            f'{p}: image is {h}x{w}x{c} (HxWxC) '
            f'but the model expects {_shape_str(image_shape)}; '
            'resize it first.')

  def read(a: int, b: int) -> np.ndarray:
    pixels = np.stack([_read_image_file(p, image_shape, conv)
                       for p in paths[a:b]])
    return pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)

  return Inputs(source, [p.name for p in paths], read)


def _folder_inputs(path: pathlib.Path, image_shape, conv) -> Inputs:
  entries = sorted(p for p in path.iterdir() if not p.name.startswith('.'))
  if not entries:
    raise score_error.ScoreError(
        f'{path} is an empty folder: no images to score.')
  for p in entries:
    if not p.is_file() or not image_files.is_image_file(p):
      raise score_error.ScoreError(
          f'{p} is not a PNG/JPEG/BMP file; the input folder '
          'must hold only images (move it elsewhere).')
  return _file_inputs(entries, image_shape, conv, str(path))


def open_inputs(path: os.PathLike | str, image_shape: Sequence[int],
                conv=None, chunk: int = 500) -> Inputs:
  """Opens and validates `--input` for a model of `image_shape` (H, W, C).

  Args:
    path: the input (the formats `python -m ama_jax.tools.score --help`
      lists).
    image_shape: the model's (H, W, C).
    conv: the run's `image_files.Conversion` when it converted its training
      images (explicit), else None: shapes must match.
    chunk: rows read at a time.

  Raises:
    score_error.ScoreError: missing, unreadable, empty or ill-shaped input.
  """
  path = pathlib.Path(path)
  image_shape = tuple(int(d) for d in image_shape)
  if path.is_dir():
    return _folder_inputs(path, image_shape, conv)
  if not path.exists():
    raise score_error.ScoreError(f'Input {path} does not exist.')
  suffix = path.suffix.lower()
  try:
    with open(path, 'rb') as f:
      head = f.read(8)
  except OSError as e:
    raise score_error.ScoreError(f'Cannot read input {path}: {e}') from e
  if not head:
    raise score_error.ScoreError(f'Input {path} is an empty file.')
  if suffix == '.npy' or head.startswith(_NPY_MAGIC):
    return _npy_inputs(path, image_shape, conv, chunk)
  if suffix == '.npz' or head.startswith(_ZIP_MAGIC):
    array = _load_npz(path)
  elif suffix in IMAGE_SUFFIXES:  # A single image file.
    return _file_inputs([path], image_shape, conv, str(path))
  elif len(head) >= 4 and int.from_bytes(head[:4], 'big') == IDX_IMAGES_MAGIC:
    array = _load_idx(path)
  elif len(head) >= 4 and int.from_bytes(head[:4], 'big') == 2049:
    raise score_error.ScoreError(
        f'{path} is an IDX label file (magic 2049); pass the '
        'images file (magic 2051).')
  elif head.startswith(_GZIP_MAGIC):
    raise score_error.ScoreError(
        f'{path} is gzip-compressed; decompress it first (gunzip -k {path}).')
  else:
    raise score_error.ScoreError(
        f'{path}: unrecognized input format; expected {FORMATS}.')
  return _array_inputs(array, image_shape, conv, str(path), chunk)


def array_inputs(array: np.ndarray, image_shape: Sequence[int], conv=None,
                 source: str = 'array', chunk: int = 500) -> Inputs:
  """An array in memory, validated and read as `open_inputs` reads a
  .npy file's (`source` names it in the messages).

  Raises:
    score_error.ScoreError: empty or ill-shaped, bad dtype, NaN/Inf or
      out-of-range pixels.
  """
  return _array_inputs(array, tuple(int(d) for d in image_shape), conv,
                       source, chunk)


def load_images(path: os.PathLike | str, image_shape: Sequence[int],
                conv=None) -> Images:
  """All of `--input` in memory (see `open_inputs`)."""
  inputs = open_inputs(path, image_shape, conv)
  return Images(list(inputs.ids), inputs.read(0, len(inputs)))
