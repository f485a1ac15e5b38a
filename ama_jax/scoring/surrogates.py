"""Surrogate anomalies: held-out normal images, transformed.

A run that has no labelled anomalies still has to choose between its two
scores (the paper's calibrated R(x) and the feature kNN score). It can ask
which score better tells its held-out normal images from the same images
turned, flipped or partly blanked out: the score's surrogate AUROC. Each
transform keeps an image's pixels and statistics but breaks the layout the
normal class has (as the transformations of GEOM, Golan and El-Yaniv 2018,
and of CSI's shifted instances); a score that is more sensitive to such
departures from the normal structure ranks real anomalies better, and
nothing labelled is looked at. `report.pick` uses it for
`eval.selection='label_free'` (`eval.label_free_score='surrogate'`).

Transforms (`TRANSFORMS`), on images [N, H, W, C]:
  rot90, rot180: quarter and half turns (rot90 for square images only);
  vflip, hflip: mirror images top-bottom, left-right;
  cutout: a square of side H // 3 set to the darkest value (-1) at a place
    drawn per image from `seed`.
A class that is symmetric under a transform gives both scores a surrogate
AUROC near 0.5 for it, which does not favour either. A transform the
training itself used as negatives (`sampling.style='rotate'`: rot90 and,
with all turns, rot180) is left out (`held_out`): the critic's features
were trained to tell it apart, which says nothing about real anomalies and
would favour the kNN score.
"""
from typing import Sequence

import numpy as np

from ama_jax.scoring import metrics
from ama_jax.training import sampling

TRANSFORMS = ('rot90', 'rot180', 'vflip', 'hflip', 'cutout')


def held_out(sampling_config) -> tuple[str, ...]:
  """`TRANSFORMS` less those the run's negatives were made with: rot90 for
  a quarter turn either way, rot180 for a half turn
  (`sampling.QUARTER_TURNS`)."""
  if sampling_config.get('style') not in sampling.IMAGE_STYLES:
    return TRANSFORMS
  ks = sampling.QUARTER_TURNS[sampling_config.get('turns', 'all')]
  seen = {'rot90'} if {1, 3} & set(ks) else set()
  seen |= {'rot180'} if 2 in ks else set()
  return tuple(t for t in TRANSFORMS if t not in seen)


def held_out_mean(aurocs_of_score: dict[str, float], sampling_config
                  ) -> float:
  """Mean surrogate AUROC of one score over the `held_out` transforms it
  was measured on (results stored with every transform are judged the same
  way as new ones)."""
  names = [t for t in held_out(sampling_config) if t in aurocs_of_score]
  if not names:
    return float(aurocs_of_score['mean'])
  return float(np.mean([aurocs_of_score[t] for t in names]))


def transform(images: np.ndarray, seed: int,
              names: Sequence[str] = TRANSFORMS) -> dict[str, np.ndarray]:
  """{name: transformed images} for each of `names` (float arrays in
  [-1, 1], [N, H, W, C]); rot90 is left out for non-square images."""
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'Expected images [N, H, W, C], got {images.shape}.')
  n, h, w, _ = images.shape
  out = {}
  for name in names:
    if name == 'rot90':
      if h == w:
        out[name] = np.rot90(images, 1, axes=(1, 2))
    elif name == 'rot180':
      out[name] = images[:, ::-1, ::-1]
    elif name == 'vflip':
      out[name] = images[:, ::-1]
    elif name == 'hflip':
      out[name] = images[:, :, ::-1]
    elif name == 'cutout':
      side = max(1, h // 3)
      rng = np.random.default_rng(seed)
      tops = rng.integers(0, h - side + 1, n)
      lefts = rng.integers(0, w - side + 1, n)
      cut = images.copy()
      for i, (t, l) in enumerate(zip(tops, lefts)):
        cut[i, t:t + side, l:l + side] = -1.0
      out[name] = cut
    else:
      raise ValueError(f'Unknown transform {name!r}; expected one of '
                       f'{TRANSFORMS}.')
  return {k: np.ascontiguousarray(v, dtype=np.float32)
          for k, v in out.items()}


def stacked(images: np.ndarray, seed: int,
            names: Sequence[str] = TRANSFORMS
            ) -> tuple[np.ndarray, list[str]]:
  """The transforms `names` of `images` in one array (one scoring pass), and
  the transform name of each block of len(images) rows."""
  parts = transform(images, seed, names)
  return np.concatenate(list(parts.values())), list(parts)


def aurocs(normal_scores: np.ndarray, surrogate_scores: np.ndarray,
           names: Sequence[str]) -> dict[str, float]:
  """Surrogate AUROC per transform (normals 0, their transforms 1) and
  their mean ('mean'), for one score; higher = more anomalous."""
  normal_scores = np.asarray(normal_scores, np.float64)
  blocks = np.split(np.asarray(surrogate_scores, np.float64), len(names))
  labels = np.r_[np.zeros(len(normal_scores)),
                 np.ones(len(normal_scores))]
  out = {name: float(metrics.compute_metrics(
      labels, np.r_[normal_scores, block])['auroc'])
         for name, block in zip(names, blocks)}
  out['mean'] = float(np.mean(list(out.values())))
  return out
