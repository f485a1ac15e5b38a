"""The end of a run: calibration, test metrics, figures and results.json.

`calibrate` fits mu, sigma of R on training normals and the decision
threshold on validation normals (also used at every validation);
`final_evaluation` scores the test split once, for the best-validation
state and for the last one (with `eval.knn_k`, also the feature kNN
score); `figures` draws the paper's Figs. 3, 4-5 and 10 and the ROC curve;
`summary` prints what `main` shows at the end.
"""
import functools
import json
import os
import pathlib
from typing import Any, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from ama_jax.reporting import figures
from ama_jax.reporting import json_safe
from ama_jax.reporting import metric_writers
from ama_jax.scoring import metrics
from ama_jax.scoring import scoring
from ama_jax.scoring import surrogates
from ama_jax.training import step_draws
from ama_jax.training import train_state


def calibrate(scorer, data, config: ml_collections.ConfigDict, *,
              max_train: Optional[int] = None, features: bool = False
              ) -> tuple[scoring.Calibration, np.ndarray, np.ndarray,
                         Optional[tuple[np.ndarray, np.ndarray]]]:
  """mu, sigma over training normals; threshold on validation normals.

  The score is `eval.score`; 'auto' takes the one with the higher
  validation AUROC (`scoring.choose_score`). `max_train` caps the training
  normals with a fixed subsample (per-epoch selection; the final
  calibration uses all of them).

  Returns:
    (calibration, R of the training normals used, R of the validation split,
    None or, with `features`, the features f(x, G(E(x))) of both, from the
    same pass).
  """
  normal_train = data.train.images[data.train.labels == 0]
  if max_train is not None and len(normal_train) > max_train:
    rows = np.random.default_rng(config.seed).choice(
        len(normal_train), max_train, replace=False)
    normal_train = normal_train[np.sort(rows)]
  feats = None
  if features:
    (r_train, f_train), (r_val, f_val) = (
        scorer.with_features(normal_train),
        scorer.with_features(data.val.images))
    feats = (f_train, f_val)
  else:
    r_train, r_val = scorer(normal_train), scorer(data.val.images)
  score = config.eval.score
  if score == 'auto':
    mu, sigma = scoring.fit_gaussian(r_train)
    score = scoring.choose_score(r_val, data.val.labels, mu, sigma)
  calibration = scoring.calibrate(r_train, r_val[data.val.labels == 0],
                                  config.eval.threshold_fpr, score)
  return calibration, r_train, r_val, feats


# results.json's state names -> checkpoint kinds (`checkpoint_files`).
CHECKPOINTS = {'best': 'best', 'last': 'latest'}
# The scores a detector can use (`ama_jax.tools.score`, the export).
DETECTOR_SCORES = ('calibrated', 'knn')


def _knn_scores(config, data, f_train: np.ndarray, f_val: np.ndarray,
                f_test: np.ndarray, f_surrogate: np.ndarray):
  """Feature kNN distances of validation, test and the surrogate anomalies
  against the memory bank (`scoring.knn_bank`), the threshold on the
  validation normals, and (bank, validation normals' features): what is
  stored beside the checkpoint for `ama_jax.tools.score` and the export:
  (bank, validation normals' features, whitening)."""
  rows, space = scoring.memory_bank(
      f_train, config.eval.get('knn_bank_size'),
      config.eval.get('knn_shrinkage'), config.seed)
  bank = f_train[rows]
  # One index: the bank goes to the device once.
  knn = scoring.KnnIndex(bank, config.eval.knn_k, whitening=space)(
      np.concatenate([f_val, f_test, f_surrogate]))
  knn_val, knn_test, knn_surrogate = np.split(
      knn, [len(f_val), len(f_val) + len(f_test)])
  val_normal = data.val.labels == 0
  threshold = (float(metrics.threshold_at_fpr(
      knn_val[val_normal], float(config.eval.threshold_fpr)))
               if val_normal.any() else float('nan'))
  logging.info('Feature kNN memory bank: %d of %d training normals.',
               len(bank), len(f_train))
  return (knn_val, knn_test, threshold, (bank, f_val[val_normal], space),
          knn_surrogate)


def final_evaluation(config, workdir: pathlib.Path, data, state, best,
                     eval_ae, eval_critic, devices, writer, step: int,
                     last_meta: Optional[dict] = None) -> dict[str, Any]:
  """Test metrics for the best-validation state and for the last state,
  and the detector the run chose (`choose`).

  Args:
    best: (state, meta) of the best-validation checkpoint, or None.
    last_meta: the meta of the last state's checkpoint (its memory bank is
      stored for it), or None.
    Others: as the training loop holds them.

  Returns:
    The results dict (without the run's timing).
  """
  results = {'config': json_safe.config_to_dict(config),
             'seed': config.seed, 'counts': data.counts, 'test': {},
             'model_selection': scoring.model_selection(data.val.labels)}
  candidates = [('last', state, last_meta)]
  if best is not None:
    candidates.insert(0, ('best', best[0], best[1]))
    results['best_step'] = best[1]['step']
    results['best_val_auroc'] = best[1]['val_auroc']
  done = {}  # step -> (calibration, val, test metrics, kNN threshold): the
  # last state is often the best one; it is scored once.
  for name, st, meta in candidates:
    at = int(jax.device_get(st.step))
    if at not in done:
      scorer = scoring.scorer_from_state(st, eval_ae, eval_critic,
                                         config.eval.batch_size, devices)
      k = config.eval.knn_k
      calibration, r_train, r_val, feats = calibrate(scorer, data, config,
                                                     features=k > 0)
      knn_val = knn_test = knn_threshold = reference = surrogate = None
      if feats is not None:  # The feature kNN score.
        f_train, f_val = feats
        r_test, f_test = scorer.with_features(data.test.images)
        val_normal = data.val.labels == 0
        # Surrogate anomalies for the label-free rule (`pick`).
        x_sur, names = surrogates.stacked(
            data.val.images[val_normal], config.seed,
            surrogates.held_out(config.sampling))
        r_sur, f_sur = (scorer.with_features(x_sur) if len(x_sur)
                        else (r_val[:0], f_val[:0]))
        knn_val, knn_test, knn_threshold, reference, knn_sur = _knn_scores(
            config, data, f_train, f_val, f_test, f_sur)
        del feats, f_train, f_test  # [training normals, features]: freed.
        if len(x_sur):
          surrogate = {
              'calibrated': surrogates.aurocs(
                  calibration.scores(r_val[val_normal]),
                  calibration.scores(r_sur), names),
              'knn': surrogates.aurocs(knn_val[val_normal], knn_sur, names)}
      else:
        r_test = scorer(data.test.images)
      done[at] = (calibration,
                  scoring.evaluate(r_val, data.val.labels, calibration,
                                   knn_val),
                  scoring.evaluate(r_test, data.test.labels, calibration,
                                   knn_test), knn_threshold, reference,
                  surrogate)
      if name == candidates[0][0] and config.log.figures and (
          jax.process_index() == 0):
        draw(workdir, data, st, eval_ae, calibration, r_train[:10000],
             r_test, config)
    (calibration, val_metrics, test_metrics, knn_threshold, reference,
     surrogate) = done[at]
    if surrogate is not None:
      results.setdefault('surrogate', {})[name] = surrogate
    if reference is not None and meta is not None and (
        jax.process_index() == 0):
      # pylint: disable-next=g-import-not-at-top
      from ama_jax.scoring import knn_reference
      knn_reference.write_knn_reference(workdir, CHECKPOINTS[name], meta,
                                        *reference)
    results['test'][name] = test_metrics
    results.setdefault('val', {})[name] = val_metrics
    results.setdefault('calibration', {})[name] = calibration.to_dict()
    results.setdefault('steps_of', {})[name] = at
    results.setdefault('thresholds', {})[name] = {
        'calibrated': calibration.threshold,
        **({'knn': knn_threshold} if knn_threshold is not None else {})}
    metric_writers.write_scalars(writer, step, f'test_{name}', test_metrics)
    logging.info('test (%s state, step %d, %s score): AUROC %.4f AUPRC %.4f '
                 'FPR80 %.4f (raw R AUROC %.4f)%s', name, at,
                 calibration.score, test_metrics['auroc'],
                 test_metrics['auprc_anomaly'], test_metrics['fpr80'],
                 test_metrics['raw_auroc'],
                 '' if 'knn_auroc' not in test_metrics else
                 f' (feature kNN AUROC {test_metrics["knn_auroc"]:.4f} FPR80 '
                 f'{test_metrics["knn_fpr80"]:.4f}; validation '
                 f'{val_metrics["knn_auroc"]:.4f})')
  return choose(results)


def choose(results: dict[str, Any]) -> dict[str, Any]:
  """Sets results['selection'] (what each rule picks) and ['chosen'] (the
  config's `eval.selection`) from the stored metrics; returns `results`."""
  if results['model_selection']['criterion'] == scoring.SELECTION_AUROC:
    # (A validation split without anomalies has no AUROC to choose by.)
    results['score_chosen_on_validation'] = chosen_score(results)
  results['selection'] = {rule: detector(results, rule, *pick(results, rule))
                          for rule in scoring.SELECTIONS
                          if pick(results, rule) is not None}
  rule = results['config']['eval'].get('selection', scoring.VAL_AUROC)
  if rule not in results['selection']:
    rule = scoring.LABEL_FREE  # No validation anomalies: no AUROC.
  results['chosen'] = {'rule': rule, **results['selection'][rule]}
  return results


def pick(results: dict[str, Any], rule: str) -> Optional[tuple[str, str]]:
  """(state, score) of a selection rule (`scoring.SELECTIONS`), or None
  when the run cannot apply it (no validation anomalies for 'val_auroc').

  'label_free': the last state and, by `eval.label_free_score`, the score
  with the higher mean surrogate AUROC there ('surrogate', the default:
  held-out normals against their transforms, `surrogates`; ties: kNN), or
  always 'knn' / 'calibrated' (the calibrated score when the run has no
  kNN score): nothing labelled is looked at. Runs stored before the field
  existed used 'knn'.
  'val_auroc': of the recorded states (the best-validation one, kept by
  the calibrated score during training, and the last) and the calibrated
  and kNN scores, the pair with the highest validation AUROC (ties: the
  calibrated score, then the best-validation state). With the calibrated
  score alone (the paper's) that is the best-validation state.
  """
  has_knn = 'knn_auroc' in results['test']['last']
  if rule == scoring.LABEL_FREE:
    if not has_knn:
      return 'last', 'calibrated'
    how = results['config']['eval'].get('label_free_score', 'knn')
    if how != scoring.SURROGATE:
      return 'last', how
    sur = (results.get('surrogate') or {}).get('last')
    if sur is None:  # No validation normals to transform.
      return 'last', 'knn'
    sampling = results['config'].get('sampling', {})
    better = (surrogates.held_out_mean(sur['calibrated'], sampling)
              > surrogates.held_out_mean(sur['knn'], sampling))
    return 'last', 'calibrated' if better else 'knn'
  if rule != scoring.VAL_AUROC:
    raise ValueError(f'Unknown selection {rule!r}; expected one of '
                     f'{scoring.SELECTIONS}.')
  if results['model_selection']['criterion'] != scoring.SELECTION_AUROC:
    return None
  scores = ('calibrated', 'knn') if has_knn else ('calibrated',)
  states = [s for s in ('best', 'last') if s in results['test']
            and s in (results.get('val') or {})]

  def val_auroc(pair: tuple[str, str]) -> tuple[float, bool, bool]:
    state, score = pair
    val = results['val'][state]
    return (val.get(f'{metrics.RUN_SCORES[score]}auroc', -1.0),
            score == 'calibrated', state == 'best')

  return max(((s, k) for s in states for k in scores), key=val_auroc)


def detector(results: dict[str, Any], rule: str, state: str,
             score: str) -> dict[str, Any]:
  """What a selection rule chose and its metrics: results.json['chosen']
  (with the rule) and ['selection'][rule]."""
  test = metrics.run_score_metrics(results, score, state)
  val = results['val'][state]
  val_auroc = val[f'{metrics.RUN_SCORES[score]}auroc']
  out = {'state': state, 'checkpoint': CHECKPOINTS[state],
         'step': results['steps_of'][state], 'score': score,
         'threshold': results['thresholds'][state][score],
         'val_auroc': val_auroc,
         **{k: test[k] for k in ('auroc', 'auprc_anomaly', 'auprc_normal',
                                 'fpr80')}}
  sur = (results.get('surrogate') or {}).get(state)
  if rule == scoring.LABEL_FREE and sur is not None:
    out['surrogate_auroc'] = {s: surrogates.held_out_mean(
        sur[s], results['config'].get('sampling', {})) for s in sur}
  if score == 'calibrated':
    out['calibration'] = results['calibration'][state]
  else:
    out['knn_k'] = results['config']['eval']['knn_k']
  return out


# How `ama_jax.tools.score` writes each run score (`--score`, CSV column).
SCORE_CLI = {'calibrated': '--score=calibrated (column score)',
             'raw': 'any --score (column r)',
             'knn': '--score=knn (column knn)'}


def chosen_score(results: dict[str, Any]) -> dict[str, Any]:
  """The run score (calibrated, raw R, feature kNN) with the highest
  validation AUROC at the selected state, with that AUROC and its test
  metrics there: a choice on validation only, as `reproduce --score=val`."""
  score = metrics.score_chosen_on_validation(results)
  test = metrics.run_score_metrics(results, score)
  return {'score': score, 'state': metrics.selected_state(results),
          'val_auroc': metrics.val_aurocs(results)[score],
          **{k: test[k] for k in ('auroc', 'auprc_anomaly', 'auprc_normal',
                                  'fpr80')}}


def shell_radii(config: ml_collections.ConfigDict) -> dict[str, float]:
  """The radii of atypical selection's shell (paper: sqrt(d) +- delta)."""
  if config.sampling.shell_radius != 'sqrt_d':
    return {}  # Measured every step: plotted from history.jsonl instead.
  d, delta = config.model.latent_dim, config.sampling.delta
  root = float(np.sqrt(d))
  if config.sampling.style == 'outward':
    return {'sqrt(d)': root, 'sqrt(d)+delta': root + delta}
  if config.sampling.style == 'inward':
    return {'sqrt(d)-delta': root - delta, 'sqrt(d)': root}
  return {}


def draw(workdir, data, state, eval_ae, calibration, r_train, r_test,
         config) -> None:
  """The paper's Fig. 3, 4-5 and 10 and the ROC curve for one state."""
  test = data.test
  for name, transform in (('raw_r', lambda r: r),
                          ('score', calibration.scores)):
    figures.score_histograms(
        str(workdir / f'hist_{name}.png'), train=transform(r_train),
        test_normal=transform(r_test[test.labels == 0]),
        test_anomaly=transform(r_test[test.labels == 1]),
        title=f'{name} (best-validation state)', xlabel=name)
  if len(set(test.labels.tolist())) == 2:  # No ROC without anomalies.
    figures.roc_curves(
        str(workdir / 'roc.png'), test.labels,
        {f'calibrated ({calibration.score})': calibration.scores(r_test),
         'raw R': r_test}, title='Test ROC')
  ae_vars, _ = train_state.scoring_variables(state)
  rows = np.concatenate([np.flatnonzero(test.labels == 0)[:8],
                         np.flatnonzero(test.labels == 1)[:8]])
  x = test.images[rows]
  x_rec, _ = jax.jit(lambda v, x: eval_ae.apply(v, x, train=False))(ae_vars, x)
  figures.reconstructions(str(workdir / 'reconstructions.png'), x,
                          np.asarray(x_rec), n=len(rows),
                          title='Test images (8 normal, 8 anomalous) and '
                          'reconstructions')
  if config.sampling.style != 'none':
    radius = None
    if config.sampling.shell_radius == 'measured':  # Over the 8 normals.
      z = eval_ae.apply(ae_vars, x[:8], train=False, method='encode')
      radius = np.quantile(np.linalg.norm(z, axis=-1),
                           config.sampling.radius_quantile)
    keys = jax.random.split(jax.random.key(config.seed), len(x))
    negatives = jax.jit(functools.partial(
        step_draws.synthetic_negatives, eval_ae, style=config.sampling.style,
        delta=config.sampling.delta,
        radial_direction=config.sampling.radial_direction,
        radius=radius, turns=config.sampling.get('turns', 'all')))(
            ae_vars, x, keys)
    figures.image_grid(str(workdir / 'negatives.png'), np.asarray(negatives),
                       n=len(x), title='Synthetic negatives '
                       f'({config.sampling.style})')


def summary(workdir: str) -> str:
  """A short human-readable summary of `<workdir>/results.json`."""
  results = json.loads((pathlib.Path(workdir) / 'results.json').read_text())
  data = results['config']['data']
  what = (f"{data['dataset']} -> {data['ood_dataset']} (OOD)"
          if data['protocol'] == 'ood' else
          f"{data['dataset']} one-class, normal {data['normal_classes']}")
  lines = [f"ama_jax: {what}, {results['epochs']} epochs, "
           f"{results['counts']['train']['total']} training images, "
           f"{results['wall_time_s']:.0f} s"]
  timing = results.get('timing_s')
  if timing:
    lines.append('time: ' + ', '.join(
        f'{k} {v:.0f} s' for k, v in timing.items())
                 + f" (training steps: {results['train_share']:.0%})")
  if 'best_step' in results:
    lines.append(f"best validation AUROC {results['best_val_auroc']:.4f} at "
                 f"step {results['best_step']}")
  selection = results.get('model_selection', {})
  if selection.get('criterion') == scoring.SELECTION_LAST:
    lines.append(f"model selection: {selection['reason']}")
  for name, m in results['test'].items():
    score = results.get('calibration', {}).get(name, {}).get('score',
                                                             'two_sided')
    lines.append(
        f"test ({name} state): AUROC {m['auroc']:.4f}  "
        f"AUPRC(anomaly+) {m['auprc_anomaly']:.4f}  "
        f"AUPRC(normal+) {m['auprc_normal']:.4f}  FPR80 {m['fpr80']:.4f}  "
        f"| raw R: AUROC {m['raw_auroc']:.4f}  [{score} score]"
        + (f"  | feature kNN: AUROC {m['knn_auroc']:.4f}  FPR80 "
           f"{m['knn_fpr80']:.4f}" if 'knn_auroc' in m else ''))
  chosen = results.get('score_chosen_on_validation')
  if chosen:
    lines.append(
        f"score chosen on validation: {chosen['score']} (validation AUROC "
        f"{chosen['val_auroc']:.4f}): test AUROC {chosen['auroc']:.4f}  "
        f"FPR80 {chosen['fpr80']:.4f}  [{chosen['state']} state; new images: "
        f"ama_jax.tools.score {SCORE_CLI[chosen['score']]}]")
  chosen = results.get('chosen')
  if chosen:
    lines.append(detector_line(chosen, results.get('selection', {}),
                               workdir))
  lines.append(f'results: {pathlib.Path(workdir) / "results.json"}')
  return '\n'.join(lines)


RULE_NAMES = {scoring.LABEL_FREE: 'label-free (no labelled anomalies)',
              scoring.VAL_AUROC: 'by validation AUROC'}


def detector_line(chosen: dict[str, Any], selection: dict[str, Any],
                  workdir: str) -> str:
  """The summary's lines on the detector the run chose."""
  score = {'knn': f"feature kNN (k={chosen.get('knn_k')})",
           'calibrated': 'calibrated'}[chosen['score']]
  line = (f"detector, chosen {RULE_NAMES[chosen['rule']]}: {score} score of "
          f"the {chosen['state']} state (step {chosen['step']}): test AUROC "
          f"{chosen['auroc']:.4f}  FPR80 {chosen['fpr80']:.4f}; threshold "
          f"{chosen['threshold']:.4g}")
  if 'surrogate_auroc' in chosen:  # How the label-free rule chose it.
    sur = chosen['surrogate_auroc']
    line += ('\n  (chosen by surrogate AUROC, validation normals against '
             f"their transforms: calibrated {sur['calibrated']:.4f}, "
             f"feature kNN {sur['knn']:.4f})")
  other = [r for r in selection if r != chosen['rule']]
  for rule in other:
    o = selection[rule]
    line += (f"\n  ({RULE_NAMES[rule]} it would be the {o['score']} score of "
             f"the {o['state']} state: test AUROC {o['auroc']:.4f})")
  return line + (f'\n  score new images with it: python -m ama_jax.tools.score '
                 f'--workdir={workdir} --input=IMAGES --output=scores.csv')


def write_json(path: pathlib.Path, obj: Any) -> None:
  """Atomic JSON write (a crash never leaves a partial file)."""
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(json_safe.to_json(obj, 'results'), indent=2))
  os.replace(tmp, path)
