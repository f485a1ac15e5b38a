r"""Which distance the feature kNN score should measure: a sweep on stored runs.

  PYTHONPATH=. .venv/bin/python scripts/research/knn_distance_sweep.py WORKDIR...

For each workdir, restores its last checkpoint (splits from the checkpoint's
meta), computes the critic's features f(x, G(E(x))) of the training
normals, validation and test, and prints one JSON line of validation and
test AUROCs of the k=1 (and k=5) feature kNN distance measured:

  euclid        as it is;
  cosine        between L2-normalised features;
  zscore        after standardising each feature on the training normals;
  w<n>_s<s>     after whitening by the training normals' feature covariance
                (float64 `np.cov`), its top n principal directions (n=0:
                all), each divided by sqrt(eigenvalue + s * mean eigenvalue);
  w0_s0.1_k1+pix  that sum with a raw-pixel kNN distance, each standardised
                on the validation normals.

`eval.knn_shrinkage` (`ama_jax.scoring.whitening`) is w0_s<s>; this sweep
chose s = 0.1. An analysis of stored runs, not a detector.
"""
import json
import os
import sys

from ama_jax.process import runtime

runtime.setup()

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from ama_jax.scoring import scoring

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import score_ablation  # pylint: disable=g-bad-import-order

WHITENINGS = ([(n, 0.0) for n in (16, 32, 64, 128, 256, 0)]
              + [(n, s) for s in (0.01, 0.1, 1.0) for n in (0, 128)])


def _whiten(f_train: np.ndarray, n: int, shrink: float):
  mean = f_train.mean(0)
  eigenvalues, vectors = np.linalg.eigh(np.cov(f_train - mean, rowvar=False))
  eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]
  if n:
    eigenvalues, vectors = eigenvalues[:n], vectors[:, :n]
  matrix = vectors / np.sqrt(eigenvalues + shrink * eigenvalues.mean() + 1e-6)
  return lambda f: ((f - mean) @ matrix).astype(np.float32)


def _l2(f: np.ndarray) -> np.ndarray:
  return f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)


def sweep(workdir: str) -> dict:
  """{split: {variant: AUROC}} of one run's last checkpoint."""
  scorer, data, train = score_ablation.restore(workdir)
  f_train = np.asarray(scorer.with_features(train)[1], np.float64)
  spaces = {'euclid': lambda f: f.astype(np.float32), 'cosine': _l2}
  mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
  spaces['zscore'] = lambda f: ((f - mu) / sd).astype(np.float32)
  for n, s in WHITENINGS:
    spaces[f'w{n}_s{s:g}'] = _whiten(f_train, n, s)
  banks = {name: space(f_train) for name, space in spaces.items()}
  p_train = train.reshape(len(train), -1)
  raw = {}
  for split in ('val', 'test'):
    images = getattr(data, split).images
    f = np.asarray(scorer.with_features(images)[1], np.float64)
    raw[split] = {'pix': scoring.knn_distances(
        images.reshape(len(images), -1), p_train, 1)}
    for name, space in spaces.items():
      q = space(f)
      for k in (1, 5):
        raw[split][f'{name}_k{k}'] = scoring.knn_distances(q, banks[name], k)
  return score_ablation.standardised_aurocs(data, raw,
                                            (('w0_s0.1_k1', 'pix'),))

if __name__ == '__main__':
  for workdir_arg in sys.argv[1:]:
    print(workdir_arg, json.dumps(sweep(workdir_arg)), flush=True)
