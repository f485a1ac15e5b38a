"""Anomaly scores: R(x) (eq. 6), its Gaussian calibration (eq. 7), metrics.

R(x) = ||f(x, x) - f(x, G(E(x)))||_1 with f the critic's penultimate
features, everything in evaluation mode (BatchNorm running statistics,
spectral-norm vectors frozen), so a score never depends on what else is in
the batch. Two calibrated scores, with mu, sigma the mean and standard
deviation of R over the training set's normal images:

- 'two_sided' (the paper's eq. 7): -log A(x) up to a constant,
  (R - mu)^2 / (2 sigma^2). Ranking by it equals ranking by A(x) (low
  likelihood = anomalous) without the ties at A = 0 that far-out images
  would otherwise all share. An unusually low R is anomalous too (the
  paper's CIFAR-10 -> SVHN case).
- 'one_sided': the z-score (R - mu) / sigma; only a high R is anomalous.
  It ranks as raw R does (Zenati et al.'s score), calibrated.

`eval.score='auto'` picks one of the two per evaluation by validation
AUROC (a choice on validation only).

Not in the paper: the feature kNN score (`eval.knn_k` > 0; reported beside
the calibrated one, prefix `knn_`) is the distance from f(x, G(E(x))) --
the critic's penultimate features of the reconstruction pair, the second
term of R -- to its k-th nearest neighbour among the training normals'
features, Euclidean after the whitening of `eval.knn_shrinkage`
(`ama_jax.scoring.whitening`). The same networks and the same forward pass as
R; only the comparison differs (a distance to the training set's features
instead of a distance between the two pairs' features).
"""
import dataclasses
import functools
import math
from typing import Any, Optional

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from ama_jax.scoring import metrics
from ama_jax.scoring import whitening
from ama_jax.training import placement
from ama_jax.training import train_state


def scores_and_features(ae_model, critic_model, ae_vars, critic_vars,
                        images: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(R(x), f(x, G(E(x)))) for a batch.

  Args:
    ae_model, critic_model: the flax modules.
    ae_vars, critic_vars: their variables ({'params', 'batch_stats'}).
    images: [batch, H, W, C] in [-1, 1].

  Returns:
    R: [batch] float32, higher = less like the training data's
      reconstructions; and the critic's penultimate features of the
      reconstruction pair, [batch, features] float32 (the feature kNN
      score's input).
  """
  x_rec, _ = ae_model.apply(ae_vars, images, train=False)
  # One critic call on both pairs (larger matmuls); rows stay independent.
  _, features = critic_model.apply(
      critic_vars, jnp.concatenate([images, images]),
      jnp.concatenate([images, x_rec]), train=False)
  f_real, f_fake = jnp.split(features, 2)
  return jnp.sum(jnp.abs(f_real - f_fake), axis=-1), f_fake


def raw_scores(ae_model, critic_model, ae_vars, critic_vars,
               images: jax.Array) -> jax.Array:
  """R(x) for a batch ([batch] float32; see `scores_and_features`)."""
  return scores_and_features(ae_model, critic_model, ae_vars, critic_vars,
                             images)[0]


SCORES = ('two_sided', 'one_sided')


def calibrated_scores(r: np.ndarray, mu: float, sigma: float,
                      score: str = 'two_sided') -> np.ndarray:
  """Calibrated score of R (see the module docstring); higher = anomalous.

  'two_sided': -log A(x) + const = (R - mu)^2 / (2 sigma^2);
  'one_sided': (R - mu) / sigma.
  """
  z = (np.asarray(r, np.float64) - mu) / sigma
  if score == 'two_sided':
    return z ** 2 / 2.0
  if score == 'one_sided':
    return z
  raise ValueError(f'Unknown score {score!r}; choose one of {SCORES}.')


def fit_gaussian(r: np.ndarray) -> tuple[float, float]:
  """mu, sigma of R over normal training images (eq. 7), sigma > 0."""
  r = np.asarray(r, np.float64)
  if r.size < 2 or not np.all(np.isfinite(r)):
    raise ValueError(f'Cannot calibrate on {r.size} scores (need >= 2, all '
                     'finite).')
  return float(r.mean()), float(max(r.std(), 1e-12))


def _pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
  """`a` with zero rows appended up to `rows` (one shape per compiled call;
  callers drop the padded rows' results)."""
  return np.pad(a, [(0, rows - len(a))] + [(0, 0)] * (a.ndim - 1))


@functools.lru_cache(maxsize=8)
def _pmapped_scores(ae_model, critic_model, devices: tuple) -> Any:
  """`scores_and_features` pmapped over `devices`; built once per (models,
  devices), so the scorers of every validation of a run share one compiled
  program. Callers that want R only never read the features back."""
  fn = functools.partial(scores_and_features, ae_model, critic_model)
  return jax.pmap(fn, axis_name=placement.AXIS, in_axes=(None, None, 0),
                  devices=devices)


@dataclasses.dataclass
class Scorer:
  """Scores arrays of any length, padded and sharded over local devices.

  Every image is scored exactly once: the last, ragged batch is padded with
  zeros and the padded rows are dropped (no image is scored twice, none is
  dropped). With several processes (`split_processes`), each scores one
  contiguous slice of the images on its own devices and the slices are
  gathered, so every process returns all N scores; every process must then
  call the scorer with the same images. Scores do not depend on the batch
  (eval mode), so the split changes no score.
  """
  ae_model: Any
  critic_model: Any
  ae_vars: Any
  critic_vars: Any
  batch_size: int = 500  # Per process; rounded up to the device count.
  devices: Any = None  # This process's devices (default: all local ones).
  split_processes: bool = True  # Only with jax.process_count() > 1.

  def __post_init__(self):
    self.devices = self.devices or jax.local_devices()
    n = len(self.devices)
    self.per_device = max(1, -(-self.batch_size // n))
    self._p_scores = _pmapped_scores(self.ae_model, self.critic_model,
                                     tuple(self.devices))

  def __call__(self, images: np.ndarray) -> np.ndarray:
    """R(x) for images [N, H, W, C] in [-1, 1] -> [N] float32 (numpy)."""
    return self._gathered(images, features=False)

  def with_features(self, images: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(R(x) [N], f(x, G(E(x))) [N, features]) in one pass."""
    return self._gathered(images, features=True)

  def _gathered(self, images: np.ndarray, features: bool):
    num_processes = jax.process_count()
    if not self.split_processes or num_processes == 1 or not len(images):
      return self._score(images, features)
    # Equal slices (the last ones padded), so that the gather is one array.
    size = -(-len(images) // num_processes)
    start = min(jax.process_index() * size, len(images))
    out = self._score(images[start:start + size], features)
    out = jax.tree.map(lambda a: _pad_rows(a, size), out)
    gathered = multihost_utils.process_allgather(out)  # [processes, size...]
    return jax.tree.map(
        lambda a: np.asarray(a).reshape(-1, *a.shape[2:])[:len(images)],
        gathered)

  def _score(self, images: np.ndarray, features: bool):
    """R(x) (and the features) of images on this process's devices."""
    images = np.asarray(images, np.float32)
    n_dev, per_dev = len(self.devices), self.per_device
    chunk = n_dev * per_dev
    rs, fs = [], []
    for start in range(0, len(images), chunk):
      batch = images[start:start + chunk]
      valid = len(batch)
      batch = _pad_rows(batch, chunk)  # The ragged last batch; rows dropped.
      r, f = self._p_scores(self.ae_vars, self.critic_vars,
                            batch.reshape(n_dev, per_dev, *images.shape[1:]))
      rs.append(np.asarray(r).reshape(-1)[:valid])
      if features:
        fs.append(np.asarray(f).reshape(chunk, -1)[:valid])
    r = np.concatenate(rs) if rs else np.zeros((0,), np.float32)
    if not features:
      return r
    return r, (np.concatenate(fs) if fs else np.zeros((0, 0), np.float32))


def scorer_from_state(state, ae_model, critic_model, batch_size: int = 500,
                      devices=None) -> Scorer:
  """A `Scorer` over the (host or device) variables of a training state.

  It scores with the moving averages of the weights when the state keeps
  them (`optim.ema_decay` > 0), else with the trained weights.
  """
  ae_vars, critic_vars = train_state.scoring_variables(state)
  return Scorer(ae_model, critic_model, ae_vars, critic_vars,
                batch_size=batch_size, devices=devices)


@dataclasses.dataclass(frozen=True)
class Calibration:
  """What scoring new data needs besides the networks."""
  mu: float
  sigma: float
  threshold: float  # On the calibrated score; above it = anomaly.
  threshold_fpr: float  # Target false-positive rate it was chosen for.
  score: str = 'two_sided'  # Which calibrated score (SCORES).

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Optional['Calibration']:
    """The calibration `to_dict` wrote into `d` (e.g. a checkpoint's meta,
    which holds other keys too), or None when `d` holds none."""
    values = {}
    for f in dataclasses.fields(cls):
      if d.get(f.name) is not None:
        values[f.name] = d[f.name]
      elif f.default is dataclasses.MISSING:
        return None
    return cls(**values)

  def scores(self, r: np.ndarray) -> np.ndarray:
    """The calibrated scores of raw R values."""
    return calibrated_scores(r, self.mu, self.sigma, self.score)


def calibrate(r_train_normal: np.ndarray, r_heldout_normal: np.ndarray,
              threshold_fpr: float, score: str = 'two_sided') -> Calibration:
  """Fits mu, sigma on training normals; threshold on held-out normals."""
  mu, sigma = fit_gaussian(r_train_normal)
  threshold = metrics.threshold_at_fpr(
      calibrated_scores(r_heldout_normal, mu, sigma, score), threshold_fpr)
  return Calibration(mu=mu, sigma=sigma, threshold=float(threshold),
                     threshold_fpr=threshold_fpr, score=score)


def choose_score(r_val: np.ndarray, labels: np.ndarray, mu: float,
                 sigma: float) -> str:
  """The score in SCORES with the higher validation AUROC ('two_sided' on
  ties, and when validation has no anomalies to tell them apart)."""
  if len(set(np.asarray(labels).tolist())) < 2:
    return 'two_sided'
  aurocs = {s: metrics.compute_metrics(
      labels, calibrated_scores(r_val, mu, sigma, s))['auroc']
            for s in SCORES}
  return max(SCORES, key=lambda s: (aurocs[s], s == 'two_sided'))


def kth_sq_distance(queries: jax.Array, bank: jax.Array,
                    bank_sq: jax.Array, k: int,
                    portable: bool = False) -> jax.Array:
  """Squared Euclidean distance of each query to its k-th nearest bank row.

  `portable`: without `lax.top_k` (whose StableHLO composite TensorFlow's
  SavedModel loader may not know), by a sort: the same value.
  """
  d = (jnp.sum(queries * queries, axis=1, keepdims=True)
       - 2.0 * queries @ bank.T + bank_sq[None])
  if k == 1:
    return jnp.min(d, axis=1)
  if portable:
    return jnp.sort(d, axis=1)[:, k - 1]
  return -jax.lax.top_k(-d, k)[0][:, k - 1]


_kth_sq_distance = jax.jit(kth_sq_distance, static_argnames='k')


class KnnIndex:
  """The training normals' features on the device, once; `index(queries)`
  is each query's Euclidean distance to its k-th nearest bank row, in the
  space of `whitening` when given (`ama_jax.scoring.whitening`).

  Args:
    bank: [M, D] features of the training normals (M >= k).
    k: which neighbour (1 = the nearest).
    chunk: queries per call (the last call is padded: one compilation).
    whitening: applied to the bank and to every query; None: the features
      as they are.
  """

  def __init__(self, bank: np.ndarray, k: int, chunk: int = 256,
               whitening=None):
    if not 1 <= k <= len(bank):
      raise ValueError(f'eval.knn_k={k}: must be between 1 and the number of '
                       f'training normals ({len(bank)}).')
    self.bank = np.asarray(bank, np.float32)  # [M, D], on the host.
    self.whitening = whitening
    bank = self._space(self.bank)
    self.k, self.chunk = k, chunk
    # Norms on the host and device_put (not jnp ops or jnp.asarray, which
    # each lower a program per shape): see tests/compile_count_test.py.
    self._bank_sq = jax.device_put(np.einsum('ij,ij->i', bank, bank))
    self._bank = jax.device_put(bank)

  def _space(self, features: np.ndarray) -> np.ndarray:
    return (features if self.whitening is None
            else self.whitening(features))

  def __call__(self, queries: np.ndarray) -> np.ndarray:
    """[N, D] -> [N] float32; higher = farther from the training normals."""
    queries = self._space(np.asarray(queries, np.float32))
    out = []
    for start in range(0, len(queries), self.chunk):
      q = queries[start:start + self.chunk]
      valid = len(q)
      q = _pad_rows(q, self.chunk)
      out.append(np.asarray(_kth_sq_distance(q, self._bank, self._bank_sq,
                                             self.k))[:valid])
    d = np.concatenate(out) if out else np.zeros((0,), np.float32)
    return np.sqrt(np.maximum(d, 0.0))  # Rounding can make it slightly < 0.


def knn_distances(queries: np.ndarray, bank: np.ndarray, k: int,
                  chunk: int = 256) -> np.ndarray:
  """Euclidean distance from each query row [N, D] to its k-th nearest row
  of `bank` [M, D] (`KnnIndex` for one set of queries): [N] float32."""
  return KnnIndex(bank, k, chunk)(queries)


BANK_PROJECTION = 32  # Dimensions the bank's farthest-point search runs in.


@functools.partial(jax.jit, static_argnames='size')
def _farthest_points(x: jax.Array, start: jax.Array, size: int) -> jax.Array:
  """Greedy k-center: each new row is the one farthest from those chosen."""
  def body(i, carry):
    rows, dist = carry
    d = jnp.sum(jnp.square(x - x[rows[i - 1]]), axis=1)
    dist = jnp.minimum(dist, d)
    return rows.at[i].set(jnp.argmax(dist).astype(jnp.int32)), dist

  rows = jnp.zeros((size,), jnp.int32).at[0].set(start)
  dist = jnp.full((x.shape[0],), jnp.inf, jnp.float32)
  return jax.lax.fori_loop(1, size, body, (rows, dist))[0]


def knn_bank(features: np.ndarray, size: Optional[int],
             seed: int = 0) -> np.ndarray:
  """Sorted row indices of the feature kNN score's memory bank.

  All rows when there are at most `size` (or `size` is None / 0): the kNN
  score is then exact. Otherwise a coreset of `size` rows, the greedy
  k-center (farthest-point) selection run on a seeded random projection to
  `BANK_PROJECTION` dimensions: it keeps the rows that cover the training
  features, so that a normal image's nearest bank row stays near (a random
  subsample would leave sparse regions uncovered). Deterministic for the
  same features and seed.
  """
  m = len(features)
  if not size or m <= size:
    return np.arange(m)
  rng = np.random.default_rng(seed)
  d = features.shape[1]
  proj = (rng.standard_normal((d, min(d, BANK_PROJECTION))) / np.sqrt(
      min(d, BANK_PROJECTION))).astype(np.float32)
  low = jax.device_put(np.asarray(features, np.float32) @ proj)
  start = jax.device_put(np.int32(rng.integers(m)))
  return np.sort(np.asarray(_farthest_points(low, start, int(size))))


def memory_bank(features: np.ndarray, size: Optional[int],
                shrinkage: Optional[float], seed: int = 0):
  """(rows, whitening) of the feature kNN score's memory bank: the
  whitening fitted on all `features` (`whitening.fit`; None for
  `shrinkage=None`) and `knn_bank`'s rows, a coreset chosen in the whitened
  space (the features are whitened for it only when there is one)."""
  space = whitening.fit(features, shrinkage)
  needs_coreset = bool(size) and len(features) > size
  rows = knn_bank(features if space is None or not needs_coreset
                  else space(features), size, seed)
  return rows, space


def _metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
  """`metrics.compute_metrics`, or NaN for every ROC/PR metric when the
  labels hold one class (a split of normal images only)."""
  labels = np.asarray(labels)
  if len(set(labels.tolist())) == 2:
    return metrics.compute_metrics(labels, scores)
  return {'auroc': math.nan, 'auprc_anomaly': math.nan,
          'auprc_normal': math.nan, 'fpr80': math.nan, 'fpr95': math.nan,
          'num_normal': int(np.sum(labels == 0)),
          'num_anomaly': int(np.sum(labels == 1))}


def evaluate(r: np.ndarray, labels: np.ndarray, calibration: Calibration,
             knn: Optional[np.ndarray] = None) -> dict[str, float]:
  """Metrics of the calibrated score, of raw R (prefix `raw_`) and, given
  the feature kNN distances `knn`, of those (prefix `knn_`).

  A split without anomalies (or without normals) gets NaN for AUROC, AUPRC
  and FPR at TPR: they are undefined there.
  """
  result = _metrics(labels, calibration.scores(r))
  for prefix, scores in (('raw', r), ('knn', knn)):
    if scores is not None:
      result.update({f'{prefix}_{k}': v
                     for k, v in _metrics(labels, scores).items()
                     if not k.startswith('num_')})
  return result


# Model selection (`loop.Trainer.validate`): the best validation AUROC of the
# calibrated score. A validation split without anomalies (a folder of normal
# images only) has no AUROC; the run then keeps its last state. Why not an
# unsupervised criterion such as the lowest mean calibrated score of the
# validation normals: that measures how alike R is on training and held-out
# normals, which an untrained model satisfies as well as a trained one (no
# gap either way), so it tends to pick early, under-trained states and says
# nothing about anomalies. The full schedule (learning-rate decay, the
# negatives' ramp) is what the paper trains for.
SELECTION_AUROC, SELECTION_LAST = 'best_val_auroc', 'last_state'
# How a run picks its detector at the end (`eval.selection`,
# `report.choose`): from normal images alone, or by validation AUROC.
LABEL_FREE, VAL_AUROC = 'label_free', 'val_auroc'
SELECTIONS = (LABEL_FREE, VAL_AUROC)
# How the label-free rule picks its score (`eval.label_free_score`).
SURROGATE = 'surrogate'
LABEL_FREE_SCORES = (SURROGATE, 'knn', 'calibrated')


def model_selection(val_labels: np.ndarray) -> dict[str, str]:
  """How a run with these validation labels selects its model.

  Returns:
    {'criterion': 'best_val_auroc' | 'last_state', 'reason': text}.
  """
  if {0, 1} <= set(np.asarray(val_labels).tolist()):
    return {'criterion': SELECTION_AUROC,
            'reason': 'the highest validation AUROC of the calibrated score'}
  return {'criterion': SELECTION_LAST,
          'reason': 'validation holds no anomalies, so no AUROC: the last '
                    'state is kept (the full training schedule), and its '
                    'threshold is set on the validation normals'}
