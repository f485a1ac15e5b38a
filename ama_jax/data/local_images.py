r"""A TFDS builder over local images: folders and downloaded archives.

`ama_jax.data.image_folder` folders and the CIFAR-10 / SVHN archives of
`ama_jax.data.archives` are decoded (and, for folders, brought to the
model's input shape) once, written as `array_record` under
`<data_dir>/local_images/<kind>-<fingerprint>/`, and read back with
`builder.as_data_source(split)`, like `idx_images`:

  config = local_images.LocalConfig(
      name=f'folder-{fingerprint}', image_shape=(28, 28, 1),
      class_names=('0', '1'), splits=('train', 'test'), examples=generate)
  builder = local_images.prepare(config, data_dir)
  source = builder.as_data_source('train')

The config's name carries a fingerprint of everything the records depend on
(the files' paths, sizes, modification times and labels, the target shape
and resize method), so a changed folder or archive is prepared again under a
new name and a prepared copy is never stale. Records keep the order of
`examples` (`disable_shuffling=True`). Preparing needs no TensorFlow.
"""
import dataclasses
import os
import pathlib
import shutil
from typing import Callable, Iterator, Optional, Union

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from ama_jax.data import split_arrays

PathLike = Union[str, os.PathLike]
# split -> iterator of (uint8 image [H, W, C], class index).
Examples = Callable[[str], Iterator[tuple[np.ndarray, int]]]


@dataclasses.dataclass(eq=False)
class LocalConfig(tfds.core.BuilderConfig):
  """One prepared copy: its records' shape, classes, splits and source."""
  image_shape: tuple[int, int, int] = (1, 1, 1)
  class_names: tuple[str, ...] = ('image',)
  splits: tuple[str, ...] = ('train',)
  examples: Optional[Examples] = dataclasses.field(default=None, repr=False)


class LocalImages(tfds.core.GeneratorBasedBuilder):
  """Images decoded from local files, in the order they were listed."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}

  # No checksums file (see idx_images.IdxImages.code_path).
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=config.description,
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=tuple(config.image_shape),
                                          dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=config.class_names),
        }),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Everything is local.
    return {split: self._generate_examples(split)
            for split in self.builder_config.splits}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    for i, (image, label) in enumerate(self.builder_config.examples(split)):
      yield i, {'image': image, 'label': int(label)}


def prepare(config: LocalConfig,
            data_dir: PathLike) -> tfds.core.DatasetBuilder:
  """Prepares `config` under `data_dir` (a no-op when done before).

  Errors raised by `config.examples` propagate unchanged, and the
  unfinished copy is removed.
  """
  data_dir = pathlib.Path(data_dir)
  builder = LocalImages(config=config, data_dir=data_dir,
                        file_format='array_record')
  if builder.is_prepared():
    return builder
  logging.info('Preparing local_images/%s into %s.', config.name, data_dir)
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except OSError:
    # Two processes preparing the same data_dir: TFDS writes to a temporary
    # folder and renames it, and the second rename fails. Use the winner's.
    builder = LocalImages(config=config, data_dir=data_dir,
                          file_format='array_record')
    if not builder.is_prepared():
      raise
  except BaseException:
    # A bad file mid-way: leave no half-written copy behind.
    for leftover in (data_dir / 'local_images' / config.name).glob(
        'incomplete.*'):
      shutil.rmtree(leftover, ignore_errors=True)
    raise
  return builder


def read_split(builder: tfds.core.DatasetBuilder, split: str
               ) -> tuple[np.ndarray, np.ndarray]:
  """A whole prepared split: (uint8 images [N, H, W, C], int64 labels [N]).

  Decoded from the records once, then read from numpy (`split_arrays`).
  """

  def decode():
    source = builder.as_data_source(split)
    keys = list(range(len(source)))
    if not keys:
      shape = tuple(builder.builder_config.image_shape)
      return np.zeros((0, *shape), np.uint8), np.zeros((0,), np.int64)
    examples = source.__getitems__(keys)
    images = np.stack([np.asarray(ex['image'], np.uint8) for ex in examples])
    labels = np.array([int(ex['label']) for ex in examples], np.int64)
    return images, labels

  return split_arrays.read(builder, split, decode)
