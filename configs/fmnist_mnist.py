r"""OOD detection: Fashion-MNIST is normal, MNIST the anomalies (Table 2a).

  python -m ama_jax.main --config=configs/fmnist_mnist.py --workdir=/tmp/fm
  Append `:runlocal` to the config path for a tiny CPU smoke run.

Paper hyper-parameters (appendix Table 4): MNIST architecture, latent 64,
lr 3e-4, batch 256, 100 epochs, lambda_inter 0.5, lambda_neg 5, lambda_reg 1,
delta 0.5, atypical selection outward; validation 500 normals + 50 MNIST
images; test = Fashion-MNIST test + 1000 MNIST test images.
"""
from typing import Optional

import ml_collections

from configs import default


def get_config(arg: Optional[str] = None) -> ml_collections.ConfigDict:
  return default.get_config(arg)  # The default *is* this experiment.
