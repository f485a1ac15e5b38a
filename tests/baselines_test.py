"""Tests for ama_jax.scoring.baselines on small synthetic splits (seconds on a CPU)."""
from absl.testing import absltest
import numpy as np

from ama_jax.scoring import baselines
from ama_jax.data import input_pipeline

METRIC_KEYS = {
    'auroc', 'auprc_anomaly', 'auprc_normal', 'fpr80', 'fpr95', 'num_normal',
    'num_anomaly',
}


def _split(
    images: np.ndarray,
    labels: np.ndarray,
    is_anomaly: np.ndarray | None = None,
) -> input_pipeline.Split:
  n = images.shape[0]
  labels = np.asarray(labels, np.int32)
  if is_anomaly is None:
    is_anomaly = labels.astype(bool)
  return input_pipeline.Split(
      images=images.astype(np.float32),
      labels=labels,
      is_anomaly=np.asarray(is_anomaly, bool),
      classes=np.zeros(n, np.int32),
      sources=np.zeros(n, np.int32),
      indices=np.arange(n, dtype=np.int64),
  )


def _protocol(
    train: input_pipeline.Split,
    val: input_pipeline.Split,
    test: input_pipeline.Split,
) -> input_pipeline.ProtocolData:
  return input_pipeline.ProtocolData(
      train=train,
      val=val,
      test=test,
      counts={},
      image_shape=tuple(train.images.shape[1:]),
  )


def _blobs_protocol(
    seed: int = 0, num_labelled: int = 0, num_corrupted: int = 0
) -> input_pipeline.ProtocolData:
  """8x8 images: normals near one pattern, anomalies near another.

  Args:
    seed: draws the patterns and the noise.
    num_labelled: labelled anomalies in train (semi-supervised rows).
    num_corrupted: anomalies in train labelled normal (corruption rows).

  Returns:
    120 + num_labelled + num_corrupted train rows, 20 + 6 validation rows,
    40 + 15 test rows.
  """
  rng = np.random.default_rng(seed)
  shape = (8, 8, 1)
  normal_mean = rng.uniform(-0.5, 0.5, size=shape)
  anomaly_mean = rng.uniform(-0.5, 0.5, size=shape)

  def draw(n, mean, scale=0.2):
    return np.clip(mean + scale * rng.normal(size=(n, *shape)), -1, 1)

  n_bad = num_labelled + num_corrupted
  train = _split(
      np.concatenate([draw(120, normal_mean), draw(n_bad, anomaly_mean)]),
      np.r_[np.zeros(120), np.ones(num_labelled), np.zeros(num_corrupted)],
      np.r_[np.zeros(120), np.ones(n_bad)],
  )
  val = _split(
      np.concatenate([draw(20, normal_mean), draw(6, anomaly_mean)]),
      np.r_[np.zeros(20), np.ones(6)],
  )
  test = _split(
      np.concatenate([draw(40, normal_mean), draw(15, anomaly_mean)]),
      np.r_[np.zeros(40), np.ones(15)],
  )
  return _protocol(train, val, test)


def _knn_trap_protocol() -> input_pipeline.ProtocolData:
  """A split where validation prefers k = 1 and test prefers k = 50.

  Training normals: a cluster A of 200 points and a tiny cluster B of 3.
  Validation: normals from A and from B, anomalies at distance 0.4 from A's
  centre. k = 1 separates them perfectly; with k = 50 the B normals look far.
  Test: normals from A, anomalies right on B; only k = 50 detects them.
  """
  rng = np.random.default_rng(0)
  dim = 4
  centre_a = np.full(dim, -0.5)
  centre_b = np.full(dim, 0.8)

  def near(centre, n, scale):
    return centre + scale * rng.normal(size=(n, dim))

  def ring(n, radius):
    u = rng.normal(size=(n, dim))
    return centre_a + radius * u / np.linalg.norm(u, axis=1, keepdims=True)

  def images(x):
    return x.reshape(-1, 2, 2, 1)

  train = _split(
      images(np.concatenate([near(centre_a, 200, 0.05),
                             near(centre_b, 3, 0.001)])),
      np.zeros(203),
  )
  val = _split(
      images(np.concatenate([near(centre_a, 20, 0.05), near(centre_b, 5, 0.001),
                             ring(10, 0.4)])),
      np.r_[np.zeros(25), np.ones(10)],
  )
  test = _split(
      images(np.concatenate([near(centre_a, 30, 0.05),
                             near(centre_b, 10, 0.001)])),
      np.r_[np.zeros(30), np.ones(10)],
  )
  return _protocol(train, val, test)


class RunBaselinesTest(absltest.TestCase):

  def test_output_keys_and_grids(self):
    data = _blobs_protocol()
    results = baselines.run_baselines(data, seed=0, max_train_ocsvm=50)
    self.assertEqual(list(results), ['knn', 'pca', 'ocsvm'])
    for method, r in results.items():
      self.assertEqual(r['hparam_name'], baselines.HPARAM_NAMES[method])
      self.assertIn(r['hparam'], r['val_grid'])
      self.assertEqual(r['val_auroc'], r['val_grid'][r['hparam']])
      self.assertEqual(set(r['test']), METRIC_KEYS)
      self.assertEqual(r['test']['num_normal'], 40)
      self.assertEqual(r['test']['num_anomaly'], 15)
      self.assertEqual(r['num_train'], 120)
      # Well separated blobs: every baseline should find them.
      self.assertGreater(r['test']['auroc'], 0.9, msg=method)
    self.assertEqual(list(results['knn']['val_grid']), [1, 2, 5, 10, 20, 50])
    # 120 rows, 64 pixels: components capped at 63.
    self.assertEqual(list(results['pca']['val_grid']), [8, 16, 32])
    self.assertLen(
        results['ocsvm']['val_grid'], len(baselines.GAMMA_MULTIPLIERS)
    )

  def test_trains_on_rows_labelled_normal_including_corrupted(self):
    data = _blobs_protocol(num_labelled=5, num_corrupted=3)
    r = baselines.run_baselines(data, seed=0, methods=('knn',))['knn']
    # 120 normals + 3 anomalies labelled normal; the 5 labelled anomalies
    # are not training normals.
    self.assertEqual(r['num_train'], 123)

  def test_hparam_is_chosen_on_validation_not_test(self):
    data = _knn_trap_protocol()
    chosen = baselines.run_baselines(
        data, seed=0, methods=('knn',), k_grid=(1, 50)
    )['knn']
    self.assertEqual(chosen['hparam'], 1)
    self.assertEqual(chosen['val_auroc'], 1.0)
    self.assertLess(chosen['val_grid'][50], 1.0)
    hindsight = baselines.run_baselines(
        data, seed=0, methods=('knn',), k_grid=(50,)
    )['knn']
    # k = 50 would have been far better on test; it was not picked.
    self.assertGreater(hindsight['test']['auroc'], 0.99)
    self.assertLess(chosen['test']['auroc'], 0.1)

  def test_deterministic_given_seed(self):
    data = _blobs_protocol()
    kwargs = dict(seed=3, max_train=60, max_train_ocsvm=40)
    first = baselines.run_baselines(data, **kwargs)
    second = baselines.run_baselines(data, **kwargs)
    for method in baselines.METHODS:
      first[method].pop('seconds')
      second[method].pop('seconds')
      self.assertEqual(first[method], second[method])
      self.assertEqual(first[method]['num_train'], 60)

  def test_unknown_method_raises(self):
    with self.assertRaisesRegex(ValueError, 'Unknown baselines'):
      baselines.run_baselines(_blobs_protocol(), seed=0, methods=('lof',))


class SelectByValidationTest(absltest.TestCase):

  def test_ties_go_to_first_in_grid(self):
    labels = np.array([0, 0, 1, 1])
    good = np.array([0.0, 0.1, 0.8, 0.9])
    bad = good[::-1].copy()
    best, grid = baselines.select_by_validation(
        labels, {5: bad, 2: good, 7: good}
    )
    self.assertEqual(best, 2)
    self.assertEqual(grid, {5: 0.0, 2: 1.0, 7: 1.0})


if __name__ == '__main__':
  absltest.main()
