r"""Folders of image files as datasets: the layouts and their splits.

A dataset folder `ROOT` (`data.dataset=folder:ROOT`) is one of:

* class subfolders, `ROOT/<class>/...` (one-class protocol; classes are
  named by their folder, sorted; images may sit in nested folders below a
  class folder);
* `ROOT/normal/` with an optional `ROOT/anomaly/` (known anomalies);
* a flat folder, `ROOT/*.png` (every image normal; pair it with a second
  dataset as `data.ood_dataset`, or use it as that second dataset).

Any of these may instead sit in `ROOT/train/` and `ROOT/test/`: the user's
own test set is then used as is (`test/` is optional; without it, or
without `train/`, the input pipeline holds out a deterministic share of the
images, see `data.test_fraction`).

Files: PNG, JPEG, BMP (`image_files.IMAGE_SUFFIXES`); hidden entries are
skipped, other files are skipped with a warning. Within a split, images are
ordered by file name, then by folder, so files named by a global index keep
that order across class folders (MNIST written as PNGs by `write_pngs`
keeps its IDX order, and the protocol draws the same splits).
"""
import dataclasses
import hashlib
import os
import pathlib
from typing import Optional, Sequence, Union

from absl import logging
import numpy as np
from PIL import Image

from ama_jax.data import image_files

PathLike = Union[str, os.PathLike]

NORMAL, ANOMALY = 'normal', 'anomaly'
LAYOUTS = ('classes', 'normal_anomaly', 'flat')
SPLIT_FOLDERS = ('train', 'test')
# The one split of a folder without train/ ('all' is reserved by TFDS).
ALL = 'images'


class FolderError(ValueError):
  """A folder that is not a usable dataset; the message says why."""


@dataclasses.dataclass(frozen=True)
class Folder:
  """A scanned dataset folder.

  Attributes:
    root: the folder.
    layout: one of LAYOUTS.
    class_names: class names in index order: sorted folder names
      ('classes'), ('normal', 'anomaly') ('normal_anomaly') or () ('flat').
    files: split ('train' and maybe 'test', or ALL) -> image files, in
      order.
    labels: split -> [N] int64 class index of each file (0 when flat).
    skipped: files that are not images (ignored).
  """
  root: pathlib.Path
  layout: str
  class_names: tuple[str, ...]
  files: dict[str, tuple[pathlib.Path, ...]]
  labels: dict[str, np.ndarray]
  skipped: tuple[pathlib.Path, ...]

  @property
  def has_test(self) -> bool:
    return 'test' in self.files

  def fingerprint(self, *extra) -> str:
    """A hash of every file's path, size, mtime and label, and `extra`."""
    digest = hashlib.sha256(repr(extra).encode())
    root = len(str(self.root)) + 1
    for split in sorted(self.files):
      digest.update(split.encode())
      for path, label in zip(self.files[split], self.labels[split].tolist()):
        path = str(path)  # Strings: pathlib costs seconds on 70k files.
        stat = os.stat(path)
        digest.update(f'{path[root:]}\0{stat.st_size}\0'
                      f'{stat.st_mtime_ns}\0{label}\n'.encode())
    return digest.hexdigest()[:16]


def _subfolders(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir()
                if p.is_dir() and not p.name.startswith('.'))


def _order(files: Sequence[pathlib.Path], split_dir: pathlib.Path
           ) -> list[int]:
  """Positions of `files` sorted by (file name, relative path)."""
  start = len(str(split_dir)) + 1
  keys = [(os.path.basename(f), f[start:]) for f in map(str, files)]
  return sorted(range(len(files)), key=keys.__getitem__)


def _scan_split(split_dir: pathlib.Path
                ) -> tuple[str, dict[str, list[pathlib.Path]],
                           list[pathlib.Path]]:
  """(layout, {class or '': files}, skipped) of one split folder."""
  top_files = [p for p in split_dir.iterdir()
               if not p.name.startswith('.') and not p.is_dir()]
  top_images = [p for p in top_files if image_files.is_image_file(p)]
  skipped = [p for p in top_files if not image_files.is_image_file(p)]
  subfolders = _subfolders(split_dir)
  if top_images and subfolders:
    raise FolderError(
        f'{split_dir} holds both images ({top_images[0].name}, ...) and '
        f'subfolders ({subfolders[0].name}/, ...); put every image in a '
        'class subfolder (or in normal/ and anomaly/), or use a flat folder '
        'without subfolders.')
  if top_images:
    return 'flat', {'': sorted(top_images)}, skipped
  per_class = {}
  for folder in subfolders:
    images, others = image_files.list_images(folder)
    skipped += others
    per_class[folder.name] = images
  names = set(per_class)
  layout = ('normal_anomaly' if NORMAL in names and names <= {NORMAL, ANOMALY}
            else 'classes')
  if layout == 'normal_anomaly' and not per_class.get(ANOMALY, True):
    del per_class[ANOMALY]  # An empty anomaly/ is no anomaly/.
  empty = [n for n, images in per_class.items() if not images]
  if empty:
    raise FolderError(
        f'{split_dir / empty[0]} holds no images ({", ".join(sorted(empty))} '
        f'empty); supported files: {", ".join(image_files.IMAGE_SUFFIXES)}. '
        'Remove the empty folder(s) or add images.')
  return layout, per_class, skipped


def scan(root: PathLike) -> Folder:
  """Finds the layout, classes and files of a dataset folder.

  Raises:
    FolderError: missing or empty folder, mixed or inconsistent layouts.
  """
  root = pathlib.Path(root).expanduser()
  if not root.is_dir():
    raise FolderError(f'{root} is not a folder' + (
        ' (it does not exist)' if not root.exists() else '') + '.')
  subfolders = {p.name: p for p in _subfolders(root)}
  if 'train' in subfolders:
    extra = sorted(set(subfolders) - set(SPLIT_FOLDERS))
    if extra:
      raise FolderError(
          f'{root} holds train/ and also {extra[0]}/; with train/ (and '
          'test/), every image must sit under them.')
    split_dirs = {s: subfolders[s] for s in SPLIT_FOLDERS if s in subfolders}
  elif 'test' in subfolders and len(subfolders) == 1:
    raise FolderError(f'{root} holds test/ but no train/; add train/ (the '
                      'training images) beside it.')
  else:
    split_dirs = {ALL: root}

  layouts, per_split, skipped = {}, {}, []
  for split, split_dir in split_dirs.items():
    layout, per_class, split_skipped = _scan_split(split_dir)
    if not per_class:
      found = f'; it holds {len(split_skipped)} other file(s), e.g. ' \
              f'{split_skipped[0].name}' if split_skipped else ''
      raise FolderError(
          f'{split_dir} holds no images (supported: '
          f'{", ".join(image_files.IMAGE_SUFFIXES)}){found}.')
    layouts[split], per_split[split] = layout, per_class
    skipped += split_skipped
  if len(set(layouts.values())) > 1:
    raise FolderError(
        f'{root}: train/ and test/ have different layouts ('
        f'{layouts}); use the same one (class subfolders, normal/ + '
        'anomaly/, or flat) in both.')
  layout = next(iter(layouts.values()))
  if layout == 'flat':
    class_names = ()
  elif layout == 'normal_anomaly':
    class_names = (NORMAL, ANOMALY)
  else:
    class_names = tuple(sorted(set().union(*per_split.values())))
  index = {name: i for i, name in enumerate(class_names)}

  files, labels = {}, {}
  for split, per_class in per_split.items():
    split_files = [f for images in per_class.values() for f in images]
    split_labels = [index.get(name, 0) for name, images in per_class.items()
                    for _ in images]
    order = _order(split_files, split_dirs[split])
    files[split] = tuple(split_files[i] for i in order)
    labels[split] = np.asarray([split_labels[i] for i in order], np.int64)
  if skipped:
    logging.warning('%s: skipped %d file(s) that are not %s images, e.g. %s.',
                    root, len(skipped), '/'.join(
                        s[1:].upper() for s in image_files.IMAGE_SUFFIXES),
                    skipped[0])
  return Folder(root=root, layout=layout, class_names=class_names,
                files=files, labels=labels, skipped=tuple(skipped))


def native_shapes(paths: Sequence[pathlib.Path]
                  ) -> dict[tuple[int, int, int], int]:
  """(H, W, C) -> number of images with it, from the file headers.

  Raises:
    image_files.ImageError: a file that is not a readable image.
  """
  counts: dict[tuple[int, int, int], int] = {}
  for path in paths:
    shape = image_files.probe(path)
    counts[shape] = counts.get(shape, 0) + 1
  return counts


def write_pngs(directory: PathLike, images: np.ndarray,
               labels: Optional[np.ndarray] = None,
               class_names: Optional[Sequence[str]] = None,
               names: Optional[Sequence[str]] = None) -> list[pathlib.Path]:
  """Writes uint8 images as PNGs, in class subfolders when labelled.

  Args:
    directory: the folder to write into (created).
    images: uint8 [N, H, W] or [N, H, W, C], C in (1, 3).
    labels: [N] class indices, or None for a flat folder.
    class_names: folder name of each class index (default: the index).
    names: file stems (default: the zero-padded row index, which keeps the
      row order when the folder is read back).

  Returns:
    The written paths, in row order.
  """
  directory = pathlib.Path(directory)
  images = np.asarray(images, np.uint8)
  if images.ndim == 4 and images.shape[-1] == 1:
    images = images[..., 0]
  width = max(5, len(str(len(images) - 1)))
  paths = []
  for i, image in enumerate(images):
    folder = directory
    if labels is not None:
      label = int(labels[i])
      folder = directory / (class_names[label] if class_names is not None
                            else str(label))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f'{names[i] if names is not None else f"{i:0{width}d}"}' \
                    '.png'
    Image.fromarray(image).save(path)
    paths.append(path)
  return paths
