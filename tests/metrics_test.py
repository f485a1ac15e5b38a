"""Tests for ama_jax.scoring.metrics: metrics on hand-made scores, thresholds."""
from absl.testing import absltest
from absl.testing import parameterized
import numpy as np

from ama_jax.scoring import metrics

# Three normals, two anomalies. Ranked by score (descending):
# 0.9 A, 0.6 N, 0.5 A, 0.2 N, 0.1 N.
LABELS = np.array([0, 0, 0, 1, 1])
SCORES = np.array([0.1, 0.2, 0.6, 0.5, 0.9])


class ComputeMetricsTest(parameterized.TestCase):

  def test_values_match_hand_computation(self):
    m = metrics.compute_metrics(LABELS, SCORES)
    # Anomaly-normal pairs ranked correctly: 0.5 beats 2 of 3, 0.9 all 3.
    self.assertAlmostEqual(m['auroc'], 5 / 6)
    # Anomalies positive: precision 1/1 and 2/3 at the two recall steps.
    self.assertAlmostEqual(m['auprc_anomaly'], 0.5 * 1 + 0.5 * 2 / 3)
    # Normals positive, ranked by -score (0.1 N, 0.2 N, 0.5 A, 0.6 N, 0.9 A):
    # precision 1, 1, 3/4 at the three recall steps.
    self.assertAlmostEqual(m['auprc_normal'], (1 + 1 + 0.75) / 3)
    # Both anomalies (TPR 1 >= 0.8) need threshold 0.5: 1 of 3 normals above.
    self.assertAlmostEqual(m['fpr80'], 1 / 3)
    self.assertAlmostEqual(m['fpr95'], 1 / 3)
    self.assertEqual(m['num_normal'], 3)
    self.assertEqual(m['num_anomaly'], 2)

  def test_fpr80_and_fpr95_differ_when_the_last_anomaly_is_low(self):
    labels = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.05, 0.1, 0.2, 0.4, 0.5])
    m = metrics.compute_metrics(labels, scores)
    # TPR 4/5 at threshold 0.3: normals 0.4, 0.5 above -> 2/4.
    self.assertAlmostEqual(m['fpr80'], 0.5)
    # TPR 1 only at threshold 0.05: every normal above.
    self.assertAlmostEqual(m['fpr95'], 1.0)

  def test_fpr_at_tpr_keeps_collinear_operating_points(self):
    # Three tie blocks of one anomaly and one normal: ROC points (1/3, 1/3),
    # (2/3, 2/3), (1, 1) are collinear; dropping the middle one (sklearn's
    # default drop_intermediate=True) would give FPR 1 at TPR 0.5.
    labels = np.array([1, 0, 1, 0, 1, 0])
    scores = np.array([3.0, 3.0, 2.0, 2.0, 1.0, 1.0])
    self.assertAlmostEqual(metrics.fpr_at_tpr(labels, scores, 0.5), 2 / 3)

  def test_perfect_separation(self):
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([-3.0, -1.0, 2.0, 5.0, 7.0])
    m = metrics.compute_metrics(labels, scores)
    for key in ('auroc', 'auprc_anomaly', 'auprc_normal'):
      self.assertAlmostEqual(m[key], 1.0)
    self.assertEqual(m['fpr80'], 0.0)
    self.assertEqual(m['fpr95'], 0.0)

  def test_auprc_orientations_swap_when_labels_and_scores_flip(self):
    rng = np.random.default_rng(0)
    labels = (rng.random(200) < 0.2).astype(np.int32)
    scores = rng.normal(size=200) + labels
    m = metrics.compute_metrics(labels, scores)
    flipped = metrics.compute_metrics(1 - labels, -scores)
    self.assertAlmostEqual(m['auroc'], flipped['auroc'])
    self.assertAlmostEqual(m['auprc_anomaly'], flipped['auprc_normal'])
    self.assertAlmostEqual(m['auprc_normal'], flipped['auprc_anomaly'])

  @parameterized.named_parameters(
      ('only_normals', [0, 0, 0], [0.1, 0.2, 0.3], 'both'),
      ('only_anomalies', [1, 1], [0.1, 0.2], 'both'),
      ('nan', [0, 1, 1], [0.1, np.nan, 0.3], 'non-finite'),
      ('inf', [0, 1, 1], [0.1, np.inf, 0.3], 'non-finite'),
      ('length', [0, 1, 1], [0.1, 0.2], 'differ in length'),
      ('label_values', [0, 2, 1], [0.1, 0.2, 0.3], '0 \\(normal\\) or 1'),
  )
  def test_bad_inputs_raise(self, labels, scores, message):
    with self.assertRaisesRegex(ValueError, message):
      metrics.compute_metrics(np.array(labels), np.array(scores))


class ThresholdAtFprTest(parameterized.TestCase):

  @parameterized.parameters(
      (0.05, 95.0, 5), (0.0, 100.0, 0), (0.29, 71.0, 29), (0.5, 50.0, 50)
  )
  def test_distinct_scores(self, fpr, threshold, num_above):
    scores = np.arange(1, 101, dtype=np.float64)[::-1]  # Order is irrelevant.
    t = metrics.threshold_at_fpr(scores, fpr)
    self.assertEqual(t, threshold)
    self.assertEqual(int(np.sum(scores > t)), num_above)

  def test_at_most_fpr_above_and_smallest_such_score(self):
    rng = np.random.default_rng(1)
    scores = rng.normal(size=137)
    for fpr in (0.01, 0.05, 0.1, 0.33):
      t = metrics.threshold_at_fpr(scores, fpr)
      self.assertIn(t, scores)
      self.assertLessEqual(np.mean(scores > t), fpr)
      # The next lower observed score would flag too many normals.
      lower = np.max(scores[scores < t])
      self.assertGreater(np.mean(scores > lower), fpr)

  def test_ties_never_exceed_the_rate(self):
    scores = np.array([1.0, 2.0, 2.0, 2.0, 3.0])
    self.assertEqual(metrics.threshold_at_fpr(scores, 0.2), 2.0)
    self.assertEqual(metrics.threshold_at_fpr(scores, 0.4), 2.0)
    self.assertEqual(metrics.threshold_at_fpr(scores, 0.8), 1.0)
    self.assertEqual(metrics.threshold_at_fpr(scores, 1.0), 1.0)

  @parameterized.named_parameters(
      ('empty', [], 0.05),
      ('nan', [0.1, np.nan], 0.05),
      ('fpr_above_one', [0.1, 0.2], 1.5),
      ('fpr_negative', [0.1, 0.2], -0.1),
  )
  def test_bad_inputs_raise(self, scores, fpr):
    with self.assertRaises(ValueError):
      metrics.threshold_at_fpr(np.array(scores), fpr)



class RunScoresTest(absltest.TestCase):

  def _results(self, val):
    test = {'auroc': 0.8, 'fpr80': 0.3, 'raw_auroc': 0.85, 'raw_fpr80': 0.2,
            'knn_auroc': 0.9, 'knn_fpr80': 0.1}
    return {'test': {'best': test, 'last': {}}, 'val': {'best': val}}

  def test_the_score_with_the_highest_validation_auroc(self):
    results = self._results({'auroc': 0.7, 'raw_auroc': 0.95,
                             'knn_auroc': 0.9})
    self.assertEqual(metrics.score_chosen_on_validation(results), 'raw')
    chosen = metrics.run_score_metrics(results, 'raw')
    self.assertEqual((chosen['auroc'], chosen['fpr80']), (0.85, 0.2))
    # Ties keep the calibrated score; a run without the kNN score: -1.
    results = self._results({'auroc': 0.9, 'raw_auroc': 0.9})
    self.assertEqual(metrics.val_aurocs(results)['knn'], -1.0)
    self.assertEqual(metrics.score_chosen_on_validation(results),
                     'calibrated')

  def test_validation_without_anomalies_keeps_the_calibrated_score(self):
    nan = float('nan')
    results = self._results({'auroc': nan, 'raw_auroc': nan,
                             'knn_auroc': nan})
    self.assertEqual(metrics.score_chosen_on_validation(results),
                     'calibrated')

  def test_unknown_or_missing_score_is_an_error(self):
    results = self._results({'auroc': 0.9})
    with self.assertRaisesRegex(ValueError, 'Unknown score'):
      metrics.run_score_metrics(results, 'test')
    del results['test']['best']['knn_auroc']
    with self.assertRaisesRegex(ValueError, 'no knn score'):
      metrics.run_score_metrics(results, 'knn')

if __name__ == '__main__':
  absltest.main()
