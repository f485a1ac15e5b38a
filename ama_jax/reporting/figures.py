"""Figures for reports: score histograms, ROC curves and image grids.

Each public function draws one figure of the paper (score histograms of
Fig. 4-5, inputs over reconstructions of Fig. 10, synthetic negatives of
Fig. 3) plus ROC curves, writes it as one PNG and returns its path. A PNG is
written atomically: to `path + '.tmp.png'` first, then `os.replace`d, so a
reader never sees a half-written file and an interrupted run leaves no
partial figure behind.

Only matplotlib (Agg backend, so no display is needed), numpy and
`sklearn.metrics` are imported; nothing from the package, so any program can
use this module on host-side arrays.
"""
import contextlib
import math
import os
from typing import Any, Iterator, Mapping

import matplotlib

matplotlib.use('Agg')  # Headless: set before pyplot is imported.
# pylint: disable=g-import-not-at-top,wrong-import-position
from matplotlib import lines as mlines
from matplotlib import pyplot as plt
import numpy as np
from sklearn import metrics as sk_metrics
# pylint: enable=g-import-not-at-top,wrong-import-position

PathLike = str | os.PathLike
_DPI = 100
# Paper Fig. 4-5: blue train, green test normal, red test anomaly.
_HIST_COLORS = ('tab:blue', 'tab:green', 'tab:red')
_TPR_MARKERS = ((0.8, 'o'), (0.95, 's'))
_RECON_COLUMNS = 8  # Columns per row pair in `reconstructions`.
_CELL_INCHES = 0.9  # Display width of one image tile.


@contextlib.contextmanager
def _new_figure(
    nrows: int, ncols: int, figsize: tuple[float, float]
) -> Iterator[tuple[Any, np.ndarray]]:
  """Yields (figure, axes [nrows, ncols]) and always closes the figure."""
  fig, axes = plt.subplots(nrows, ncols, figsize=figsize, squeeze=False)
  try:
    yield fig, axes
  finally:
    # pyplot keeps every open figure alive; close it even when drawing fails.
    plt.close(fig)


def _save(fig: Any, path: PathLike) -> str:
  """Writes `fig` to `path` atomically and returns the path as a string."""
  path = os.fspath(path)
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  tmp_path = path + '.tmp.png'
  try:
    fig.savefig(tmp_path, format='png', dpi=_DPI, bbox_inches='tight')
    os.replace(tmp_path, path)
  finally:
    # Only left over when savefig or replace failed.
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
  return path


def _finite_1d(values: Any) -> np.ndarray:
  """Flattens `values` to float64 [M] and drops NaN and infinities."""
  values = np.asarray(values, dtype=np.float64).reshape(-1)
  return values[np.isfinite(values)]


def _shared_bin_edges(arrays: list[np.ndarray], bins: int) -> np.ndarray:
  """Returns bins + 1 edges spanning the pooled range of non-empty arrays."""
  pooled = np.concatenate(arrays)
  lo, hi = float(pooled.min()), float(pooled.max())
  if hi <= lo:
    # Every score equal (e.g. a constant array): widen the range so the bins
    # have positive width and the single bar is centred on the value.
    half = max(abs(lo) * 0.05, 0.5)
    lo, hi = lo - half, hi + half
  return np.linspace(lo, hi, bins + 1)


def score_histograms(
    path: PathLike,
    *,
    train: Any,
    test_normal: Any,
    test_anomaly: Any,
    title: str = '',
    xlabel: str = 'anomaly score',
    bins: int = 50,
) -> str:
  """Overlaid density histograms of train, test-normal and test-anomaly scores.

  All three share one set of bins over their pooled range, so their shapes
  are comparable. Empty arrays (after NaN/inf are dropped) are skipped; when
  all are empty the axes say so instead.

  Args:
    path: output PNG path; parent folders are created.
    train: [N_train] scores of training (normal) images, drawn blue.
    test_normal: [N_normal] scores of normal test images, drawn green.
    test_anomaly: [N_anomaly] scores of anomalous test images, drawn red.
    title: figure title.
    xlabel: x-axis label, e.g. the score's name.
    bins: number of shared bins.

  Returns:
    `path` as a string.
  """
  if bins < 1:
    raise ValueError(f'bins must be >= 1, got {bins}.')
  named = [
      ('train', _finite_1d(train)),
      ('test normal', _finite_1d(test_normal)),
      ('test anomaly', _finite_1d(test_anomaly)),
  ]
  present = [values for _, values in named if values.size]
  with _new_figure(1, 1, figsize=(6.4, 4.0)) as (fig, axes):
    ax = axes[0, 0]
    if present:
      edges = _shared_bin_edges(present, bins)
      for (name, values), color in zip(named, _HIST_COLORS):
        if not values.size:
          continue
        ax.hist(
            values,
            bins=edges,
            density=True,
            alpha=0.5,
            color=color,
            label=f'{name} (n={values.size})',
        )
      ax.legend()
    else:
      ax.text(0.5, 0.5, 'no scores', ha='center', va='center',
              transform=ax.transAxes)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel('density')
    return _save(fig, path)


def roc_curves(
    path: PathLike,
    labels: Any,
    scores: Mapping[str, Any],
    title: str = 'ROC',
) -> str:
  """ROC curves of several scores on the same labels, AUROC in the legend.

  Anomalies (label 1) are the positive class and higher scores are more
  anomalous. Each curve is marked at the first operating point whose TPR
  reaches 0.8 and 0.95 (the points behind FPR80/FPR95); the chance diagonal
  is drawn for reference.

  Args:
    path: output PNG path; parent folders are created.
    labels: [N] 0 normal / 1 anomaly; both classes must be present.
    scores: score name -> [N] scores, one curve each, in mapping order.
    title: figure title.

  Returns:
    `path` as a string.
  """
  labels = np.asarray(labels).reshape(-1)
  if not scores:
    raise ValueError('scores must hold at least one named score array.')
  if set(np.unique(labels).tolist()) != {0, 1}:
    raise ValueError('labels must contain both 0 (normal) and 1 (anomaly).')
  with _new_figure(1, 1, figsize=(5.0, 5.0)) as (fig, axes):
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], color='grey', linestyle='--', linewidth=1,
            label='chance')
    for name, values in scores.items():
      values = np.asarray(values, dtype=np.float64).reshape(-1)
      if values.shape != labels.shape:
        raise ValueError(
            f'scores[{name!r}] has {values.size} values for '
            f'{labels.size} labels.'
        )
      # Every distinct score is an operating point, as for FPR80/FPR95.
      fpr, tpr, _ = sk_metrics.roc_curve(labels, values,
                                         drop_intermediate=False)
      auroc = sk_metrics.roc_auc_score(labels, values)
      (curve,) = ax.plot(fpr, tpr, label=f'{name} (AUROC {auroc:.3f})')
      for target, marker in _TPR_MARKERS:
        # `tpr` ends at 1.0, so argmax finds the first point at the target.
        i = int(np.argmax(tpr >= target))
        ax.plot(fpr[i], tpr[i], marker=marker, color=curve.get_color(),
                markeredgecolor='black', linestyle='none')
    # One legend entry per marker shape rather than one per curve and target.
    handles, _ = ax.get_legend_handles_labels()
    for target, marker in _TPR_MARKERS:
      handles.append(mlines.Line2D(
          [], [], marker=marker, color='white', markeredgecolor='black',
          markerfacecolor='lightgrey', label=f'TPR {target:.2f}'))
    ax.legend(handles=handles, loc='lower right', fontsize='small')
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect('equal')
    ax.set_xlabel('false positive rate (normals flagged)')
    ax.set_ylabel('true positive rate (anomalies found)')
    ax.set_title(title)
    return _save(fig, path)


def _to_display(images: Any, name: str) -> np.ndarray:
  """Maps images in [-1, 1] to float [N, H, W, C] in [0, 1] for imshow.

  Args:
    images: [N, H, W, C] with C 1 (grey) or 3 (RGB), or [N, H, W] grey.
    name: argument name for error messages.

  Returns:
    [N, H, W, C] float64 in [0, 1]; NaN shows black and values are clipped.
  """
  x = np.asarray(images, dtype=np.float64)
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(
        f'{name} must be [N, H, W, C] with C 1 or 3, got shape {x.shape}.'
    )
  if not x.shape[0]:
    raise ValueError(f'{name} is empty: nothing to draw.')
  x = np.nan_to_num(x, nan=-1.0, posinf=1.0, neginf=-1.0)
  return np.clip((x + 1.0) / 2.0, 0.0, 1.0)


def _tile(x: np.ndarray, ncols: int, pad: int = 1) -> np.ndarray:
  """Tiles [N, H, W, C] into one [rows*(H+pad)+pad, ncols*(W+pad)+pad, C].

  Empty cells and the `pad`-pixel gaps are white.
  """
  n, h, w, c = x.shape
  nrows = math.ceil(n / ncols)
  mosaic = np.ones(
      (nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), dtype=x.dtype
  )
  for i in range(n):
    row, col = divmod(i, ncols)
    top, left = pad + row * (h + pad), pad + col * (w + pad)
    mosaic[top:top + h, left:left + w] = x[i]
  return mosaic


def _show(ax: Any, mosaic: np.ndarray) -> None:
  """Draws a [H, W, C] mosaic in [0, 1] on `ax` without ticks."""
  if mosaic.shape[-1] == 1:
    # Fixed vmin/vmax: grey levels keep their meaning instead of stretching.
    ax.imshow(mosaic[..., 0], cmap='gray', vmin=0.0, vmax=1.0,
              interpolation='nearest')
  else:
    ax.imshow(mosaic, interpolation='nearest')
  ax.set_xticks([])
  ax.set_yticks([])
  # No frame: it would box the empty cells of a partly filled last row.
  for spine in ax.spines.values():
    spine.set_visible(False)


def reconstructions(
    path: PathLike,
    images: Any,
    recons: Any,
    *,
    n: int = 16,
    title: str = '',
) -> str:
  """Inputs in one row with their reconstructions below (paper Fig. 10).

  The first `min(n, N)` pairs are drawn, 8 per row pair: row pair k shows
  inputs 8k..8k+7 above their reconstructions.

  Args:
    path: output PNG path; parent folders are created.
    images: [N, H, W, C] inputs in [-1, 1], C 1 (grey) or 3 (RGB).
    recons: reconstructions, same shape as `images`.
    n: maximum number of pairs drawn.
    title: figure title.

  Returns:
    `path` as a string.
  """
  if n < 1:
    raise ValueError(f'n must be >= 1, got {n}.')
  x = _to_display(images, 'images')
  x_rec = _to_display(recons, 'recons')
  if x.shape != x_rec.shape:
    raise ValueError(
        f'images {x.shape} and recons {x_rec.shape} differ in shape.'
    )
  count = min(n, x.shape[0])
  ncols = min(count, _RECON_COLUMNS)
  pairs = math.ceil(count / _RECON_COLUMNS)
  _, h, w, _ = x.shape
  figsize = (ncols * _CELL_INCHES, 2 * pairs * _CELL_INCHES * h / w + 0.4)
  with _new_figure(2 * pairs, 1, figsize=figsize) as (fig, axes):
    for p in range(pairs):
      chunk = slice(p * _RECON_COLUMNS, min((p + 1) * _RECON_COLUMNS, count))
      for offset, (batch, label) in enumerate(
          ((x, 'input'), (x_rec, 'reconstruction'))):
        ax = axes[2 * p + offset, 0]
        _show(ax, _tile(batch[chunk], ncols))
        ax.set_ylabel(label, fontsize='small')
    fig.suptitle(title)
    return _save(fig, path)


def image_grid(
    path: PathLike,
    images: Any,
    *,
    n: int = 32,
    ncols: int = 8,
    title: str = '',
) -> str:
  """A grid of the first `min(n, N)` images, e.g. synthetic negatives (Fig. 3).

  Args:
    path: output PNG path; parent folders are created.
    images: [N, H, W, C] in [-1, 1], C 1 (grey) or 3 (RGB).
    n: maximum number of images drawn.
    ncols: images per grid row.
    title: figure title.

  Returns:
    `path` as a string.
  """
  if n < 1 or ncols < 1:
    raise ValueError(f'n and ncols must be >= 1, got {n} and {ncols}.')
  x = _to_display(images, 'images')[:n]
  ncols = min(ncols, x.shape[0])
  nrows = math.ceil(x.shape[0] / ncols)
  _, h, w, _ = x.shape
  figsize = (ncols * _CELL_INCHES, nrows * _CELL_INCHES * h / w + 0.4)
  with _new_figure(1, 1, figsize=figsize) as (fig, axes):
    _show(axes[0, 0], _tile(x, ncols))
    axes[0, 0].set_title(title)
    return _save(fig, path)


# Panels of `training_curves`: (title, [(record key, legend label)], log y).
TRAINING_PANELS = (
    ('critic losses', [('critic_loss', 'total'), ('wasserstein', 'W (eq. 1)'),
                       ('critic_inter', 'interpolation'),
                       ('gradient_penalty', 'GP')], False),
    ('encoder/generator losses', [('ae_loss', 'total'),
                                  ('ae_adversarial', 'adversarial'),
                                  ('ae_inter', 'interpolation'),
                                  ('latent_norm', '||E(x)||')], False),
    ('gradient norms', [('critic_grad_norm', 'critic'),
                        ('ae_grad_norm', 'E+G')], True),
    ('critic gap D(x,x) - D(x,x_rec)', [
        ('wasserstein', 'normals'),
        ('diag/critic_gap_negative', 'negatives')], False),
    ('critic on interpolation pairs', [
        ('diag/critic_inter_pair', 'D(x_k, x_inter)'),
        ('diag/critic_inter_anchor_real', 'D(x_k, x_k)')], False),
    ('pixel L1 reconstruction error', [
        ('diag/l1_rec_normal', 'normals'),
        ('diag/l1_rec_negative', 'negatives')], False),
    ('latent norms', [('diag/z_norm_normal_q05', '||E(x)|| normals q05'),
                      ('diag/z_norm_normal_q50', 'q50'),
                      ('diag/z_norm_normal_q95', 'q95'),
                      ('diag/z_neg_norm', '||z_neg||'),
                      ('diag/z_norm_negative_reencoded',
                       '||E(negative)||')], False),
)


def training_curves(
    path: PathLike,
    records: list[Mapping[str, Any]],
    *,
    shell: Mapping[str, float] | None = None,
    title: str = '',
) -> str:
  """Per-step training diagnostics and validation AUROC, one panel each.

  Args:
    path: output PNG path.
    records: `metric_writers.History` records: {'kind': 'train' | 'val', 'step', ...}.
      Train records hold the step's metrics (`TRAINING_PANELS` keys; missing
      keys are skipped), val records 'auroc' and 'raw_auroc'.
    shell: horizontal lines for the latent-norm panel, e.g. the radii of
      atypical selection's shell {'sqrt(d)': 8.0, 'sqrt(d)+delta': 8.5}.
    title: figure title.

  Returns:
    `path` as a string.
  """
  train = [r for r in records if r.get('kind') == 'train']
  val = [r for r in records if r.get('kind') == 'val']
  panels = [p for p in TRAINING_PANELS
            if any(k in r for r in train for k, _ in p[1])]
  n = len(panels) + 1
  ncols = 2
  nrows = math.ceil(n / ncols)
  with _new_figure(nrows, ncols, figsize=(12, 2.8 * nrows)) as (fig, axes):
    for ax in axes.reshape(-1)[n:]:
      ax.axis('off')
    for ax, (name, keys, log) in zip(axes.reshape(-1), panels):
      for key, label in keys:
        pts = [(r['step'], r[key]) for r in train
               if key in r and np.isfinite(r[key])]
        if pts:
          steps, values = zip(*pts)
          ax.plot(steps, values, label=label, lw=0.8)
      if name == 'latent norms' and shell:
        for label, radius in shell.items():
          ax.axhline(radius, ls='--', lw=0.8, color='k', alpha=0.5)
          ax.annotate(label, (0, radius), fontsize='x-small',
                      xycoords=('axes fraction', 'data'))
      if log:
        ax.set_yscale('log')
      ax.set_title(name, fontsize='small')
      ax.legend(fontsize='x-small')
      ax.set_xlabel('step', fontsize='x-small')
    ax = axes.reshape(-1)[len(panels)]
    for key, label in (('auroc', 'calibrated score'), ('raw_auroc', 'raw R')):
      pts = [(r['step'], r[key]) for r in val if key in r]
      if pts:
        steps, values = zip(*pts)
        ax.plot(steps, values, marker='o', label=label)
    ax.set_title('validation AUROC', fontsize='small')
    ax.set_xlabel('step', fontsize='x-small')
    if val:
      ax.legend(fontsize='x-small')
    fig.suptitle(title)
    return _save(fig, path)
