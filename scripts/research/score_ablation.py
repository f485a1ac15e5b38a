r"""Rescores trained runs with variants of the feature kNN score.

  PYTHONPATH=. .venv/bin/python scripts/research/score_ablation.py runs/quick_s0 runs/.../e10_s0

For each workdir, restores its last checkpoint (`ama_jax.scoring` reads the
run's data settings and seed from the checkpoint's meta, so the splits are
the run's own), and prints one JSON line of validation and test AUROCs of:

  feat        the feature kNN distance (k=1), Euclidean (the run's `knn`
              score with `eval.knn_shrinkage=None`);
  featw       the same after the whitening of `eval.knn_shrinkage=0.1`
              (`ama_jax.scoring.whitening`; the `knn` score of a run with
              the default);
  feat5       the Euclidean one with k=5;
  pix         raw-pixel kNN distance (k=1) to the training normals;
  R           the paper's raw score R(x);
  a+b         sums of those scores, each standardised by the mean and
              standard deviation of the validation normals' (no anomaly
              labels are used to build a score).

An analysis of stored runs, not a detector: the chosen score of a run is
what `ama_jax.main` reports and `ama_jax.tools.score` uses.
"""
import json
import sys

from ama_jax.process import runtime

runtime.setup()

# pylint: disable=g-import-not-at-top,wrong-import-position
import ml_collections
import numpy as np
from sklearn import metrics as sk_metrics

from ama_jax.data import input_pipeline
from ama_jax.models import nets
from ama_jax.scoring import detectors
from ama_jax.scoring import scoring
from ama_jax.scoring import whitening


def restore(workdir: str):
  """(scorer, protocol data, training normals) of a run's last checkpoint,
  the splits read with the run's own data settings and seed."""
  scorer, meta = detectors.load_scorer(workdir, kind='latest')
  config = ml_collections.ConfigDict(meta['config'])
  data = input_pipeline.load_protocol(
      config.data, config.seed, input_size=nets.input_size(config.model.arch))
  return scorer, data, data.train.images[data.train.labels == 0]


def ablation(workdir: str) -> dict:
  """{split: {variant: AUROC}} of one run's last checkpoint."""
  scorer, data, train = restore(workdir)
  f_train = np.asarray(scorer.with_features(train)[1])
  whitened = scoring.KnnIndex(f_train, 1,
                              whitening=whitening.fit(f_train, 0.1))
  p_train = train.reshape(len(train), -1)
  raw = {}
  for split in ('val', 'test'):
    images = getattr(data, split).images
    r, f = scorer.with_features(images)
    f = np.asarray(f)
    raw[split] = {
        'feat': scoring.knn_distances(f, f_train, 1),
        'featw': whitened(f),
        'feat5': scoring.knn_distances(f, f_train, 5),
        'pix': scoring.knn_distances(images.reshape(len(images), -1),
                                     p_train, 1),
        'R': np.asarray(r)}
  return standardised_aurocs(
      data, raw, (('feat', 'pix'), ('feat5', 'pix'), ('feat', 'R'),
                  ('feat', 'pix', 'R'), ('featw', 'pix')))


def standardised_aurocs(data, raw: dict, combos) -> dict:
  """{split: {score or 'a+b' sum: AUROC}} of raw[split][score] [N] and of
  the sums in `combos`, each score standardised by the mean and standard
  deviation of the validation normals' (no anomaly label used)."""
  normal = data.val.labels == 0
  stats = {k: (np.mean(v[normal]), np.std(v[normal]))
           for k, v in raw['val'].items()}
  out = {}
  for split, scores in raw.items():
    z = {k: (np.asarray(v) - stats[k][0]) / stats[k][1]
         for k, v in scores.items()}
    variants = dict(scores)
    for combo in combos:
      variants['+'.join(combo)] = sum(z[k] for k in combo)
    labels = getattr(data, split).labels
    out[split] = {k: round(float(sk_metrics.roc_auc_score(labels, v)), 4)
                  for k, v in variants.items()}
  return out

if __name__ == '__main__':
  for workdir_arg in sys.argv[1:]:
    print(workdir_arg, json.dumps(ablation(workdir_arg)), flush=True)
