r"""Classic anomaly-detection baselines on raw pixels, on AMA's exact split.

Each baseline is fit on the training normals of a `ProtocolData` (rows with
`labels == 0`; under the corruption protocol these include the anomalies
labelled normal, as AMA sees them; labelled anomalies of the semi-supervised
protocol are left out). Its one hyper-parameter is chosen by AUROC on the
validation split only (ties: the first value of the grid); the test split is
scored once, with the chosen value. Images are flattened to [N, H*W*C]
float32 in [-1, 1], with no other preprocessing (the paper compares on the
same normalisation).

Methods (scores: higher = more anomalous):
  knn:   mean Euclidean distance to the k nearest training normals
         (the mean rather than the k-th distance: smoother in k; k = 1 is the
         same for both). Grid `K_GRID`.
  pca:   squared reconstruction error ||x - x_hat||^2 of a PCA fit on the
         training normals, n_components from `PCA_GRID`, capped below
         min(num_train, num_pixels).
  ocsvm: RBF one-class SVM, nu = `OCSVM_NU` = 0.1, score -decision_function,
         gamma = multiplier / (num_pixels * var(train pixels)) (sklearn's
         'scale' is multiplier 1) for multipliers in `GAMMA_MULTIPLIERS`,
         fit on a deterministic subsample of at most `max_train_ocsvm`
         training normals (the kernel solver is quadratic in rows).

`python -m ama_jax.tools.baselines` runs them from a config.
"""
from collections.abc import Callable, Mapping, Sequence
import time
from typing import Any

from absl import logging
import numpy as np
from sklearn import decomposition
from sklearn import neighbors
from sklearn import svm

from ama_jax.data import input_pipeline
from ama_jax.scoring import metrics

K_GRID = (1, 2, 5, 10, 20, 50)
PCA_GRID = (8, 16, 32, 64, 128)
# Upper end: with 10 as the largest value, one-class MNIST picked it for 5 of
# 10 digits, so the grid reaches 100 (at most ~7 fits of <= 5000 rows).
GAMMA_MULTIPLIERS = (0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
OCSVM_NU = 0.1
METHODS = ('knn', 'pca', 'ocsvm')
HPARAM_NAMES = {'knn': 'k', 'pca': 'n_components', 'ocsvm': 'gamma'}

# A hyper-parameter value: k, n_components (int) or gamma (float).
Hparam = int | float


def flatten(images: np.ndarray) -> np.ndarray:
  """Returns images [N, H, W, C] as float32 rows [N, H*W*C]."""
  images = np.asarray(images, dtype=np.float32)
  return images.reshape(images.shape[0], -1)


def subsample_indices(
    num_rows: int, max_rows: int | None, rng: np.random.Generator
) -> np.ndarray:
  """Sorted indices of a uniform subsample of at most `max_rows` rows."""
  if max_rows is None or num_rows <= max_rows:
    return np.arange(num_rows)
  return np.sort(rng.choice(num_rows, size=max_rows, replace=False))


def select_by_validation(
    val_labels: np.ndarray, val_scores: Mapping[Hparam, np.ndarray]
) -> tuple[Hparam, dict[Hparam, float]]:
  """Chooses the hyper-parameter with the highest validation AUROC.

  Args:
    val_labels: [N] 0 normal / 1 anomaly.
    val_scores: hyper-parameter value -> [N] validation scores, in grid order.

  Returns:
    (best value, {value: validation AUROC}); ties go to the first value.
  """
  grid = {
      h: metrics.compute_metrics(val_labels, s)['auroc']
      for h, s in val_scores.items()
  }
  best = None
  for h, auroc in grid.items():
    # Strict '>' keeps the first of equal AUROCs.
    if best is None or auroc > grid[best]:
      best = h
  return best, grid


def knn_distances(
    train_x: np.ndarray,
    query_x: np.ndarray,
    max_k: int,
    batch_size: int = 2048,
) -> np.ndarray:
  """Ascending Euclidean distances [N, max_k] to the nearest training rows."""
  # Brute force is exact and, on 784-d pixels, faster than trees.
  index = neighbors.NearestNeighbors(
      n_neighbors=max_k, algorithm='brute', metric='euclidean'
  ).fit(train_x)
  out = np.empty((query_x.shape[0], max_k), np.float64)
  for start in range(0, query_x.shape[0], batch_size):
    batch = query_x[start : start + batch_size]
    out[start : start + batch.shape[0]], _ = index.kneighbors(batch)
  return out


def _knn_candidates(
    train_x: np.ndarray,
    val_x: np.ndarray,
    test_x: np.ndarray,
    *,
    k_grid: Sequence[int],
    batch_size: int,
) -> tuple[list[int], Callable[[int, str], np.ndarray]]:
  """Returns (k grid, scores(k, 'val' | 'test')) for the kNN baseline.

  One neighbour search with the largest k serves the whole grid.
  """
  grid = [k for k in k_grid if k <= train_x.shape[0]]
  if not grid:
    raise ValueError(
        f'k grid {tuple(k_grid)} exceeds the {train_x.shape[0]} training rows.'
    )
  max_k = max(grid)
  dists = {
      'val': knn_distances(train_x, val_x, max_k, batch_size),
      'test': knn_distances(train_x, test_x, max_k, batch_size),
  }
  return grid, lambda k, split: dists[split][:, :k].mean(axis=1)


def _pca_candidates(
    train_x: np.ndarray,
    val_x: np.ndarray,
    test_x: np.ndarray,
    *,
    pca_grid: Sequence[int],
) -> tuple[list[int], Callable[[int, str], np.ndarray]]:
  """Returns (n_components grid, scores(n, 'val' | 'test')) for PCA.

  One fit with the largest n_components serves the whole grid.
  """
  # Centred training rows span at most num_train - 1 directions, and
  # n_components = num_pixels reconstructs everything: both are cut off.
  cap = min(train_x.shape[0] - 1, train_x.shape[1] - 1)
  if cap < 1:
    raise ValueError(f'PCA needs >= 2 training rows, got {train_x.shape[0]}.')
  grid = [c for c in pca_grid if c <= cap]
  if len(grid) < len(pca_grid):
    logging.warning(
        'PCA grid %s capped at %d components: %s.', tuple(pca_grid), cap, grid
    )
  if not grid:
    grid = [cap]
  pca = decomposition.PCA(n_components=max(grid), svd_solver='full')
  pca.fit(train_x)
  components = pca.components_.astype(np.float64)  # Orthonormal rows.
  mean = pca.mean_.astype(np.float64)

  def errors(x: np.ndarray) -> np.ndarray:
    # ||x_c - P_n x_c||^2 = ||x_c||^2 - sum_{i<n} z_i^2 for orthonormal
    # components, so one projection gives the error for every n.
    x_c = x.astype(np.float64) - mean
    cum = np.cumsum(np.square(x_c @ components.T), axis=1)
    total = np.sum(np.square(x_c), axis=1, keepdims=True)
    return np.maximum(total - cum, 0.0)

  errs = {'val': errors(val_x), 'test': errors(test_x)}
  return grid, lambda c, split: errs[split][:, c - 1]


def _ocsvm_candidates(
    train_x: np.ndarray,
    val_x: np.ndarray,
    test_x: np.ndarray,
    *,
    gamma_multipliers: Sequence[float],
    max_train_ocsvm: int | None,
    rng: np.random.Generator,
) -> tuple[list[float], Callable[[float, str], np.ndarray]]:
  """Returns (gamma grid, scores(gamma, 'val' | 'test')) for the OC-SVM.

  One fit per gamma (cached) on a subsample; the test split is scored only
  for the gamma asked for, i.e. the chosen one.
  """
  rows = subsample_indices(train_x.shape[0], max_train_ocsvm, rng)
  fit_x = train_x[rows].astype(np.float64)
  variance = float(fit_x.var())
  if variance <= 0.0:
    raise ValueError('OC-SVM training pixels have zero variance.')
  scale = 1.0 / (fit_x.shape[1] * variance)
  logging.info(
      'ocsvm: %d training rows, 1/(D var) = %.3g, nu = %g.',
      fit_x.shape[0], scale, OCSVM_NU,
  )
  grid = [float(m * scale) for m in gamma_multipliers]
  models = {}

  def scores(gamma: float, split: str) -> np.ndarray:
    if gamma not in models:
      models[gamma] = svm.OneClassSVM(
          kernel='rbf', gamma=gamma, nu=OCSVM_NU, cache_size=500
      ).fit(fit_x)
    x = val_x if split == 'val' else test_x
    return -models[gamma].decision_function(x.astype(np.float64))

  return grid, scores


def run_method(
    method: str,
    train_x: np.ndarray,
    val_x: np.ndarray,
    val_labels: np.ndarray,
    test_x: np.ndarray,
    test_labels: np.ndarray,
    *,
    seed: int = 0,
    k_grid: Sequence[int] = K_GRID,
    pca_grid: Sequence[int] = PCA_GRID,
    gamma_multipliers: Sequence[float] = GAMMA_MULTIPLIERS,
    max_train_ocsvm: int | None = 5000,
    batch_size: int = 2048,
) -> dict[str, Any]:
  """Fits one baseline, picks its hyper-parameter on validation, tests it.

  Args:
    method: 'knn' | 'pca' | 'ocsvm'.
    train_x: [N_train, D] training normals (flattened pixels).
    val_x: [N_val, D] validation rows; val_labels: [N_val] 0/1.
    test_x: [N_test, D] test rows; test_labels: [N_test] 0/1.
    seed: seeds the OC-SVM subsample.
    k_grid, pca_grid, gamma_multipliers: hyper-parameter grids.
    max_train_ocsvm: cap on OC-SVM training rows (None: all).
    batch_size: kNN query batch.

  Returns:
    {'hparam_name', 'hparam' (chosen), 'val_auroc', 'val_grid' ({value:
    validation AUROC} in grid order), 'test' (`metrics.compute_metrics`
    of the chosen value), 'num_train', 'seconds'}.
  """
  start = time.perf_counter()
  if method == 'knn':
    grid, scores = _knn_candidates(
        train_x, val_x, test_x, k_grid=k_grid, batch_size=batch_size
    )
  elif method == 'pca':
    grid, scores = _pca_candidates(train_x, val_x, test_x, pca_grid=pca_grid)
  elif method == 'ocsvm':
    grid, scores = _ocsvm_candidates(
        train_x,
        val_x,
        test_x,
        gamma_multipliers=gamma_multipliers,
        max_train_ocsvm=max_train_ocsvm,
        rng=np.random.default_rng([seed, 1]),
    )
  else:
    raise ValueError(f'Unknown baseline {method!r}; expected one of {METHODS}.')
  best, val_grid = select_by_validation(
      val_labels, {h: scores(h, 'val') for h in grid}
  )
  for h, auroc in val_grid.items():
    logging.info(
        '%s %s=%g: val AUROC %.4f', method, HPARAM_NAMES[method], h, auroc
    )
  test_metrics = metrics.compute_metrics(test_labels, scores(best, 'test'))
  seconds = time.perf_counter() - start
  logging.info(
      '%s: chose %s=%g (val AUROC %.4f); test AUROC %.4f (%.1f s).',
      method, HPARAM_NAMES[method], best, val_grid[best],
      test_metrics['auroc'], seconds,
  )
  return {
      'hparam_name': HPARAM_NAMES[method],
      'hparam': best,
      'val_auroc': val_grid[best],
      'val_grid': val_grid,
      'test': test_metrics,
      'num_train': int(train_x.shape[0]),
      'seconds': seconds,
  }


def run_baselines(
    data: input_pipeline.ProtocolData,
    *,
    seed: int,
    methods: Sequence[str] = METHODS,
    max_train: int | None = None,
    **method_kwargs: Any,
) -> dict[str, dict[str, Any]]:
  """Runs each baseline on the train/validation/test split AMA uses.

  Args:
    data: the protocol splits of `input_pipeline.load_protocol`.
    seed: seeds the subsamples (`max_train`, OC-SVM); results are
      deterministic given `data` and `seed`.
    methods: names among `METHODS`.
    max_train: cap on training normals for every method (None: all),
      a uniform subsample.
    **method_kwargs: passed to `run_method` (grids, `max_train_ocsvm`,
      `batch_size`).

  Returns:
    {method: `run_method` result}.
  """
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(
        f'Unknown baselines {unknown}; expected some of {METHODS}.'
    )
  # Labelled anomalies (semi-supervised) are not training normals; corrupted
  # rows are labelled 0 and stay, as in AMA's training set.
  train_x = flatten(data.train.images[data.train.labels == 0])
  rows = subsample_indices(
      train_x.shape[0], max_train, np.random.default_rng([seed, 0])
  )
  train_x = train_x[rows]
  val_x, test_x = flatten(data.val.images), flatten(data.test.images)
  logging.info(
      'Baselines on %d train normals, %d val, %d test rows of %d pixels.',
      train_x.shape[0], val_x.shape[0], test_x.shape[0], train_x.shape[1],
  )
  return {
      m: run_method(
          m,
          train_x,
          val_x,
          np.asarray(data.val.labels),
          test_x,
          np.asarray(data.test.labels),
          seed=seed,
          **method_kwargs,
      )
      for m in methods
  }


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
  """Returns a fixed-width results table (anomalies positive unless noted)."""
  header = (
      f'{"method":<7} {"hparam":<18} {"val AUROC":>9} {"AUROC":>7} '
      f'{"AUPRC(anom+)":>12} {"AUPRC(norm+)":>12} {"FPR80":>6} {"FPR95":>6}'
  )
  lines = [header, '-' * len(header)]
  for method, r in results.items():
    t = r['test']
    hparam = f'{r["hparam_name"]}={r["hparam"]:.4g}'
    lines.append(
        f'{method:<7} {hparam:<18} {r["val_auroc"]:>9.4f} {t["auroc"]:>7.4f} '
        f'{t["auprc_anomaly"]:>12.4f} {t["auprc_normal"]:>12.4f} '
        f'{t["fpr80"]:>6.4f} {t["fpr95"]:>6.4f}'
    )
  if results:
    t = next(iter(results.values()))['test']
    lines.append(
        f'test: {t["num_normal"]} normal, {t["num_anomaly"]} anomaly images.'
    )
  return '\n'.join(lines)


if __name__ == '__main__':
  raise SystemExit('error: ama_jax.scoring.baselines is a library module; the '
                   'command is python -m ama_jax.tools.baselines (programs '
                   'moved to ama_jax/tools/ on 2026-12-01).')
