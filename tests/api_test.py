"""`ama_jax.AMADetector`: fit on real MNIST normals, score, save, load.

Tiny runs (`:runlocal`: width 8, latent 8, 4 steps an epoch) on 500 real
images of one digit; at this size the scores say little about anomalies,
so the tests check the API's contract rather than detection quality.
"""
import csv
import pathlib
import shutil
import tempfile

from absl.testing import absltest
import numpy as np

from ama_jax import AMADetector
from ama_jax import api
from ama_jax import errors
from ama_jax.scoring import score_error
from ama_jax.data import idx_images
from ama_jax.data import image_folder
from ama_jax.tools import score

CONFIG = 'fmnist_oneclass:runlocal'


class AMADetectorTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = pathlib.Path(tempfile.mkdtemp(prefix='api_test_'))
    cls.addClassCleanup(shutil.rmtree, cls.root, ignore_errors=True)
    x, y = idx_images.read_split(idx_images.DEFAULT_RAW_DIR / 'mnist',
                                 'train')
    cls.train = x[y == 3][:500, ..., 0]  # uint8 [500, 28, 28].
    rest = x[-2000:]
    cls.test = np.concatenate([rest[y[-2000:] == 3][:10],
                               rest[y[-2000:] != 3][:30]])  # [40, 28, 28, 1]
    cls.detector = AMADetector(config=CONFIG, epochs=None, seed=0)
    cls.detector.fit(cls.train)
    cls.scores = cls.detector.score_samples(cls.test)

  def test_scores_predict_and_threshold(self):
    det, s = self.detector, self.scores
    self.assertEqual(s.shape, (len(self.test),))
    self.assertEqual(s.dtype, np.float32)
    self.assertTrue(np.isfinite(s).all())
    self.assertEqual(det.score_, det.chosen_['score'])
    self.assertIsInstance(det.threshold_, float)
    self.assertTrue(np.isfinite(det.threshold_))
    y = det.predict(self.test)
    self.assertSetEqual(set(np.unique(y).tolist()) | {0, 1}, {0, 1})
    np.testing.assert_array_equal(y, (s > det.threshold_).astype(int))
    np.testing.assert_array_equal(det.decision_function(self.test),
                                  s - np.float32(det.threshold_))
    # Input order: the scores follow the images, whatever the batch.
    np.testing.assert_allclose(det.score_samples(self.test[::-1]), s[::-1],
                               rtol=1e-5)
    np.testing.assert_allclose(det.score_samples(self.test[7:8]), s[7:8],
                               rtol=1e-5)
    # [N, H, W] and floats in [-1, 1] are the same images.
    floats = self.test[..., 0] / np.float32(127.5) - 1
    np.testing.assert_allclose(det.score_samples(floats), s, rtol=1e-5)

  def test_same_scores_as_the_score_command(self):
    npy, out = self.root / 'test.npy', self.root / 'scores.csv'
    np.save(npy, self.test)
    summary = score.run(self.detector.workdir_, npy, out)
    with open(out, newline='') as f:
      rows = list(csv.DictReader(f))
    column = 'knn' if self.detector.score_ == 'knn' else 'score'
    np.testing.assert_array_equal(
        np.asarray([float(r[column]) for r in rows], np.float32), self.scores)
    np.testing.assert_array_equal([int(r['is_anomaly']) for r in rows],
                                  self.detector.predict(self.test))
    self.assertEqual(summary['threshold'], self.detector.threshold_)
    # A path scores as the array does.
    np.testing.assert_array_equal(self.detector.score_samples(npy),
                                  self.scores)

  def test_save_and_load_give_identical_scores(self):
    path = self.root / 'saved'
    self.detector.save(path)
    self.assertTrue((path / 'results.json').is_file())
    self.assertFalse((path / api.IMAGES_DIR).exists())
    self.assertFalse((path / api.DATA_DIR).exists())
    loaded = AMADetector.load(path)
    np.testing.assert_array_equal(loaded.score_samples(self.test),
                                  self.scores)
    self.assertEqual(loaded.threshold_, self.detector.threshold_)
    self.assertEqual((loaded.config, loaded.seed), (CONFIG, 0))
    with self.assertRaisesRegex(api.DetectorError, 'already exists'):
      self.detector.save(path)

  def test_folder_fit_equals_the_array_fit_with_the_same_seed(self):
    folder = self.root / 'pngs'
    image_folder.write_pngs(folder, self.train)  # A flat folder of normals.
    workdir = self.root / 'folder_run'
    det = AMADetector(config=CONFIG, epochs=None, seed=0,
                      workdir=workdir).fit(str(folder))
    self.assertEqual(det.workdir_, workdir)
    self.assertEqual(det.image_shape_, (28, 28, 1))
    np.testing.assert_array_equal(det.score_samples(self.test), self.scores)
    self.assertEqual(det.threshold_, self.detector.threshold_)

  def test_clear_errors(self):
    unfitted = AMADetector()
    with self.assertRaisesRegex(api.NotFittedError, r'call fit\(x\)'):
      unfitted.score_samples(self.test)
    with self.assertRaisesRegex(api.NotFittedError, 'not fitted'):
      unfitted.save(self.root / 'never')
    bad_fits = (
        (np.zeros((5, 28), np.uint8), r'shape \(5, 28\)'),
        (np.zeros((0, 28, 28), np.uint8), 'holds no images'),
        (np.full((4, 28, 28), np.nan, np.float32), 'NaN'),
        (np.full((4, 28, 28), 3.0, np.float32), r'\[-1, 1\]'),
        (self.root / 'missing', 'does not exist'),
    )
    for x, message in bad_fits:
      with self.subTest(message):
        with self.assertRaisesRegex(api.DetectorError, message):
          AMADetector(config=CONFIG).fit(x)
    with self.assertRaisesRegex(api.DetectorError, 'no such config'):
      AMADetector(config='nonsense').fit(self.train)
    with self.assertRaisesRegex(api.DetectorError, 'model.widht'):
      AMADetector(config=CONFIG, overrides={'model.widht': 8}).fit(self.train)
    classes = self.root / 'classes'
    image_folder.write_pngs(classes, self.test[:4], labels=[0, 0, 1, 1])
    with self.assertRaisesRegex(api.DetectorError, 'data.normal_classes'):
      AMADetector(config=CONFIG).fit(classes)
    with self.assertRaisesRegex(api.DetectorError, 'no results.json'):
      AMADetector.load(self.root)
    nan = self.test.astype(np.float32) / 127.5 - 1
    nan[3, 0, 0] = np.nan
    floats = self.test.astype(np.float32) / 127.5 - 1
    for x, message in ((nan, 'NaN'), (floats[:, :20], '20x28x1'),
                       (floats[0, ..., 0], r'got shape \(28, 28\)')):
      with self.subTest(message):
        with self.assertRaisesRegex(score_error.ScoreError, message):
          self.detector.score_samples(x)
    self.assertTrue(issubclass(api.DetectorError, errors.UserError))
    self.assertTrue(issubclass(score_error.ScoreError, errors.UserError))


if __name__ == '__main__':
  absltest.main()
