"""Scoring new images with a trained AMA model: the score command's library.

`open_inputs` reads and validates the images to score (a .npy/.npz array, a
folder of PNG/JPEG/BMP files, one image file or an IDX image file; the
formats, conversions and checks are those `python -m ama_jax.tools.score
--help` describes) and `load_images` reads them all into memory;
`open_model` opens a training run's checkpoint or a folder written by
`python -m ama_jax.tools.export` (shape, conversion, calibration, and R(x)
built on first use); `load_scorer` restores a checkpoint's scorer from the
workdir alone; `check_output` and `write_csv` write the scores' CSV
atomically. A problem with the inputs raises `ScoreError` (an
`errors.UserError`: one line from the programs).
"""
import csv
import json
import dataclasses
import functools
import math
import mmap
import os
import pathlib
import tempfile
from typing import Callable, Iterator, Optional, Sequence

from absl import logging
import jax
import numpy as np

from ama_jax.checkpoints import checkpoint_files
from ama_jax.checkpoints import checkpoint_reading
from ama_jax import errors
from ama_jax.reporting import json_safe
from ama_jax.scoring import metrics
from ama_jax.models import nets
from ama_jax.scoring import scoring
from ama_jax.training import train_state
from ama_jax.data import image_files

IMAGE_SUFFIXES = image_files.IMAGE_SUFFIXES
IDX_IMAGES_MAGIC = 2051
_NPY_MAGIC, _ZIP_MAGIC, _GZIP_MAGIC = b'\x93NUMPY', b'PK\x03\x04', b'\x1f\x8b'
FORMATS = ('.npy, .npz, a folder of PNG/JPEG/BMP images, one image file or '
           f'an IDX image file (magic {IDX_IMAGES_MAGIC})')


class ScoreError(errors.UserError):
  """Bad inputs of the score command; the message says what to fix."""


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
    raise ScoreError(f'{source}: expected images of shape [N, {height}, '
                     f'{width}, {channels}]' + (
                         f' or [N, {height}, {width}]' if channels == 1 else
                         '') + f', got shape {tuple(shape)}.')
  if shape[0] == 0:
    raise ScoreError(f'{source} holds no images.')
  if dtype == np.bool_ or not (np.issubdtype(dtype, np.integer)
                               or np.issubdtype(dtype, np.floating)):
    raise ScoreError(f'{source}: unsupported dtype {dtype}; give uint8 '
                     'pixels (0..255) or floats in [-1, 1].')
  own = tuple(shape[1:]) + ((1,) if len(shape) == 3 else ())
  if own != tuple(image_shape) and not (
      convert and np.issubdtype(dtype, np.integer)):
    hint = ('; float arrays are not converted: give uint8 pixels'
            if convert else '; resize or convert them first')
    raise ScoreError(f'{source}: images are {_shape_str(own)} (HxWxC) but '
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
    raise ScoreError(f'{source}: {bad} NaN/Inf pixel values (first in image '
                     f'{first_bad}); fix or drop those images.')
  if floating:
    if lo < -1.0 or hi > 1.0:
      raise ScoreError(f'{source}: float pixels must be in [-1, 1], got '
                       f'[{lo:g}, {hi:g}]; give uint8 0..255 or rescale '
                       '(x / 127.5 - 1 for 0..255, 2 x - 1 for [0, 1]).')
    if lo >= 0.0:
      logging.warning('%s: every pixel is >= 0; float input is read as '
                      '[-1, 1]. If these are [0, 1] images, pass 2 x - 1.',
                      source)
  elif lo < 0 or hi > 255:
    raise ScoreError(f'{source}: integer pixels must be in 0..255, got '
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
    raise ScoreError(str(e)) from e


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
    raise ScoreError(f'Cannot read {path} as a .npy array: {e}') from e
  shape, fortran, dtype = header or ((), True, np.dtype(object))
  if fortran or dtype.hasobject or not shape:
    # Rare layouts: numpy's own reader (still memory-mapped).
    try:
      array = np.load(path, mmap_mode='r', allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ScoreError(f'Cannot read {path} as a .npy array: {e}') from e
    return _array_inputs(array, image_shape, conv, str(path), chunk)
  _check_array(shape, dtype, image_shape, str(path), conv is not None)
  row = int(np.prod(shape[1:])) * dtype.itemsize
  size = offset + row * shape[0]
  if path.stat().st_size < size:
    raise ScoreError(f'{path}: the file is truncated ({path.stat().st_size} '
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
        raise ScoreError(f'{path} holds no arrays.')
      key = next((k for k in ('images', 'x') if k in npz.files), npz.files[0])
      if key not in ('images', 'x'):
        logging.info('%s: no key `images` or `x`; using %r.', path, key)
      return npz[key]
  except (OSError, ValueError, EOFError) as e:
    raise ScoreError(f'Cannot read {path} as a .npz archive: {e}') from e


def _load_idx(path: pathlib.Path) -> np.ndarray:
  # One IDX reader for the package (imports TFDS: only when needed).
  from ama_jax.data import idx_images  # pylint: disable=g-import-not-at-top
  try:
    images = idx_images.read_idx(path, ndim=3)
  except (OSError, ValueError) as e:
    raise ScoreError(f'{path}: not a valid IDX image file: '
                     f'{str(e).splitlines()[0]}') from e
  if images.dtype != np.uint8:
    raise ScoreError(f'{path}: IDX images must be uint8 pixels, got '
                     f'{images.dtype}.')
  return images


def _read_image_file(path: pathlib.Path, image_shape: tuple[int, int, int],
                     conv) -> np.ndarray:
  """One image file -> uint8 [H, W, C] of the model's shape."""
  try:
    pixels = image_files.read(path)
  except image_files.ImageError as e:
    raise ScoreError(str(e)) from e
  if conv is not None:  # The run's own conversion.
    return _fit(pixels, image_shape, conv, str(path))
  c, channels = pixels.shape[-1], image_shape[2]
  if (c, channels) == (1, 3):
    pixels = np.repeat(pixels, 3, axis=-1)
  elif (c, channels) == (3, 1):
    if not (pixels == pixels[..., :1]).all():
      raise ScoreError(f'{path}: colour image ({c} channels) but the model '
                       f'takes {channels} channel(s); convert it to '
                       'greyscale first.')
    pixels = pixels[..., :1]
  if pixels.shape != tuple(image_shape):
    raise ScoreError(f'{path}: image is {_shape_str(pixels.shape)} (HxWxC) '
                     f'but the model expects {_shape_str(image_shape)}; '
                     'resize it first.')
  return pixels


def _file_inputs(paths: Sequence[pathlib.Path], image_shape, conv,
                 source: str) -> Inputs:
  """Image files, their headers checked first, pixels read per chunk."""
  if conv is None:  # Sizes must match: check them before any scoring.
    for p in paths:
      try:
        h, w, c = image_files.probe(p)
      except image_files.ImageError as e:
        raise ScoreError(str(e)) from e
      if (h, w) != tuple(image_shape[:2]):
        raise ScoreError(f'{p}: image is {h}x{w}x{c} (HxWxC) '
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
    raise ScoreError(f'{path} is an empty folder: no images to score.')
  for p in entries:
    if not p.is_file() or not image_files.is_image_file(p):
      raise ScoreError(f'{p} is not a PNG/JPEG/BMP file; the input folder '
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
    ScoreError: missing, unreadable, empty or ill-shaped input.
  """
  path = pathlib.Path(path)
  image_shape = tuple(int(d) for d in image_shape)
  if path.is_dir():
    return _folder_inputs(path, image_shape, conv)
  if not path.exists():
    raise ScoreError(f'Input {path} does not exist.')
  suffix = path.suffix.lower()
  try:
    with open(path, 'rb') as f:
      head = f.read(8)
  except OSError as e:
    raise ScoreError(f'Cannot read input {path}: {e}') from e
  if not head:
    raise ScoreError(f'Input {path} is an empty file.')
  if suffix == '.npy' or head.startswith(_NPY_MAGIC):
    return _npy_inputs(path, image_shape, conv, chunk)
  if suffix == '.npz' or head.startswith(_ZIP_MAGIC):
    array = _load_npz(path)
  elif suffix in IMAGE_SUFFIXES:  # A single image file.
    return _file_inputs([path], image_shape, conv, str(path))
  elif len(head) >= 4 and int.from_bytes(head[:4], 'big') == IDX_IMAGES_MAGIC:
    array = _load_idx(path)
  elif len(head) >= 4 and int.from_bytes(head[:4], 'big') == 2049:
    raise ScoreError(f'{path} is an IDX label file (magic 2049); pass the '
                     'images file (magic 2051).')
  elif head.startswith(_GZIP_MAGIC):
    raise ScoreError(f'{path} is gzip-compressed; decompress it first '
                     f'(gunzip -k {path}).')
  else:
    raise ScoreError(f'{path}: unrecognized input format; expected '
                     f'{FORMATS}.')
  return _array_inputs(array, image_shape, conv, str(path), chunk)


def array_inputs(array: np.ndarray, image_shape: Sequence[int], conv=None,
                 source: str = 'array', chunk: int = 500) -> Inputs:
  """An array in memory, validated and read as `open_inputs` reads a
  .npy file's (`source` names it in the messages).

  Raises:
    ScoreError: empty or ill-shaped, bad dtype, NaN/Inf or out-of-range
      pixels.
  """
  return _array_inputs(array, tuple(int(d) for d in image_shape), conv,
                       source, chunk)


def load_images(path: os.PathLike | str, image_shape: Sequence[int],
                conv=None) -> Images:
  """All of `--input` in memory (see `open_inputs`)."""
  inputs = open_inputs(path, image_shape, conv)
  return Images(list(inputs.ids), inputs.read(0, len(inputs)))


# ----------------------------------------------------------------------------
# Checkpoint, export and model.
# ----------------------------------------------------------------------------
def locate(workdir: pathlib.Path, kind: Optional[str],
           step: Optional[int]) -> tuple[str, Optional[int]]:
  """(kind, step) of the checkpoint to use, or a ScoreError.

  Without `kind` and `step`: the best checkpoint, else the latest one (a
  run whose validation held no anomalies keeps no best checkpoint).
  """
  if not workdir.is_dir():
    raise ScoreError(f'Workdir {workdir} does not exist; pass the --workdir '
                     'of a training run.')
  steps = {k: checkpoint_reading.available_steps(workdir, k)
           for k in (checkpoint_files.BEST, checkpoint_files.LATEST)}
  if not any(steps.values()):
    raise ScoreError(f'No checkpoint in {workdir} (expected {workdir}/best or '
                     f'{workdir}/checkpoints with a saved step); train first '
                     'with `python -m ama_jax.main`.')
  if step is None:
    if kind is None and not steps[checkpoint_files.BEST]:
      logging.info('%s has no best checkpoint (no model selection); using '
                   'the latest one.', workdir)
      return checkpoint_files.LATEST, None
    kind = kind or checkpoint_files.BEST
    if not steps[kind]:
      other = next(k for k in steps if k != kind)
      raise ScoreError(f'No {kind} checkpoint in {workdir}; saved {other} '
                       f'steps: {steps[other]} (use --kind={other}).')
    return kind, None
  for k in ([kind] if kind else [checkpoint_files.BEST,
                                  checkpoint_files.LATEST]):
    if step in steps[k]:
      return k, step
  raise ScoreError(f'No checkpoint at step {step} in {workdir}' + (
      f' ({kind})' if kind else '') + f'; saved steps: best {steps["best"]}, '
      f'latest {steps["latest"]}.')


def restore_state(workdir: pathlib.Path, kind: str, meta: dict):
  """(state, autoencoder, critic) of a checkpoint, from meta['config']."""
  config = json_safe.config_from_dict(meta['config'])
  image_shape = tuple(meta['image_shape'])
  try:
    # Shapes and dtypes only: nothing is initialized or compiled.
    abstract = jax.eval_shape(functools.partial(
        train_state.create_train_state, config=config, image_shape=image_shape),
        jax.random.key(0))
    ae_model, critic_model = nets.create_models(config.model, image_shape,
                                                  inference=True)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise ScoreError(f'The config saved in the {kind} checkpoint of {workdir} '
                     'does not build a model with this version of ama_jax '
                     f'({type(e).__name__}: {e}).') from e
  try:
    state, _ = checkpoint_reading.restore(workdir, abstract, kind=kind,
                                          step=meta['step'])
  except (FileNotFoundError, ValueError, errors.CheckpointError) as e:
    raise ScoreError(str(e).splitlines()[0]) from e
  logging.info('Restored %s checkpoint step %d of %s (val AUROC %s).', kind,
               meta['step'], workdir, meta.get('val_auroc'))
  return state, ae_model, critic_model


def load_scorer(workdir: os.PathLike | str, *, kind: Optional[str] = None,
                step: Optional[int] = None, batch_size: int = 500
                ) -> tuple[scoring.Scorer, dict]:
  """Restores a checkpoint: (scorer, meta), from the workdir alone.

  Args:
    workdir: the training run's workdir.
    kind: 'best' or 'latest'; None: best (else latest), or with `step`,
      where it is.
    step: a saved step; None: the best (or latest) one.
    batch_size: images per scoring call.

  Raises:
    ScoreError: no such checkpoint, or one that cannot be used.
  """
  workdir = pathlib.Path(workdir)
  kind, step = locate(workdir, kind, step)
  meta = read_checked_meta(workdir, kind, step)
  return _scorer_from_meta(workdir, kind, meta, batch_size), meta


def _scorer_from_meta(workdir: pathlib.Path, kind: str, meta: dict,
                      batch_size: int) -> scoring.Scorer:
  """Rebuilds the models and abstract state from meta['config'], restores."""
  state, ae_model, critic_model = restore_state(workdir, kind, meta)
  return scoring.scorer_from_state(state, ae_model, critic_model,
                                   batch_size=batch_size)


def read_checked_meta(workdir: pathlib.Path, kind: str,
                      step: Optional[int]) -> dict:
  """The checkpoint's meta, checked for what scoring needs."""
  try:
    meta = checkpoint_reading.read_meta(workdir, kind=kind, step=step)
  except errors.CheckpointDamagedError as e:
    other = (checkpoint_files.LATEST if kind == checkpoint_files.BEST
             else checkpoint_files.BEST)
    raise ScoreError(f'{errors.one_line(e).rstrip(".")}. Score another '
                     'checkpoint '
                     f'(--kind={other}, or --step=N).') from e
  except (FileNotFoundError, ValueError, OSError) as e:
    raise ScoreError(f'Cannot read checkpoint metadata in {workdir}: '
                     f'{str(e).splitlines()[0]}') from e
  where = f'{kind} checkpoint step {meta.get("step", step)} of {workdir}'
  missing = [k for k in ('config', 'image_shape', 'step') if k not in meta]
  if missing:
    raise ScoreError(f'The {where} lacks {missing} in its meta; it was not '
                     'written by ama_jax training.')
  missing = [k for k in ('mu', 'sigma', 'threshold')
             if not isinstance(meta.get(k), (int, float))]
  if missing:
    raise ScoreError(f'The {where} has no calibration ({", ".join(missing)} '
                     'missing; it was saved before the first validation); '
                     'use --kind=best or a later --step.')
  if not (math.isfinite(meta['mu']) and math.isfinite(meta['sigma'])
          and meta['sigma'] > 0):
    raise ScoreError(f'The {where} has an invalid calibration (mu='
                     f'{meta["mu"]}, sigma={meta["sigma"]}); use another '
                     'checkpoint.')
  return meta


@dataclasses.dataclass
class Model:
  """What scoring needs: shape, conversion, calibration and R(x).

  `raw_scores` is built on first use (restoring a checkpoint takes seconds,
  so the inputs are checked first).
  """
  kind: str  # 'best' | 'latest' | 'exported'.
  step: int
  image_shape: tuple[int, int, int]
  conversion: Optional[image_files.Conversion]  # Explicit ones only.
  mu: float
  sigma: float
  threshold: float
  score: str
  build: Callable[[], Callable[[np.ndarray], np.ndarray]]
  # (scorer, k) -> KnnReference for the feature kNN score; None for an
  # exported scorer (it holds no training features).
  knn_reference: Optional[Callable[..., 'KnnReference']] = None
  # An exported scorer's own score: 'calibrated', or 'knn' (then `build`'s
  # function returns (r, kNN distance) and `threshold` is the kNN one).
  detector_score: Optional[str] = None


def chosen_detector(workdir: os.PathLike | str) -> Optional[dict]:
  """results.json['chosen'] of a finished run (`report.detector`), or None
  (no results.json: the run has not finished, or predates it)."""
  path = pathlib.Path(workdir) / 'results.json'
  if not path.is_file():
    return None
  try:
    chosen = json.loads(path.read_text()).get('chosen')
  except (OSError, ValueError) as e:
    raise ScoreError(f'Cannot read {path}: {errors.one_line(e)}') from e
  if chosen is not None and chosen.get('score') not in ('calibrated', 'knn'):
    raise ScoreError(f'{path} chose the score {chosen.get("score")!r}, '
                     'which this version cannot score; pass --score.')
  return chosen


def open_detector(workdir: os.PathLike | str, score: str, *,
                  kind: Optional[str] = None, step: Optional[int] = None,
                  batch_size: int = 500) -> tuple[Model, str]:
  """(model, score) for scoring with `score`: 'chosen' (the detector the
  run chose: its checkpoint, score and threshold, `chosen_detector`),
  'calibrated' or 'knn'.

  Raises:
    ScoreError: as `open_model`, or --kind / --step with 'chosen'.
  """
  from ama_jax.scoring import export  # pylint: disable=g-import-not-at-top
  if score != 'chosen' or export.is_exported(pathlib.Path(workdir)):
    model = open_model(workdir, kind=kind, step=step, batch_size=batch_size)
    if model.kind == 'exported':
      if score == 'chosen':
        score = model.detector_score
      elif score == 'knn' and model.detector_score != 'knn':
        model.knn_reference = None  # Nothing to compare with.
    return model, score
  chosen = chosen_detector(workdir)
  if chosen is None:
    if not pathlib.Path(workdir).is_dir():  # open_model names the problem.
      return open_model(workdir, kind=kind, step=step,
                        batch_size=batch_size), 'calibrated'
    logging.warning('%s has no results.json (the run has not finished): '
                    'scoring with the calibrated score.', workdir)
    return open_model(workdir, kind=kind, step=step,
                      batch_size=batch_size), 'calibrated'
  if kind is not None or step is not None:
    raise ScoreError(
        f'--score=chosen scores with the checkpoint the run chose '
        f'({chosen["checkpoint"]} step {chosen["step"]}); to score another '
        'one, pass --score=calibrated or --score=knn with --kind / --step.')
  model = open_model(workdir, kind=chosen['checkpoint'], step=chosen['step'],
                     batch_size=batch_size)
  if chosen['score'] == 'calibrated':  # The final calibration (all normals).
    cal = chosen['calibration']
    model = dataclasses.replace(model, mu=cal['mu'], sigma=cal['sigma'],
                                threshold=cal['threshold'],
                                score=cal['score'])
  return model, chosen['score']


def _conversion(data_config: dict) -> Optional[image_files.Conversion]:
  try:
    conv = image_files.conversion(data_config)
  except image_files.ImageError:
    return None  # Not scoring's business: shapes must then match.
  return conv if conv.explicit else None


def open_model(workdir: os.PathLike | str, *, kind: Optional[str] = None,
               step: Optional[int] = None, batch_size: int = 500) -> Model:
  """A training workdir's checkpoint or an exported scorer's directory.

  Raises:
    ScoreError: no such checkpoint or export, or one that cannot be used.
  """
  from ama_jax.scoring import export  # pylint: disable=g-import-not-at-top
  workdir = pathlib.Path(workdir)
  if export.is_exported(workdir):
    if kind is not None or step is not None:
      raise ScoreError(f'{workdir} is an exported scorer: it has no '
                       '--kind or --step.')
    try:
      exported, meta = export.load(workdir)
    except export.ExportError as e:
      raise ScoreError(str(e)) from e
    calibration = meta['calibration']
    image_shape = tuple(int(d) for d in meta['image_shape'])

    def build():
      call = jax.jit(exported.call)

      def raw(images: np.ndarray) -> np.ndarray:
        n = len(images)
        if n < batch_size:  # One shape for every call: one compilation.
          images = np.concatenate([images, np.zeros(
              (batch_size - n, *image_shape), np.float32)])
        out = call(images)
        if knn:  # The exported score is the kNN distance: (r, score).
          return np.asarray(out[0])[:n], np.asarray(out[1])[:n]
        return np.asarray(out[0])[:n]
      return raw

    knn = meta.get('detector', {}).get('score') == 'knn'
    threshold = (meta['detector']['threshold'] if knn
                 else calibration['threshold'])
    return Model('exported', meta['source']['step'], image_shape,
                 _conversion(meta.get('preprocessing', {})),
                 calibration['mu'], calibration['sigma'],
                 threshold, calibration['score'], build,
                 detector_score='knn' if knn else 'calibrated')
  kind, step = locate(workdir, kind, step)
  meta = read_checked_meta(workdir, kind, step)
  return Model(kind, meta['step'], tuple(int(d) for d in meta['image_shape']),
               _conversion(meta['config'].get('data', {})), meta['mu'],
               meta['sigma'], meta['threshold'],
               meta.get('score', 'two_sided'),
               lambda: _scorer_from_meta(workdir, kind, meta, batch_size),
               functools.partial(knn_reference, workdir, kind, meta))


# ----------------------------------------------------------------------------
# The feature kNN score's reference: the training normals' features.
# ----------------------------------------------------------------------------
KNN_DIR = 'knn_reference'  # <workdir>/knn_reference/<kind>_<step>.npz


@dataclasses.dataclass(frozen=True)
class KnnReference:
  """What the feature kNN score of new images needs besides the networks.

  Attributes:
    index: the training normals' features f(x, G(E(x))), on the device.
    threshold: on the kNN distance; above it = anomaly. Set, as the
      calibrated score's, on the validation normals at the run's
      `eval.threshold_fpr`.
    path: the cached features' file.
  """
  index: scoring.KnnIndex
  threshold: float
  path: pathlib.Path


def _fingerprint(meta: dict) -> np.ndarray:
  """What ties cached features to one checkpoint's networks: its step and
  calibration (another training saved at the same step has other values)."""
  return np.array([meta['step'], meta['mu'], meta['sigma'], meta['threshold']],
                  np.float64)


def _read_knn_cache(path: pathlib.Path, meta: dict
                    ) -> Optional[dict[str, np.ndarray]]:
  """The cached features, or None: missing, unreadable or of another
  checkpoint (then recomputed)."""
  if not path.is_file():
    return None
  try:
    with np.load(path, allow_pickle=False) as npz:
      cached = {k: npz[k] for k in ('train', 'val_normal', 'fingerprint')}
  except (OSError, ValueError, KeyError, EOFError) as e:
    logging.warning('%s is unreadable (%s); computing the features again.',
                    path, errors.one_line(e))
    return None
  if not np.array_equal(cached['fingerprint'], _fingerprint(meta)):
    logging.warning('%s holds the features of another checkpoint saved at '
                    'this step; computing them again.', path)
    return None
  if not (cached['train'].ndim == cached['val_normal'].ndim == 2
          and cached['train'].shape[1] == cached['val_normal'].shape[1]):
    logging.warning('%s holds features of the wrong shape; computing them '
                    'again.', path)
    return None
  return cached


def _write_knn_cache(path: pathlib.Path, cached: dict[str, np.ndarray]
                     ) -> None:
  """Atomically (`_write_atomically`); a failure only warns."""
  try:
    path.parent.mkdir(exist_ok=True)
    _write_atomically(path, 'wb', lambda f: np.savez(f, **cached))
    logging.info('Cached the training normals\' features in %s (%.0f MB).',
                 path, path.stat().st_size / 2**20)
  except OSError as e:
    logging.warning('Could not cache the features in %s (%s); the next call '
                    'computes them again.', path, e)


def _reference_features(config, scorer) -> dict[str, np.ndarray]:
  """f(x, G(E(x))) of the run's training and validation normals: the
  splits read again from the run's data settings and seed (the same rows as
  in training, `input_pipeline.load_protocol`)."""
  from ama_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  try:
    data = input_pipeline.load_protocol(
        config.data, config.seed,
        input_size=nets.input_size(config.model.arch))
  except (errors.UserError, ValueError, OSError) as e:
    raise ScoreError(
        'The feature kNN score compares new images with the run\'s training '
        'images, read again from its data settings (data.dataset='
        f'{config.data.get("dataset")!r}), and they cannot be read: '
        f'{errors.one_line(e)} Put the data back where the run read it, or '
        'score with --score=calibrated.') from e
  train = data.train.images[data.train.labels == 0]
  val_normal = data.val.images[data.val.labels == 0]
  if not len(train) or not len(val_normal):
    raise ScoreError('The run has no training or no validation normal '
                     'images: no feature kNN reference; score with '
                     '--score=calibrated.')
  logging.info('Computing the features of %d training and %d validation '
               'normal images (once per checkpoint; then cached).',
               len(train), len(val_normal))
  features = scorer.with_features(train)[1]
  # The run's memory bank: the same rows as at its final evaluation.
  rows = scoring.knn_bank(features, config.eval.get('knn_bank_size'),
                          config.seed)
  return {'train': features[rows],
          'val_normal': scorer.with_features(val_normal)[1]}


def write_knn_reference(workdir: os.PathLike | str, kind: str, meta: dict,
                        bank: np.ndarray, val_normal: np.ndarray) -> None:
  """Stores a checkpoint's memory bank and its validation normals'
  features (what `knn_reference` reads), as the final evaluation used
  them."""
  path = pathlib.Path(workdir) / KNN_DIR / f'{kind}_{int(meta["step"])}.npz'
  _write_knn_cache(path, {'train': np.asarray(bank, np.float32),
                          'val_normal': np.asarray(val_normal, np.float32),
                          'fingerprint': _fingerprint(meta)})


def knn_reference(workdir: os.PathLike | str, kind: str, meta: dict,
                  scorer: scoring.Scorer, k: Optional[int] = None
                  ) -> KnnReference:
  """The feature kNN score's reference set for a checkpoint.

  The run's memory bank (the features of its training normals, or of the
  `eval.knn_bank_size` of them `scoring.knn_bank` keeps, as in the run's
  final evaluation) and its validation normals' features, in
  `<workdir>/knn_reference/<kind>_<step>.npz`: written by the final
  evaluation, else computed with `scorer` (this checkpoint's networks) on
  first use and cached (4 bytes x features x bank rows: 40 MB for a bank of
  10,000 with the MNIST critic's 1,024 features).

  Args:
    workdir, kind, meta: the checkpoint (see `open_model`).
    scorer: its restored scorer.
    k: which neighbour; None: the run's `eval.knn_k`, or 1 when it had none.

  Raises:
    ScoreError: the training data cannot be read again, or a bad `k`.
  """
  config = json_safe.config_from_dict(meta['config'])
  k = k if k is not None else (config.eval.get('knn_k') or 1)
  path = pathlib.Path(workdir) / KNN_DIR / f'{kind}_{int(meta["step"])}.npz'
  cached = _read_knn_cache(path, meta)
  if cached is None:
    cached = {**_reference_features(config, scorer),
              'fingerprint': _fingerprint(meta)}
    _write_knn_cache(path, cached)
  if not 1 <= k <= len(cached['train']):
    raise ScoreError(f'--knn_k={k}: must be between 1 and the '
                     f'{len(cached["train"])} training normals of the run\'s '
                     'memory bank.')
  index = scoring.KnnIndex(cached['train'], k)
  threshold = metrics.threshold_at_fpr(index(cached['val_normal']),
                                       float(config.eval.threshold_fpr))
  return KnnReference(index, float(threshold), path)


# ----------------------------------------------------------------------------
# Output.
# ----------------------------------------------------------------------------
def check_output(path: os.PathLike | str) -> pathlib.Path:
  """Fails early (before any scoring) if `path` cannot be written."""
  path = pathlib.Path(path)
  folder = path.parent
  if path.is_dir():
    raise ScoreError(f'Output {path} is a folder; give a file name such as '
                     f'{path / "scores.csv"}.')
  if not folder.is_dir():
    raise ScoreError(f'Output folder {folder} does not exist; create it '
                     'first.')
  if not os.access(folder, os.W_OK | os.X_OK) or (
      path.exists() and not os.access(path, os.W_OK)):
    raise ScoreError(f'Output {path} is not writable (permission denied).')
  return path


def _write_atomically(path: pathlib.Path, mode: str,
                      write: Callable[..., None], **open_kw) -> None:
  """`write(file)` into a temporary file beside `path`, then a rename: a
  reader never sees a partial file. The file gets the permissions of an
  ordinary new file (umask), not mkstemp's 0600. Raises OSError."""
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.',
                             suffix='.tmp')
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    with os.fdopen(fd, mode, **open_kw) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_csv(path: os.PathLike | str, ids: Sequence[str], r: np.ndarray,
              scores: np.ndarray, is_anomaly: np.ndarray,
              score_column: str = 'score') -> None:
  """Writes the CSV atomically: a temporary file beside it, then a rename.

  Columns: id, r, `score_column` ('score', or 'knn' for the feature kNN
  distance), is_anomaly.
  """
  path = pathlib.Path(path)

  def write(f):
    writer = csv.writer(f)
    writer.writerow(['id', 'r', score_column, 'is_anomaly'])
    for row in zip(ids, r.tolist(), scores.tolist(), is_anomaly.tolist()):
      writer.writerow([row[0], repr(row[1]), repr(row[2]), int(row[3])])

  try:
    _write_atomically(path, 'w', write, newline='')
  except OSError as e:
    raise ScoreError(f'Cannot write {path}: {e}') from e
