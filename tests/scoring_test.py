"""Tests of R(x), its calibration and batch-composition independence."""
from absl.testing import absltest
import jax
import numpy as np

from ama_jax.models import nets
from ama_jax.scoring import scoring
from ama_jax.training import train_state
from configs import default

_SHAPE = (28, 28, 1)


class ScoringTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    config = default.get_config('runlocal')
    state = jax.device_get(train_state.create_train_state(
        jax.random.key(0), config, _SHAPE))
    cls.ae, cls.critic = nets.create_models(config.model, _SHAPE)
    cls.state = state
    cls.images = np.random.default_rng(0).uniform(
        -1, 1, (23, *_SHAPE)).astype(np.float32)

  def _scorer(self, batch_size):
    return scoring.scorer_from_state(self.state, self.ae, self.critic,
                                     batch_size=batch_size)

  def test_image_gets_the_same_score_alone_and_in_any_batch(self):
    scorer = self._scorer(batch_size=8)
    together = scorer(self.images)
    self.assertEqual(together.shape, (23,))  # Ragged last batch: all scored.
    alone = np.concatenate([scorer(self.images[i:i + 1]) for i in range(23)])
    np.testing.assert_array_equal(alone, together)
    reversed_ = scorer(self.images[::-1])[::-1]
    np.testing.assert_array_equal(reversed_, together)
    # Mixed with other images: same score.
    mixed = scorer(np.concatenate([self.images[5:6], -self.images]))[0]
    self.assertEqual(mixed, together[5])

  def test_scores_match_the_formula(self):
    scorer = self._scorer(batch_size=16)
    r = scorer(self.images[:4])
    ae_vars = {'params': self.state.ae.params,
               'batch_stats': self.state.ae.batch_stats}
    critic_vars = {'params': self.state.critic.params,
                   'batch_stats': self.state.critic.batch_stats}
    x = self.images[:4]
    x_rec, _ = self.ae.apply(ae_vars, x, train=False)
    _, f_real = self.critic.apply(critic_vars, x, x, train=False)
    _, f_fake = self.critic.apply(critic_vars, x, x_rec, train=False)
    expected = np.abs(np.asarray(f_real) - np.asarray(f_fake)).sum(-1)
    np.testing.assert_allclose(r, expected, rtol=1e-5)

  def test_calibration_and_threshold(self):
    rng = np.random.default_rng(1)
    r_train = rng.normal(10.0, 2.0, 5000)
    r_val = rng.normal(10.0, 2.0, 2000)
    cal = scoring.calibrate(r_train, r_val, threshold_fpr=0.05)
    self.assertAlmostEqual(cal.mu, 10.0, delta=0.1)
    self.assertAlmostEqual(cal.sigma, 2.0, delta=0.1)
    # Two-sided: both tails are anomalous, and ~5% of normals exceed it.
    s = scoring.calibrated_scores(r_val, cal.mu, cal.sigma)
    self.assertAlmostEqual(np.mean(s > cal.threshold), 0.05, delta=0.01)
    low, high = scoring.calibrated_scores([4.0, 16.0], cal.mu, cal.sigma)
    self.assertGreater(low, cal.threshold)
    self.assertGreater(high, cal.threshold)
    # Far-out images do not tie (A(x) would underflow to 0 for both).
    far = scoring.calibrated_scores([1e3, 2e3], cal.mu, cal.sigma)
    self.assertLess(far[0], far[1])

  def test_evaluate_reports_calibrated_and_raw_metrics(self):
    labels = np.array([0] * 50 + [1] * 50)
    r = np.concatenate([np.linspace(9, 11, 50), np.linspace(0, 3, 50)])
    cal = scoring.Calibration(mu=10.0, sigma=1.0, threshold=2.0,
                              threshold_fpr=0.05)
    m = scoring.evaluate(r, labels, cal)
    self.assertEqual(m['auroc'], 1.0)  # Low R is far from mu: anomalous.
    self.assertEqual(m['raw_auroc'], 0.0)  # Raw R inverts here (Fig. 4).

  def test_features_come_from_the_same_pass_as_r(self):
    scorer = self._scorer(batch_size=8)
    r, f = scorer.with_features(self.images)  # 23 rows: ragged last batch.
    np.testing.assert_array_equal(r, scorer(self.images))
    ae_vars, critic_vars = train_state.scoring_variables(self.state)
    r_ref, f_ref = scoring.scores_and_features(
        self.ae, self.critic, ae_vars, critic_vars, self.images)
    self.assertEqual(f.shape, f_ref.shape)
    self.assertEqual(f.shape[0], 23)
    np.testing.assert_allclose(f, f_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r, r_ref, rtol=1e-5)

  def test_knn_distances_match_brute_force(self):
    rng = np.random.default_rng(2)
    bank = rng.normal(size=(40, 6)).astype(np.float32)
    queries = rng.normal(size=(11, 6)).astype(np.float32)
    dist = np.linalg.norm(queries[:, None] - bank[None], axis=-1)
    for k in (1, 3, 40):
      got = scoring.knn_distances(queries, bank, k, chunk=4)  # Padded.
      np.testing.assert_allclose(got, np.sort(dist, axis=1)[:, k - 1],
                                 rtol=1e-4, atol=1e-4)
    # A query equal to a bank row is at distance 0 from it.
    self.assertAlmostEqual(
        float(scoring.knn_distances(bank[:1], bank, 1)[0]), 0.0, places=3)
    with self.assertRaisesRegex(ValueError, r'eval\.knn_k=41: must be '
                                r'between 1 and .* \(40\)'):
      scoring.knn_distances(queries, bank, 41)

  def test_evaluate_adds_knn_metrics_when_given(self):
    labels = np.array([0] * 50 + [1] * 50)
    r = np.linspace(0, 1, 100)
    cal = scoring.Calibration(mu=0.5, sigma=1.0, threshold=2.0,
                              threshold_fpr=0.05)
    self.assertNotIn('knn_auroc', scoring.evaluate(r, labels, cal))
    m = scoring.evaluate(r, labels, cal, knn=-r)
    self.assertEqual(m['raw_auroc'], 1.0)
    self.assertEqual(m['knn_auroc'], 0.0)
    self.assertIn('knn_fpr80', m)
    self.assertNotIn('knn_num_normal', m)


class CalibrationDictTest(absltest.TestCase):

  def test_from_dict_reads_what_to_dict_wrote_among_other_keys(self):
    cal = scoring.Calibration(mu=1.5, sigma=0.25, threshold=3.0,
                              threshold_fpr=0.05, score='one_sided')
    meta = {'step': 8, 'val_auroc': 0.9, **cal.to_dict()}
    self.assertEqual(scoring.Calibration.from_dict(meta), cal)
    del meta['score']  # Older metas: the field's default.
    self.assertEqual(scoring.Calibration.from_dict(meta).score, 'two_sided')

  def test_from_dict_without_a_calibration_is_none(self):
    self.assertIsNone(scoring.Calibration.from_dict({}))
    self.assertIsNone(scoring.Calibration.from_dict(
        {'mu': 1.0, 'sigma': None, 'threshold': 2.0, 'threshold_fpr': 0.05}))


class KnnBankTest(absltest.TestCase):

  def test_small_sets_keep_every_row(self):
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    np.testing.assert_array_equal(scoring.knn_bank(x, 50), np.arange(50))
    np.testing.assert_array_equal(scoring.knn_bank(x, None), np.arange(50))

  def test_coreset_is_seeded_distinct_and_covers_outliers(self):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((400, 16)).astype(np.float32)
    x[7] += 50.0  # A far-out row: k-center keeps it, a subsample may not.
    rows = scoring.knn_bank(x, 40, seed=3)
    self.assertLen(set(rows.tolist()), 40)
    self.assertTrue(np.all(np.diff(rows) > 0))
    self.assertIn(7, rows)
    np.testing.assert_array_equal(rows, scoring.knn_bank(x, 40, seed=3))
    # The far-out row is covered exactly; the rest within the bulk's scale.
    bank_d = scoring.knn_distances(x, x[rows], 1)
    self.assertEqual(bank_d[7], 0.0)
    self.assertLess(bank_d.max(), 10.0)


if __name__ == '__main__':
  absltest.main()
