r"""Your own images: train on a folder of normal images, score new ones.

  python -m ama_jax.main --config=configs/folder.py \
      --config.data.dataset=folder:/path/to/images --workdir=DIR
  python -m ama_jax.tools.score --workdir=DIR --input=/path/to/new \
      --output=s.csv
  python -m ama_jax.tools.export --workdir=DIR --output=DIR/export

Result and time depend on the images: 10 epochs of ~6,000 28x28 images take
~15 min on 2 CPU cores (one-class MNIST's figures, configs/mnist_oneclass.py,
are what the same images give as a built-in dataset).

The folder (README, "Your own images"; ama_jax/data/image_folder.py):

* `/path/to/images/normal/` (+ optional `anomaly/`, known anomalies for
  validation): the default here (`data.normal_classes=('normal',)`);
* or one subfolder per class: name the normal class(es) in the `:arg`,
  e.g. `--config=configs/folder.py:3` or `:cat+dog` (folder names);
* or a flat folder of normals with a second one for the anomalies:
  `--config.data.protocol=ood --config.data.ood_dataset=folder:/path/b`;
* each optionally inside `train/` and `test/` (your own test set; else
  `data.test_fraction` of the images is held out for test, per class, from
  the seed).

`data.dataset` also takes `array:/path/x.npz` (or `x.npy,labels=y.npy`) and
any TFDS image dataset name. Images are brought to 28x28 (the paper's MNIST
architecture, appendix Table 4) by `data.resize` ('bilinear'; 'crop',
'nearest', 'pad'), keeping their channels (grey or RGB; set
`data.channels` when a folder mixes them). Add `cifar` to the `:arg`
(`:cifar` or `:3,cifar`) for the paper's CIFAR architecture (32x32, appendix
Table 3), `runlocal` for a seconds-long smoke run. Validation: 100 normals +
10 anomalies; a folder without anomalies validates on normals only and keeps
the last state (no model selection).
"""
from typing import Optional

import ml_collections

from configs import cifar_svhn
from configs import default


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  flags, rest = default.parse_arg(arg)
  cifar = 'cifar' in rest
  rest = [t for t in rest if t != 'cifar']
  base = ','.join(sorted(flags))
  config = (cifar_svhn.get_config(base) if cifar else
            default.get_config(base))
  data = config.data
  # Replaced on the command line: --config.data.dataset=folder:/your/path.
  data.dataset = 'folder:/path/to/images'
  data.protocol = 'one_class'
  data.normal_classes = (default.parse_classes(rest) if rest
                         else ('normal',))
  data.ood_dataset = 'folder:/path/to/anomalies'  # For protocol='ood'.
  data.num_test_anomaly = None  # OOD: every held-out anomaly.
  data.image_size = 32 if cifar else 28
  if 'runlocal' not in flags:
    data.num_val_normal = 100
    data.num_val_anomaly = 10
  if not flags & {'paper', 'runlocal'}:
    # One-class, tuned: the normal images turned, from the first step
    # (`default.set_one_class_negatives`). For a class that looks the same
    # turned: `--config.sampling.style=none`. With protocol=ood,
    # `--config.sampling.style=outward
    # --config.sampling.start_fraction=0.6666666666666666
    # --config.sampling.earliest_start_epoch=2` gives the tuned OOD recipe's
    # negatives in the last third of the run.
    default.set_one_class_negatives(config)
  return config
