"""Tests of the feature kNN score's whitening (eval.knn_shrinkage)."""
import pathlib
import tempfile

from absl.testing import absltest
import jax
import numpy as np

from ama_jax.models import nets
from ama_jax.scoring import export
from ama_jax.scoring import knn_reference
from ama_jax.scoring import scoring
from ama_jax.scoring import whitening
from ama_jax.training import train_state
from configs import default


def _features(n=400, seed=0):
  """Rows with a spread of 10 along the first axis and 0.1 along the
  second, rotated: what a plain Euclidean distance is dominated by."""
  rng = np.random.default_rng(seed)
  base = rng.standard_normal((n, 2)) * np.array([10.0, 0.1])
  angle = 0.3
  rotation = np.array([[np.cos(angle), -np.sin(angle)],
                       [np.sin(angle), np.cos(angle)]])
  return (base @ rotation.T + np.array([3.0, -1.0])).astype(np.float32)


class WhiteningTest(absltest.TestCase):

  def test_none_keeps_the_euclidean_distance(self):
    self.assertIsNone(whitening.fit(_features(), None))
    bank, queries = _features(), _features(20, seed=1)
    np.testing.assert_array_equal(
        scoring.KnnIndex(bank, 1, whitening=None)(queries),
        scoring.knn_distances(queries, bank, 1))

  def test_no_shrinkage_whitens_the_training_features(self):
    f = _features()
    w = whitening.fit(f, 0.0)(f)
    np.testing.assert_allclose(w.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(np.cov(w, rowvar=False), np.eye(2), atol=1e-3)

  def test_a_small_variance_direction_counts(self):
    f = _features()
    space = whitening.fit(f, 0.1)
    # Query 0: 3 spreads out along the large direction (30); query 1: 10
    # spreads out along the small one (1.0), nearer in Euclidean terms.
    rotation = np.array([[np.cos(0.3), -np.sin(0.3)],
                         [np.sin(0.3), np.cos(0.3)]])
    along = (np.array([[30.0, 0.0], [0.0, 1.0]]) @ rotation.T
             + np.array([3.0, -1.0])).astype(np.float32)
    plain = scoring.KnnIndex(f, 1)(along)
    whitened = scoring.KnnIndex(f, 1, whitening=space)(along)
    self.assertGreater(plain[0], plain[1])
    self.assertGreater(whitened[1], whitened[0])

  def test_large_shrinkage_ranks_as_euclidean(self):
    f, q = _features(), _features(50, seed=2) * 1.5
    space = whitening.fit(f, 1e6)
    np.testing.assert_array_equal(
        np.argsort(scoring.KnnIndex(f, 1, whitening=space)(q)),
        np.argsort(scoring.knn_distances(q, f, 1)))

  def test_index_equals_the_distance_between_whitened_rows(self):
    f, q = _features(), _features(30, seed=3)
    space = whitening.fit(f, 0.1)
    np.testing.assert_allclose(
        scoring.KnnIndex(f, 3, whitening=space)(q),
        scoring.knn_distances(space(q), space(f), 3), rtol=1e-5)

  def test_traced_equals_host(self):
    f = _features()
    space = whitening.fit(f, 0.1)
    np.testing.assert_allclose(np.asarray(jax.jit(space.traced)(f)),
                               space(f), rtol=1e-5, atol=1e-5)

  def test_deterministic(self):
    f = _features()
    a, b = whitening.fit(f, 0.1), whitening.fit(f.copy(), 0.1)
    np.testing.assert_array_equal(a.matrix, b.matrix)
    np.testing.assert_array_equal(a.mean, b.mean)

  def test_constant_features(self):
    f = np.ones((10, 3), np.float32)
    space = whitening.fit(f, 0.1)
    self.assertTrue(np.all(np.isfinite(space.matrix)))
    np.testing.assert_allclose(space(f), 0.0)

  def test_memory_bank_picks_its_coreset_in_the_whitened_space(self):
    f = _features()
    rows, space = scoring.memory_bank(f, 50, 0.1, seed=3)
    np.testing.assert_array_equal(rows, scoring.knn_bank(space(f), 50, 3))
    np.testing.assert_array_equal(space.matrix, whitening.fit(f, 0.1).matrix)
    rows, space = scoring.memory_bank(f, 1000, 0.1, seed=3)  # No coreset.
    np.testing.assert_array_equal(rows, np.arange(len(f)))
    rows, space = scoring.memory_bank(f, 50, None, seed=3)
    self.assertIsNone(space)
    np.testing.assert_array_equal(rows, scoring.knn_bank(f, 50, 3))

  def test_arrays_round_trip(self):
    space = whitening.fit(_features(), 0.1)
    back = whitening.Whitening.from_arrays(space.to_arrays())
    np.testing.assert_array_equal(back.matrix, space.matrix)
    np.testing.assert_array_equal(back.mean, space.mean)
    self.assertIsNone(whitening.Whitening.from_arrays({'train': 0}))

  def test_bad_input(self):
    with self.assertRaisesRegex(ValueError, 'knn_shrinkage=-1'):
      whitening.fit(_features(), -1.0)
    with self.assertRaisesRegex(ValueError, '>= 2 feature rows'):
      whitening.fit(np.zeros((1, 4), np.float32), 0.1)


class CacheTest(absltest.TestCase):
  """The memory bank's file keeps the whitening, and one written without
  the run's whitening (or with it, for a run without) is not used."""

  def test_cache_round_trip_and_mismatch(self):
    f = _features()
    space = whitening.fit(f, 0.1)
    meta = {'step': 7, 'mu': 1.0, 'sigma': 2.0, 'threshold': 3.0}
    with tempfile.TemporaryDirectory() as d:
      knn_reference.write_knn_reference(d, 'latest', meta, f[:100], f[100:],
                                        space)
      path = pathlib.Path(d) / knn_reference.KNN_DIR / 'latest_7.npz'
      # pylint: disable-next=protected-access
      cached = knn_reference._read_knn_cache(path, meta, whitened=True)
      np.testing.assert_array_equal(
          whitening.Whitening.from_arrays(cached).matrix, space.matrix)
      with self.assertLogs(level='WARNING') as logs:
        # pylint: disable-next=protected-access
        self.assertIsNone(knn_reference._read_knn_cache(path, meta,
                                                        whitened=False))
      self.assertIn('knn_shrinkage', ' '.join(logs.output))
      knn_reference.write_knn_reference(d, 'latest', meta, f[:100], f[100:])
      with self.assertLogs(level='WARNING'):
        # pylint: disable-next=protected-access
        self.assertIsNone(knn_reference._read_knn_cache(path, meta,
                                                        whitened=True))


class ExportTest(absltest.TestCase):
  """The exported kNN scorer measures in the same whitened space as the
  checkpoint's `KnnIndex`."""

  def test_exported_knn_equals_the_index(self):
    shape = (28, 28, 1)
    config = default.get_config('runlocal')
    state = jax.device_get(train_state.create_train_state(
        jax.random.key(0), config, shape))
    ae, critic = nets.create_models(config.model, shape, inference=True)
    scorer = scoring.scorer_from_state(state, ae, critic)
    rng = np.random.default_rng(0)
    train = rng.uniform(-1, 1, (64, *shape)).astype(np.float32)
    images = rng.uniform(-1, 1, (9, *shape)).astype(np.float32)
    bank = np.asarray(scorer.with_features(train)[1])
    space = whitening.fit(bank, 0.1)
    want = scoring.KnnIndex(bank, 2, whitening=space)(
        scorer.with_features(images)[1])
    ae_vars, critic_vars = train_state.scoring_variables(state)
    threshold = float(np.mean(np.sort(want)[4:6]))  # Between two values.
    fn = export.knn_scoring_function(ae, critic, ae_vars, critic_vars, bank,
                                     2, threshold, space)
    _, got, is_anomaly = jax.jit(fn)(images)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(is_anomaly), want > threshold)


if __name__ == '__main__':
  absltest.main()
