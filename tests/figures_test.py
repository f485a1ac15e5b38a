"""Tests for ama_jax.reporting.figures: each function writes one real, non-blank PNG."""
import os
import tempfile

from absl.testing import absltest
from absl.testing import parameterized
import numpy as np
from PIL import Image

from ama_jax.reporting import figures


def _read_png(test: absltest.TestCase, path: str) -> np.ndarray:
  """Asserts `path` is a PNG of real content and returns it as [H, W, 3]."""
  with Image.open(path) as img:
    test.assertEqual(img.format, 'PNG')
    pixels = np.asarray(img.convert('RGB'))
  test.assertGreater(pixels.shape[0], 50)
  test.assertGreater(pixels.shape[1], 50)
  # Not a flat colour: axes, text and data give many distinct colours.
  colours = np.unique(pixels.reshape(-1, 3), axis=0)
  test.assertGreater(len(colours), 10)
  return pixels


def _reddish_pixels(pixels: np.ndarray) -> int:
  """Counts pixels whose red clearly exceeds green and blue."""
  p = pixels.astype(np.int32)
  return int(np.sum((p[..., 0] - np.maximum(p[..., 1], p[..., 2])) > 50))


def _coloured_pixels(pixels: np.ndarray) -> int:
  """Counts pixels that are not grey (channels differ by more than 8)."""
  p = pixels.astype(np.int32)
  return int(np.sum(p.max(axis=-1) - p.min(axis=-1) > 8))


class FiguresTestCase(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    # tempfile, not create_tempdir: absl flags are unparsed under pytest.
    tmp = tempfile.TemporaryDirectory()
    self.addCleanup(tmp.cleanup)
    self.workdir = tmp.name
    self.rng = np.random.default_rng(0)

  def assert_only_file(self, path: str) -> None:
    """The PNG exists and no temporary file was left next to it."""
    folder = os.path.dirname(path)
    self.assertEqual(os.listdir(folder), [os.path.basename(path)])


class ScoreHistogramsTest(FiguresTestCase):

  def test_writes_png_with_all_three_histograms(self):
    path = os.path.join(self.workdir, 'hist.png')
    out = figures.score_histograms(
        path,
        train=self.rng.normal(size=500),
        test_normal=self.rng.normal(size=200),
        test_anomaly=self.rng.normal(loc=3.0, size=100),
        title='MNIST digit 0',
        xlabel='critic score',
    )
    self.assertEqual(out, path)
    pixels = _read_png(self, path)
    self.assertGreater(_reddish_pixels(pixels), 100)
    self.assert_only_file(path)

  def test_empty_anomaly_array_is_skipped(self):
    path = os.path.join(self.workdir, 'hist.png')
    figures.score_histograms(
        path,
        train=self.rng.normal(size=100),
        test_normal=self.rng.normal(size=100),
        test_anomaly=np.zeros([0]),
        title='no anomalies',
        xlabel='score',
    )
    # Red is only used for anomalies, in the bars and in the legend.
    self.assertEqual(_reddish_pixels(_read_png(self, path)), 0)
    self.assert_only_file(path)

  @parameterized.named_parameters(
      ('all_empty', [], [], []),
      ('one_non_empty', [], [1.0, 2.0], []),
      ('constant', [2.0] * 50, [2.0] * 10, [2.0] * 5),
      ('zero_constant_and_empty', [0.0] * 20, [], [0.0]),
      ('non_finite_dropped', [np.nan, 1.0, np.inf], [0.5], [-np.inf, 3.0]),
  )
  def test_edge_cases_still_write_png(self, train, test_normal, test_anomaly):
    path = os.path.join(self.workdir, 'hist.png')
    figures.score_histograms(
        path,
        train=np.asarray(train),
        test_normal=np.asarray(test_normal),
        test_anomaly=np.asarray(test_anomaly),
        title='edge case',
        xlabel='score',
    )
    _read_png(self, path)
    self.assert_only_file(path)

  def test_overwrites_existing_file_and_creates_folders(self):
    path = os.path.join(self.workdir, 'a', 'b', 'hist.png')
    for _ in range(2):
      figures.score_histograms(
          path, train=[1.0, 2.0], test_normal=[1.5], test_anomaly=[3.0],
          title='t', xlabel='x')
    _read_png(self, path)
    self.assert_only_file(path)


class RocCurvesTest(FiguresTestCase):

  def test_writes_png_for_several_scores(self):
    labels = np.repeat([0, 1], 100)
    scores = {
        'critic': self.rng.normal(size=200) + 2.0 * labels,
        'mse': self.rng.normal(size=200) + 0.5 * labels,
        'random': self.rng.normal(size=200),
    }
    path = os.path.join(self.workdir, 'roc.png')
    self.assertEqual(figures.roc_curves(path, labels, scores, 'ROC'), path)
    _read_png(self, path)
    self.assert_only_file(path)

  def test_tied_scores_still_write_png(self):
    labels = np.array([0, 1, 0, 1])
    path = os.path.join(self.workdir, 'roc.png')
    figures.roc_curves(path, labels, {'constant': np.ones(4)}, 'ties')
    _read_png(self, path)

  @parameterized.named_parameters(
      ('one_class', [0, 0, 0], {'s': [1.0, 2.0, 3.0]}),
      ('length_mismatch', [0, 1, 0], {'s': [1.0, 2.0]}),
      ('no_scores', [0, 1], {}),
  )
  def test_bad_inputs_raise_and_write_nothing(self, labels, scores):
    path = os.path.join(self.workdir, 'roc.png')
    with self.assertRaises(ValueError):
      figures.roc_curves(path, np.asarray(labels), scores, 'bad')
    self.assertEmpty(os.listdir(self.workdir))


class ImageFiguresTest(FiguresTestCase):

  def _images(self, n: int, channels: int) -> np.ndarray:
    return self.rng.uniform(-1.0, 1.0, size=(n, 12, 12, channels))

  @parameterized.named_parameters(
      ('grey_one_row', 1, 5, 16),
      ('grey_wrapped', 1, 20, 16),
      ('rgb_one_row', 3, 8, 8),
      ('rgb_wrapped_partial_last_pair', 3, 13, 13),
  )
  def test_reconstructions_write_png(self, channels, num, n):
    images = self._images(num, channels)
    recons = np.clip(images + 0.1, -1.0, 1.0)
    path = os.path.join(self.workdir, 'recon.png')
    out = figures.reconstructions(path, images, recons, n=n, title='recon')
    self.assertEqual(out, path)
    pixels = _read_png(self, path)
    # Grey images use the grey colormap; RGB noise is colourful.
    if channels == 1:
      self.assertEqual(_coloured_pixels(pixels), 0)
    else:
      self.assertGreater(_coloured_pixels(pixels), 1000)
    self.assert_only_file(path)

  def test_more_pairs_make_a_taller_figure(self):
    images = self._images(24, 1)
    heights = []
    for n in (8, 24):
      path = os.path.join(self.workdir, f'recon{n}.png')
      figures.reconstructions(path, images, images, n=n, title='t')
      heights.append(_read_png(self, path).shape[0])
    self.assertGreater(heights[1], 2 * heights[0])

  def test_reconstructions_reject_shape_mismatch(self):
    path = os.path.join(self.workdir, 'recon.png')
    with self.assertRaises(ValueError):
      figures.reconstructions(
          path, self._images(4, 3), self._images(3, 3), title='t')
    self.assertEmpty(os.listdir(self.workdir))

  @parameterized.named_parameters(
      ('grey', 1, 32, 8),
      ('rgb', 3, 32, 8),
      ('rgb_fewer_than_n', 3, 10, 4),
      ('grey_without_channel_axis', None, 16, 8),
  )
  def test_image_grid_writes_png(self, channels, num, ncols):
    if channels is None:
      images = self._images(num, 1)[..., 0]
    else:
      images = self._images(num, channels)
    path = os.path.join(self.workdir, 'grid.png')
    out = figures.image_grid(path, images, n=32, ncols=ncols, title='negs')
    self.assertEqual(out, path)
    pixels = _read_png(self, path)
    if channels == 3:
      self.assertGreater(_coloured_pixels(pixels), 1000)
    else:
      self.assertEqual(_coloured_pixels(pixels), 0)
    self.assert_only_file(path)

  def test_image_grid_rejects_empty_and_bad_channels(self):
    path = os.path.join(self.workdir, 'grid.png')
    for images in (np.zeros([0, 8, 8, 3]), np.zeros([2, 8, 8, 2])):
      with self.assertRaises(ValueError):
        figures.image_grid(path, images, title='bad')
    self.assertEmpty(os.listdir(self.workdir))


if __name__ == '__main__':
  absltest.main()
