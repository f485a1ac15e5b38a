r"""Writes MNIST / Fashion-MNIST (the IDX files of data/raw) as a PNG folder.

  python -m ama_jax.tools.idx_to_pngs --dataset=mnist --output=/tmp/mnist_png

The folder has the layout `configs/folder.py` reads, with the IDX splits as
the user's own train and test sets: `OUTPUT/{train,test}/<class>/<i>.png`,
where `<i>` is the image's zero-padded index in its IDX file. Images of a
split are read back in file-name order, i.e. in IDX order, so the folder
gives exactly the splits of the built-in dataset for the same config and
seed (README, "Your own data"). A missing or malformed IDX file ends in
one line `error: ...` (exit status 1), as in the other commands.
"""
import pathlib

from absl import app
from absl import flags

from ama_jax import errors
from ama_jax.data import idx_images
from ama_jax.data import image_folder
from ama_jax.tools import cli

_DATASET = flags.DEFINE_enum('dataset', 'mnist', list(idx_images.CLASS_NAMES),
                             'Which IDX dataset.')
_OUTPUT = flags.DEFINE_string('output', None, 'Folder to write (must not '
                              'exist).')
_RAW_DIR = flags.DEFINE_string('raw_dir', str(idx_images.DEFAULT_RAW_DIR),
                               'Folder holding <dataset>/ with the IDX files.')


def main(argv):
  del argv
  output = pathlib.Path(_OUTPUT.value)
  if output.exists():
    raise app.UsageError(f'{output} exists; give a new folder.')
  for split in idx_images.SPLIT_FILES:
    with errors.reraise_as(errors.DataError, OSError, ValueError):
      images, labels = idx_images.read_split(
          pathlib.Path(_RAW_DIR.value) / _DATASET.value, split)
    names = ([n.replace('/', '-') for n in
              idx_images.CLASS_NAMES[_DATASET.value]])
    image_folder.write_pngs(output / split, images, labels, names)
    print(f'{output / split}: {len(images)} PNGs in {len(names)} class '
          'folders', flush=True)


if __name__ == '__main__':
  flags.mark_flag_as_required('output')
  cli.run_main(main)
