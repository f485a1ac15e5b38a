r"""Scores new images with a trained AMA checkpoint and writes a CSV.

  python -m ama_jax.score --workdir=/tmp/ama --input=images.npy \
      --output=scores.csv [--kind=best|latest] [--step=N] [--batch_size=500]

Needs only the workdir: the model, its image shape and the calibration
(mu, sigma, threshold) come from the checkpoint's `meta` item; no config file
and no training data are read. Without `--step`, the best-validation
checkpoint (`<workdir>/best`) is used; `--kind=latest` takes the latest
training checkpoint instead; `--step=N` takes step N from `--kind`, or, with
no `--kind`, from `best` and else `latest`.

Inputs (`--input`):
- `.npy`, or `.npz` (key `images`, else `x`, else its first array): [N, H, W]
  or [N, H, W, C]. Integer arrays must hold pixel values 0..255 and are
  converted as in training (x / 127.5 - 1); float arrays must already be in
  [-1, 1] (convert [0, 1] images with 2 x - 1 first: a float array in [0, 1]
  is read as [-1, 1] data, and a warning says so).
- A folder of PNG/JPEG files (8-bit), scored in file-name order; every
  non-hidden entry must be such an image. Grey images are repeated to RGB
  for a 3-channel model; RGB images with equal channels become grey for a
  1-channel model; a fully opaque alpha channel is dropped. Any other channel
  mismatch is an error (convert the images first). No resizing.
- An uncompressed IDX image file (magic 2051, e.g. `t10k-images-idx3-ubyte`).

Output: CSV with columns `id` (file name, or row index for arrays), `r` (raw
R(x)), `score` (calibrated, (R - mu)^2 / (2 sigma^2)) and `is_anomaly` (1 if
score > threshold else 0), in input order, written atomically (a temporary
file in the same folder, then renamed).

Problems with the inputs (missing workdir or checkpoint, a damaged
checkpoint, unreadable or non-image files, wrong image size or channels,
NaN/Inf pixels, empty input, unwritable output) end the program with a
one-line `error: ...` message on stderr and exit status 1 (`--verbose`: with
its traceback). A damaged checkpoint is never read: `--kind=latest` without
`--step` then takes the newest readable step (a warning names the damaged
one); the best step, or an explicit `--step`, is an error. Logs are quiet
(warnings only) unless `--verbosity=0` is passed.
"""
import csv
import dataclasses
import functools
import math
import os
import pathlib
import tempfile
from typing import Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

from ama_jax import checkpointing
from ama_jax import cli
from ama_jax import errors
from ama_jax import models
from ama_jax import scoring
from ama_jax import train

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg')
IDX_IMAGES_MAGIC = 2051
_NPY_MAGIC, _ZIP_MAGIC, _GZIP_MAGIC = b'\x93NUMPY', b'PK\x03\x04', b'\x1f\x8b'
FORMATS = ('.npy, .npz, a folder of PNG/JPEG images or an IDX image file '
           f'(magic {IDX_IMAGES_MAGIC})')


class ScoreError(errors.UserError):
  """A problem with the command's inputs; its message says what to fix."""


@dataclasses.dataclass(frozen=True)
class Images:
  """Images to score, in the model's input format."""
  ids: list[str]  # One per image: file name or row index.
  images: np.ndarray  # [N, H, W, C] float32 in [-1, 1].


def _shape_str(shape: Sequence[int]) -> str:
  return 'x'.join(str(int(d)) for d in shape)


# ----------------------------------------------------------------------------
# Inputs.
# ----------------------------------------------------------------------------
def _to_model_range(array: np.ndarray, image_shape: tuple[int, int, int],
                    source: str) -> np.ndarray:
  """[N, H, W(, C)] pixels -> float32 [N, H, W, C] in [-1, 1], validated."""
  height, width, channels = image_shape
  expected = _shape_str(image_shape)
  if array.ndim == 3 and channels == 1:
    array = array[..., None]
  if array.ndim != 4:
    raise ScoreError(f'{source}: expected images of shape [N, {height}, '
                     f'{width}, {channels}]' + (
                         f' or [N, {height}, {width}]' if channels == 1 else
                         '') + f', got shape {array.shape}.')
  if len(array) == 0:
    raise ScoreError(f'{source} holds no images.')
  if array.shape[1:] != tuple(image_shape):
    raise ScoreError(f'{source}: images are {_shape_str(array.shape[1:])} '
                     f'(HxWxC) but the model expects {expected}; resize or '
                     'convert them first.')
  if array.dtype == np.bool_ or not (
      np.issubdtype(array.dtype, np.integer)
      or np.issubdtype(array.dtype, np.floating)):
    raise ScoreError(f'{source}: unsupported dtype {array.dtype}; give uint8 '
                     'pixels (0..255) or floats in [-1, 1].')
  if np.issubdtype(array.dtype, np.floating):
    bad = ~np.isfinite(array)
    if bad.any():
      first = int(np.flatnonzero(bad.reshape(len(array), -1).any(1))[0])
      raise ScoreError(f'{source}: {int(bad.sum())} NaN/Inf pixel values '
                       f'(first in image {first}); fix or drop those images.')
    lo, hi = float(array.min()), float(array.max())
    if lo < -1.0 or hi > 1.0:
      raise ScoreError(f'{source}: float pixels must be in [-1, 1], got '
                       f'[{lo:g}, {hi:g}]; give uint8 0..255 or rescale '
                       '(x / 127.5 - 1 for 0..255, 2 x - 1 for [0, 1]).')
    if lo >= 0.0:
      logging.warning('%s: every pixel is >= 0; float input is read as '
                      '[-1, 1]. If these are [0, 1] images, pass 2 x - 1.',
                      source)
    return array.astype(np.float32)
  lo, hi = int(array.min()), int(array.max())
  if lo < 0 or hi > 255:
    raise ScoreError(f'{source}: integer pixels must be in 0..255, got '
                     f'{lo}..{hi}.')
  # Exactly as input_pipeline converts training images.
  return array.astype(np.float32) / 127.5 - 1.0


def _load_npy(path: pathlib.Path) -> np.ndarray:
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise ScoreError(f'Cannot read {path} as a .npy array: {e}') from e


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
  from ama_jax.datasets import idx_images  # pylint: disable=g-import-not-at-top
  try:
    images = idx_images.read_idx(path, ndim=3)
  except (OSError, ValueError) as e:
    raise ScoreError(f'{path}: not a valid IDX image file: '
                     f'{str(e).splitlines()[0]}') from e
  if images.dtype != np.uint8:
    raise ScoreError(f'{path}: IDX images must be uint8 pixels, got '
                     f'{images.dtype}.')
  return images


def _read_image_file(path: pathlib.Path, channels: int) -> np.ndarray:
  """One PNG/JPEG -> uint8 [H, W, channels], converted only losslessly."""
  try:
    with Image.open(path) as image:
      image.load()
      mode = image.mode
      if mode == 'P':  # Palette: expand to its colours.
        image = image.convert('RGBA' if 'transparency' in image.info
                              else 'RGB')
      elif mode == '1':
        image = image.convert('L')
      mode = image.mode
      if mode not in ('L', 'LA', 'RGB', 'RGBA'):
        raise ScoreError(f'{path}: unsupported image mode {mode!r}; give '
                         '8-bit grey or RGB images.')
      pixels = np.asarray(image, np.uint8)
  except (OSError, UnidentifiedImageError, SyntaxError) as e:
    raise ScoreError(f'Cannot read image {path}: {e}') from e
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  if mode in ('LA', 'RGBA'):  # Drop alpha only if it hides nothing.
    if (pixels[..., -1] != 255).any():
      raise ScoreError(f'{path}: the image has transparent pixels; flatten '
                       'it onto a background first.')
    pixels = pixels[..., :-1]
  c = pixels.shape[-1]
  if c == channels:
    return pixels
  if (c, channels) == (1, 3):
    return np.repeat(pixels, 3, axis=-1)
  if (c, channels) == (3, 1) and (pixels == pixels[..., :1]).all():
    return pixels[..., :1]
  raise ScoreError(f'{path}: colour image ({c} channels) but the model '
                   f'takes {channels} channel(s); convert it to greyscale '
                   'first.')


def _load_folder(path: pathlib.Path, image_shape: tuple[int, int, int]
                 ) -> tuple[list[str], np.ndarray]:
  entries = sorted(p for p in path.iterdir() if not p.name.startswith('.'))
  if not entries:
    raise ScoreError(f'{path} is an empty folder: no images to score.')
  for p in entries:
    if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
      raise ScoreError(f'{p} is not a PNG/JPEG file; the input folder must '
                       'hold only images (move it elsewhere).')
  pixels = []
  for p in entries:
    image = _read_image_file(p, image_shape[2])
    if image.shape != tuple(image_shape):
      raise ScoreError(f'{p}: image is {_shape_str(image.shape)} (HxWxC) but '
                       f'the model expects {_shape_str(image_shape)}; resize '
                       'it first.')
    pixels.append(image)
  return [p.name for p in entries], np.stack(pixels)


def load_images(path: os.PathLike | str,
                image_shape: Sequence[int]) -> Images:
  """Reads and validates `--input` for a model of `image_shape` (H, W, C).

  Raises:
    ScoreError: missing, unreadable, empty or ill-shaped input.
  """
  path = pathlib.Path(path)
  image_shape = tuple(int(d) for d in image_shape)
  if path.is_dir():
    ids, pixels = _load_folder(path, image_shape)
    return Images(ids, _to_model_range(pixels, image_shape, str(path)))
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
    array = _load_npy(path)
  elif suffix == '.npz' or head.startswith(_ZIP_MAGIC):
    array = _load_npz(path)
  elif suffix in IMAGE_SUFFIXES:  # A single image file.
    pixels = _read_image_file(path, image_shape[2])
    if pixels.shape != image_shape:
      raise ScoreError(f'{path}: image is {_shape_str(pixels.shape)} (HxWxC) '
                       f'but the model expects {_shape_str(image_shape)}.')
    return Images([path.name],
                  _to_model_range(pixels[None], image_shape, str(path)))
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
  images = _to_model_range(array, image_shape, str(path))
  return Images([str(i) for i in range(len(images))], images)


# ----------------------------------------------------------------------------
# Checkpoint and model.
# ----------------------------------------------------------------------------
def _locate(workdir: pathlib.Path, kind: Optional[str],
            step: Optional[int]) -> tuple[str, Optional[int]]:
  """(kind, step) of the checkpoint to use, or a ScoreError."""
  if not workdir.is_dir():
    raise ScoreError(f'Workdir {workdir} does not exist; pass the --workdir '
                     'of a training run.')
  steps = {k: checkpointing.available_steps(workdir, k)
           for k in (checkpointing.BEST, checkpointing.LATEST)}
  if not any(steps.values()):
    raise ScoreError(f'No checkpoint in {workdir} (expected {workdir}/best or '
                     f'{workdir}/checkpoints with a saved step); train first '
                     'with `python -m ama_jax.main`.')
  if step is None:
    kind = kind or checkpointing.BEST
    if not steps[kind]:
      other = next(k for k in steps if k != kind)
      raise ScoreError(f'No {kind} checkpoint in {workdir}; saved {other} '
                       f'steps: {steps[other]} (use --kind={other}).')
    return kind, None
  for k in ([kind] if kind else [checkpointing.BEST, checkpointing.LATEST]):
    if step in steps[k]:
      return k, step
  raise ScoreError(f'No checkpoint at step {step} in {workdir}' + (
      f' ({kind})' if kind else '') + f'; saved steps: best {steps["best"]}, '
      f'latest {steps["latest"]}.')


def load_scorer(workdir: os.PathLike | str, *, kind: Optional[str] = None,
                step: Optional[int] = None, batch_size: int = 500
                ) -> tuple[scoring.Scorer, dict]:
  """Restores a checkpoint: (scorer, meta), from the workdir alone.

  Args:
    workdir: the training run's workdir.
    kind: 'best' or 'latest'; None: best, or with `step`, where it is.
    step: a saved step; None: the best (or latest) one.
    batch_size: images per scoring call.

  Raises:
    ScoreError: no such checkpoint, or one that cannot be used.
  """
  workdir = pathlib.Path(workdir)
  kind, step = _locate(workdir, kind, step)
  meta = read_checked_meta(workdir, kind, step)
  return _scorer_from_meta(workdir, kind, meta, batch_size), meta


def _scorer_from_meta(workdir: pathlib.Path, kind: str, meta: dict,
                      batch_size: int) -> scoring.Scorer:
  """Rebuilds the models and abstract state from meta['config'], restores."""
  config = checkpointing.config_from_dict(meta['config'])
  image_shape = tuple(meta['image_shape'])
  try:
    # Shapes and dtypes only: nothing is initialized or compiled.
    abstract = jax.eval_shape(functools.partial(
        train.create_train_state, config=config, image_shape=image_shape),
        jax.random.key(0))
    ae_model, critic_model = models.create_models(config.model, image_shape)
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    raise ScoreError(f'The config saved in the {kind} checkpoint of {workdir} '
                     'does not build a model with this version of ama_jax '
                     f'({type(e).__name__}: {e}).') from e
  try:
    state, _ = checkpointing.restore(workdir, abstract, kind=kind,
                                     step=meta['step'])
  except (FileNotFoundError, ValueError, errors.CheckpointError) as e:
    raise ScoreError(str(e).splitlines()[0]) from e
  logging.info('Restored %s checkpoint step %d of %s (val AUROC %s).', kind,
               meta['step'], workdir, meta.get('val_auroc'))
  return scoring.scorer_from_state(state, ae_model, critic_model,
                                   batch_size=batch_size)


def read_checked_meta(workdir: pathlib.Path, kind: str,
                      step: Optional[int]) -> dict:
  """The checkpoint's meta, checked for what scoring needs."""
  try:
    meta = checkpointing.read_meta(workdir, kind=kind, step=step)
  except errors.CheckpointDamagedError as e:
    other = (checkpointing.LATEST if kind == checkpointing.BEST
             else checkpointing.BEST)
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


def write_csv(path: os.PathLike | str, ids: Sequence[str], r: np.ndarray,
              scores: np.ndarray, is_anomaly: np.ndarray) -> None:
  """Writes the CSV atomically: a temporary file beside it, then a rename."""
  path = pathlib.Path(path)
  try:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.',
                               suffix='.tmp')
  except OSError as e:
    raise ScoreError(f'Cannot write {path}: {e}') from e
  try:
    with os.fdopen(fd, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['id', 'r', 'score', 'is_anomaly'])
      for row in zip(ids, r.tolist(), scores.tolist(), is_anomaly.tolist()):
        writer.writerow([row[0], repr(row[1]), repr(row[2]), int(row[3])])
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    raise ScoreError(f'Cannot write {path}: {e}') from e
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


# ----------------------------------------------------------------------------
# The program.
# ----------------------------------------------------------------------------
def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command's flags on `flag_values`.

  Called only when the command runs, not at import: `ama_jax.main` defines a
  `--workdir` too, and one test process may import both modules.
  """
  flags.DEFINE_string('workdir', None, 'Workdir of a training run.',
                      flag_values=flag_values)
  flags.DEFINE_string('input', None, 'A .npy/.npz array, a folder of PNG/JPEG '
                      'images or an IDX image file.', flag_values=flag_values)
  flags.DEFINE_string('output', None, 'CSV file to write.',
                      flag_values=flag_values)
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the best or '
                       'latest one).', flag_values=flag_values)
  flags.DEFINE_enum('kind', None, ['best', 'latest'], 'Checkpoint kind '
                    '(default: best; with --step, best else latest).',
                    flag_values=flag_values)
  flags.DEFINE_integer('batch_size', 500, 'Images per scoring call.',
                       lower_bound=1, flag_values=flag_values)


def run(workdir: os.PathLike | str, input_path: os.PathLike | str,
        output: os.PathLike | str, *, kind: Optional[str] = None,
        step: Optional[int] = None, batch_size: int = 500) -> dict:
  """Scores `input_path` with a checkpoint of `workdir`, writes `output`.

  Returns:
    A summary: `kind`, `step`, `num_images`, `num_anomalies`, `threshold`.

  Raises:
    ScoreError: any problem with the inputs (the message says what to fix).
  """
  for flag, value in (('workdir', workdir), ('input', input_path),
                      ('output', output)):
    if not value:
      raise ScoreError(f'--{flag} is required.')
  output = check_output(output)
  workdir = pathlib.Path(workdir)
  # Cheap checks first: metadata, then the images, then the model.
  kind, step = _locate(workdir, kind, step)
  meta = read_checked_meta(workdir, kind, step)
  images = load_images(input_path, meta['image_shape'])
  scorer = _scorer_from_meta(workdir, kind, meta, batch_size)
  r = scorer(images.images)
  scores = scoring.calibrated_scores(r, meta['mu'], meta['sigma'],
                                    meta.get('score', 'two_sided'))
  is_anomaly = scores > meta['threshold']
  write_csv(output, images.ids, r, scores, is_anomaly)
  summary = {'kind': kind, 'step': meta['step'], 'num_images': len(r),
             'num_anomalies': int(is_anomaly.sum()),
             'threshold': meta['threshold']}
  logging.info('Wrote %d scores to %s: %d above the threshold %.4g (%s step '
               '%d).', len(r), output, summary['num_anomalies'],
               meta['threshold'], kind, meta['step'])
  return summary


def main(argv: Sequence[str],
         flag_values: flags.FlagValues = flags.FLAGS) -> int:
  """Runs the command on parsed `flag_values`; returns the exit status."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  fv = flag_values
  from ama_jax import runtime  # pylint: disable=g-import-not-at-top
  runtime.setup()  # Before JAX computes: malloc, TF off the GPU.
  try:
    run(fv.workdir, fv.input, fv.output, kind=fv.kind, step=fv.step,
        batch_size=fv.batch_size)
  except errors.UserError as e:  # ScoreError, CheckpointError, ...
    return cli.report(e, flag_values=fv)  # One line, whatever the cause.
  return 0


def _cli_main(argv: Sequence[str]) -> int:
  # Orbax logs dozens of INFO lines per restore: quiet unless asked
  # (--verbosity=0 shows them and this program's own progress).
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  return main(argv)


if __name__ == '__main__':
  define_flags()
  flags.mark_flags_as_required(['workdir', 'input', 'output'])
  cli.run_main(_cli_main)
