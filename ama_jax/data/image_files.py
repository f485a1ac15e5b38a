r"""Image files and the one conversion every input goes through.

Training (`input_pipeline`, folder datasets), scoring
(`ama_jax.scoring.score_inputs`) and the exported scorer's documentation
share these rules, so that an image is turned into the same pixels wherever
it is read:

* Files: PNG, JPEG or BMP (`IMAGE_SUFFIXES`), 8 bits per channel. Palette
  and 1-bit images are expanded, CMYK/YCbCr become RGB; an alpha channel is
  dropped when fully opaque, and a transparent image is an error (flatten it
  first). 16-bit and float images are errors (convert them to 8 bits).
* `fit(pixels, shape, resize)` brings a uint8 [h, w, c] image to [H, W, C]:
  channels first (grey -> RGB repeats the channel; RGB -> grey is the ITU-R
  601-2 luma that PIL's `convert('L')` computes, exact for grey images
  stored as RGB), then the size, by `resize`:

  - 'bilinear': antialiased bilinear resampling to H x W (PIL), the aspect
    ratio is not kept;
  - 'nearest': nearest-neighbour resampling to H x W;
  - 'crop': the central crop with the target's aspect ratio, then bilinear;
  - 'pad': centred in a black (pixel 0) H x W frame when it fits (MNIST's
    28 x 28 in a 32 x 32 frame); a larger image is resized bilinearly.

  An image is never upscaled by more than `MAX_UPSCALE` on a side (it would
  be mostly invented detail): smaller images are an error, except with
  'pad', which frames them. `fit` on an image that already has the target
  shape returns it unchanged.
"""
import dataclasses
import os
import pathlib
from typing import Any, Optional, Sequence, Union

import numpy as np
from PIL import Image
from PIL import ImageOps
from PIL import UnidentifiedImageError

PathLike = Union[str, os.PathLike]

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')
RESIZE_METHODS = ('bilinear', 'nearest', 'crop', 'pad')
MAX_UPSCALE = 2.0
# Modes PIL reads losslessly into 8-bit grey or RGB (alpha handled apart).
_GREY_MODES, _COLOUR_MODES = ('L', '1', 'LA', 'La'), ('RGB', 'RGBA', 'RGBa',
                                                       'CMYK', 'YCbCr', 'P',
                                                       'PA', 'LAB', 'HSV')


class ImageError(ValueError):
  """An image that cannot be read or converted; the message names it."""


def is_image_file(path: PathLike) -> bool:
  """Whether `path` has one of the supported suffixes (case-insensitive)."""
  return pathlib.Path(path).suffix.lower() in IMAGE_SUFFIXES


def _channels_of_mode(mode: str, path: PathLike) -> int:
  if mode in _GREY_MODES:
    return 1
  if mode in _COLOUR_MODES:
    return 3
  if mode.startswith('I') or mode == 'F':
    raise ImageError(f'{path}: {mode!r} images (16-bit or float) are not '
                     'supported; convert it to 8-bit grey or RGB.')
  raise ImageError(f'{path}: unsupported image mode {mode!r}; give 8-bit '
                   'grey or RGB images.')


def probe(path: PathLike) -> tuple[int, int, int]:
  """(height, width, channels) from the file header, without decoding.

  Raises:
    ImageError: not a readable image, or an unsupported mode.
  """
  try:
    with Image.open(path) as image:
      width, height = image.size
      mode = image.mode
  except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
    raise ImageError(f'Cannot read image {path}: {e}') from e
  return height, width, _channels_of_mode(mode, path)


def read(path: PathLike) -> np.ndarray:
  """One image file -> uint8 [H, W, C], C = 1 (grey) or 3 (colour).

  Raises:
    ImageError: unreadable, transparent, 16-bit or otherwise unsupported.
  """
  try:
    with Image.open(path) as image:
      image.load()
      channels = _channels_of_mode(image.mode, path)
      if image.mode == 'P':  # Palette: expand to its colours.
        image = image.convert('RGBA' if 'transparency' in image.info
                              else 'RGB')
      elif image.mode == 'PA':
        image = image.convert('RGBA')
      elif image.mode == '1':
        image = image.convert('L')
      elif image.mode in ('CMYK', 'YCbCr', 'LAB', 'HSV'):
        image = image.convert('RGB')
      elif image.mode in ('La', 'RGBa'):  # Premultiplied alpha.
        image = image.convert(image.mode[0] + 'A' if channels == 1 else
                              'RGBA')
      pixels = np.asarray(image, np.uint8)
  except ImageError:
    raise
  except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
    raise ImageError(f'Cannot read image {path}: {e}') from e
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  if pixels.shape[-1] in (2, 4):  # Drop alpha only if it hides nothing.
    if (pixels[..., -1] != 255).any():
      raise ImageError(f'{path}: the image has transparent pixels; flatten '
                       'it onto a background first.')
    pixels = pixels[..., :-1]
  return np.ascontiguousarray(pixels)


def _check_resize(resize: str) -> str:
  if resize not in RESIZE_METHODS:
    raise ImageError(f'Unknown resize method {resize!r}; valid: '
                     f'{list(RESIZE_METHODS)}.')
  return resize


def fit(pixels: np.ndarray, shape: Sequence[int], resize: str = 'bilinear',
        what: str = 'image') -> np.ndarray:
  """uint8 [h, w, c] -> uint8 [H, W, C] (see the module docstring).

  Args:
    pixels: uint8 [h, w, c] with c in (1, 3).
    shape: target (H, W, C), C in (1, 3).
    resize: one of RESIZE_METHODS.
    what: names the image in errors (a file name or an array index).

  Raises:
    ImageError: unknown method, or an image too small for the target.
  """
  height, width, channels = (int(d) for d in shape)
  _check_resize(resize)
  pixels = np.asarray(pixels)
  if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] not in (
      1, 3):
    raise ImageError(f'{what}: expected uint8 [h, w, 1 or 3] pixels, got '
                     f'{pixels.dtype} {pixels.shape}.')
  h, w, c = pixels.shape
  if (h, w, c) == (height, width, channels):
    return pixels
  if c != channels:
    if c == 1:
      pixels = np.repeat(pixels, 3, axis=-1)
    else:
      pixels = np.asarray(Image.fromarray(pixels).convert('L'))[..., None]
  if (h, w) == (height, width):
    return pixels
  if resize == 'pad' and h <= height and w <= width:
    top, left = (height - h) // 2, (width - w) // 2
    return np.pad(pixels, ((top, height - h - top),
                           (left, width - w - left), (0, 0)))
  if resize == 'crop':
    # Largest central box with the target's aspect ratio.
    box_h, box_w = min(h, round(w * height / width)), min(
        w, round(h * width / height))
    crop_h, crop_w = box_h, box_w
  else:
    crop_h, crop_w = h, w
  if resize != 'pad' and (height > MAX_UPSCALE * crop_h
                          or width > MAX_UPSCALE * crop_w):
    raise ImageError(
        f'{what} is too small: {h}x{w} (HxW) would be upscaled more than '
        f'{MAX_UPSCALE:g}x to {height}x{width}; give larger images, lower '
        "data.image_size, or set data.resize='pad' to frame small images.")
  image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
  if resize == 'crop':
    image = ImageOps.fit(image, (width, height), Image.Resampling.BILINEAR)
  else:
    method = (Image.Resampling.NEAREST if resize == 'nearest' else
              Image.Resampling.BILINEAR)
    image = image.resize((width, height), method)
  out = np.asarray(image, np.uint8)
  return out[..., None] if out.ndim == 2 else out


@dataclasses.dataclass(frozen=True)
class Conversion:
  """How every image is brought to the model's input.

  Attributes:
    image_size: target (H, W), or None: the images' own (common) size.
    channels: 1 or 3, or None: the images' own (common) channel count.
    resize: one of RESIZE_METHODS (`image_files.fit`).
  """
  image_size: Optional[tuple[int, int]]
  channels: Optional[int]
  resize: str

  @property
  def explicit(self) -> bool:
    """Whether images of another shape are converted (else: an error)."""
    return self.image_size is not None or self.channels is not None


def conversion(data_config: Any) -> Conversion:
  """The checked conversion fields of `config.data` (a ConfigDict or dict).

  A config saved before these fields existed may hold `image_shape`
  (H, W, C) instead: it reads as that size and channel count, framed by
  'pad' (the old behaviour).

  Raises:
    ImageError: a value outside the allowed ones (named in the message).
  """
  get = data_config.get
  size, channels = get('image_size'), get('channels')
  resize = get('resize') or 'bilinear'
  old = get('image_shape')
  if old is not None and size is None and channels is None:
    shape = tuple(old) if isinstance(old, Sequence) else ()
    if (len(shape) != 3 or not all(isinstance(d, (int, np.integer)) and d > 0
                                   for d in shape) or shape[2] not in (1, 3)):
      raise ImageError(f'data.image_shape={old!r} must be (H, W, C) with '
                       'positive H, W and C in (1, 3), or None.')
    return Conversion((int(shape[0]), int(shape[1])), int(shape[2]), 'pad')
  if size is not None:
    ok = (isinstance(size, (int, np.integer)) and not isinstance(size, bool)
          and size > 0)
    pair = isinstance(size, Sequence) and not isinstance(size, str) and len(
        size) == 2 and all(isinstance(d, (int, np.integer)) and d > 0
                           for d in size)
    if not (ok or pair):
      raise ImageError(f'data.image_size={size!r} must be a positive integer '
                       '(square images, e.g. 28) or None (keep the size).')
    size = (int(size), int(size)) if ok else (int(size[0]), int(size[1]))
  if channels is not None and (isinstance(channels, bool)
                               or channels not in (1, 3)):
    raise ImageError(f'data.channels={channels!r} must be 1 (grey), 3 (RGB) '
                     'or None (keep the images\' own).')
  if resize not in RESIZE_METHODS:
    raise ImageError(f'Unknown data.resize={resize!r}; valid: '
                     f'{list(RESIZE_METHODS)}.')
  return Conversion(size, None if channels is None else int(channels),
                    resize)


def list_images(directory: PathLike, recursive: bool = True
                ) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
  """(image files, other files) under `directory`, hidden entries skipped.

  Image files are sorted by relative path.
  """
  images, others = [], []
  # os.scandir and strings: pathlib objects cost seconds on 70k files.
  folders = [os.fspath(directory)]
  while folders:
    with os.scandir(folders.pop()) as entries:
      for entry in entries:
        if entry.name.startswith('.'):
          continue
        if entry.is_dir():
          (folders if recursive else others).append(entry.path)
        elif os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
          images.append(entry.path)
        else:
          others.append(entry.path)
  return ([pathlib.Path(p) for p in sorted(images)],
          [pathlib.Path(p) for p in sorted(others)])
