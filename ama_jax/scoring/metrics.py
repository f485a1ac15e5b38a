"""Anomaly-detection metrics and score thresholds, shared by AMA and baselines.

Every score here is "higher = more anomalous" and every label is 0 for a
normal image and 1 for an anomaly. The paper reports AUROC, AUPRC and FPR80;
the official code computed AUPRC with normals as the positive class (see
`shared/notes/mission-anchors.md`), so both orientations are reported, each
under its own name, and FPR at 80% and 95% TPR is actually computed.

Only numpy and scikit-learn are imported so that the module can be used on
host-side arrays by any program (training, scoring, baselines).
"""
import math
from typing import Any, Optional

import numpy as np
from sklearn import metrics as sk_metrics


def _check_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
  """Returns (labels int32 [N], scores float64 [N]) or raises ValueError."""
  labels = np.asarray(labels)
  scores = np.asarray(scores, dtype=np.float64)
  if labels.ndim != 1 or scores.ndim != 1:
    raise ValueError(
        f'labels and scores must be 1-D, got shapes {labels.shape} and '
        f'{scores.shape}.'
    )
  if labels.shape != scores.shape:
    raise ValueError(
        f'labels and scores differ in length: {labels.shape[0]} vs '
        f'{scores.shape[0]}.'
    )
  values = set(np.unique(labels).tolist())
  if not values <= {0, 1}:
    raise ValueError(
        'labels must be 0 (normal) or 1 (anomaly), got values '
        f'{sorted(values)}.'
    )
  if values != {0, 1}:
    raise ValueError(
        'labels must contain both normals (0) and anomalies (1) for ROC/PR '
        f'metrics, got only {sorted(values)} in {labels.shape[0]} rows.'
    )
  bad = ~np.isfinite(scores)
  if bad.any():
    raise ValueError(
        f'scores contain {int(bad.sum())} non-finite values (NaN or Inf) out '
        f'of {scores.shape[0]}; first at index '
        f'{int(np.flatnonzero(bad)[0])}.'
    )
  return labels.astype(np.int32), scores


def fpr_at_tpr(labels: Any, scores: Any, tpr_target: float) -> float:
  """False-positive rate at the first ROC operating point reaching a TPR.

  The ROC curve is taken from `sklearn.metrics.roc_curve` with
  `drop_intermediate=False`, so every distinct score is an operating point.
  No interpolation is done between operating points: the value is the
  smallest FPR among points whose TPR >= `tpr_target`. Tied scores form one
  operating point, so a tie block that straddles the target counts whole
  (the conservative, achievable value, as in `fpr_and_fdr_at_recall`).

  Args:
    labels: [N] 0 normal / 1 anomaly (anomalies are the positive class).
    scores: [N] higher = more anomalous.
    tpr_target: target true-positive rate in (0, 1], e.g. 0.8 for FPR80.

  Returns:
    The FPR in [0, 1].
  """
  if not 0.0 < tpr_target <= 1.0:
    raise ValueError(f'tpr_target must be in (0, 1], got {tpr_target}.')
  labels, scores = _check_inputs(labels, scores)
  fpr, tpr, _ = sk_metrics.roc_curve(labels, scores, drop_intermediate=False)
  # `tpr` ends at exactly 1.0, so the mask is never empty.
  return float(np.min(fpr[tpr >= tpr_target]))


def compute_metrics(labels: Any, scores: Any) -> dict[str, float | int]:
  """Computes the detection metrics reported in every results table.

  Args:
    labels: [N] int, 0 normal / 1 anomaly.
    scores: [N] float, higher = more anomalous.

  Returns:
    A dict with
      `auroc`: area under the ROC curve (symmetric in the orientation).
      `auprc_anomaly`: average precision with anomalies (1) as positives,
        ranked by `scores`; chance level is the anomaly fraction.
      `auprc_normal`: average precision with normals (0) as positives,
        ranked by `-scores`; chance level is the normal fraction.
      `fpr80`, `fpr95`: FPR at 80% / 95% TPR (see `fpr_at_tpr`).
      `num_normal`, `num_anomaly`: counts, to read the AUPRCs against.

  Raises:
    ValueError: if labels hold one class only, or scores hold NaN/Inf.
  """
  labels, scores = _check_inputs(labels, scores)
  return {
      'auroc': float(sk_metrics.roc_auc_score(labels, scores)),
      'auprc_anomaly': float(
          sk_metrics.average_precision_score(labels, scores)
      ),
      'auprc_normal': float(
          sk_metrics.average_precision_score(1 - labels, -scores)
      ),
      'fpr80': fpr_at_tpr(labels, scores, 0.8),
      'fpr95': fpr_at_tpr(labels, scores, 0.95),
      'num_normal': int(np.sum(labels == 0)),
      'num_anomaly': int(np.sum(labels == 1)),
  }


def threshold_at_fpr(normal_scores: Any, fpr: float) -> float:
  """Score threshold that flags at most a fraction `fpr` of held-out normals.

  Decision rule: an image is an anomaly when `score > threshold`. With the
  n normal scores sorted ascending, s_1 <= ... <= s_n, and
  m = floor(fpr * n) normals allowed above the threshold, the threshold is
  s_{n-m}: the empirical (1 - fpr) quantile of the "inverted CDF" kind, an
  observed score, no interpolation. Then at most m normals score strictly
  above it (fewer when scores tie at the threshold), and it is the smallest
  observed score with that property.

  Args:
    normal_scores: [N] scores of held-out normal images (e.g. validation),
      higher = more anomalous.
    fpr: target false-positive rate in [0, 1].

  Returns:
    The threshold (a float equal to one of `normal_scores`).

  Raises:
    ValueError: on empty or non-finite scores, or `fpr` outside [0, 1].
  """
  scores = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
  if scores.size == 0:
    raise ValueError('normal_scores is empty.')
  if not np.all(np.isfinite(scores)):
    raise ValueError('normal_scores contain NaN or Inf.')
  if not 0.0 <= fpr <= 1.0:
    raise ValueError(f'fpr must be in [0, 1], got {fpr}.')
  n = scores.size
  # The tolerance keeps e.g. 0.29 * 100 = 28.999999999999996 at 29.
  allowed_above = min(int(math.floor(fpr * n + 1e-9)), n - 1)
  return float(np.sort(scores)[n - 1 - allowed_above])


# The anomaly scores a run reports (results.json) and the prefix of each
# one's metrics: the calibrated score (the paper's A(x), or the one-sided
# (R - mu) / sigma), the raw critic output R(x), the feature kNN score.
RUN_SCORES = {'calibrated': '', 'raw': 'raw_', 'knn': 'knn_'}


def selected_state(results: dict[str, Any]) -> str:
  """'best' (the best-validation state) if the run recorded it, else 'last'."""
  return 'best' if 'best' in results['test'] else 'last'


def val_aurocs(results: dict[str, Any]) -> dict[str, float]:
  """{score: validation AUROC} of a run's selected state, in `RUN_SCORES`
  order (-1 where not recorded)."""
  val = (results.get('val') or {}).get(selected_state(results)) or {}
  return {score: val.get(f'{prefix}auroc', -1.0)
          for score, prefix in RUN_SCORES.items()}


def score_chosen_on_validation(results: dict[str, Any]) -> str:
  """The score of `RUN_SCORES` with the highest validation AUROC at the
  selected state (ties keep the earlier: calibrated, then raw; a validation
  split without anomalies: calibrated)."""
  aurocs = {k: v for k, v in val_aurocs(results).items()
            if math.isfinite(v) and v >= 0}
  # No validation AUROC (no anomalies there): the calibrated score.
  return max(aurocs, key=aurocs.get) if aurocs else 'calibrated'


def run_score_metrics(results: dict[str, Any], score: str,
                      state: Optional[str] = None) -> dict[str, Any]:
  """Test metrics of a run's `state` ('best' / 'last'; None: the selected
  one) under `score` (`RUN_SCORES`): its `auroc`, `auprc_*`, `fpr*` are
  that score's.

  Raises:
    ValueError: an unknown score, or one the run did not record.
  """
  if score not in RUN_SCORES:
    raise ValueError(f'Unknown score {score!r}; expected one of '
                     f'{tuple(RUN_SCORES)}.')
  test = results['test'][state or selected_state(results)]
  prefix = RUN_SCORES[score]
  if f'{prefix}auroc' not in test:
    raise ValueError(f'The run has no {score} score (trained with '
                     'eval.knn_k=0, or before it existed).')
  return {**test, **{k[len(prefix):]: v for k, v in test.items()
                     if prefix and k.startswith(prefix)}}
