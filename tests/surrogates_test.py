"""Surrogate anomalies and the label-free rule that uses them."""
import numpy as np
import pytest

from ama_jax.reporting import report
from ama_jax.scoring import surrogates


def _images(n=6, h=8, w=8, c=1, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (n, h, w, c)).astype(
      np.float32)


def test_transforms_are_the_named_geometric_changes():
  x = _images()
  out = surrogates.transform(x, seed=0)
  assert list(out) == list(surrogates.TRANSFORMS)
  np.testing.assert_array_equal(out['vflip'], x[:, ::-1])
  np.testing.assert_array_equal(out['hflip'], x[:, :, ::-1])
  np.testing.assert_array_equal(out['rot180'], np.rot90(x, 2, axes=(1, 2)))
  np.testing.assert_array_equal(out['rot90'], np.rot90(x, 1, axes=(1, 2)))
  cut = out['cutout']
  side = 8 // 3
  for i in range(len(x)):  # One square of side H // 3 blanked per image.
    blank = cut[i, ..., 0] != x[i, ..., 0]
    assert (cut[i][blank] == -1).all()
    assert side * side - 1 <= blank.sum() <= side * side
  for v in out.values():
    assert v.dtype == np.float32 and v.shape == x.shape


def test_cutout_is_drawn_from_the_seed():
  x = _images(n=20)
  a = surrogates.transform(x, seed=3, names=['cutout'])['cutout']
  b = surrogates.transform(x, seed=3, names=['cutout'])['cutout']
  c = surrogates.transform(x, seed=4, names=['cutout'])['cutout']
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_non_square_images_skip_the_quarter_turn():
  out = surrogates.transform(_images(h=8, w=6), seed=0)
  assert 'rot90' not in out and 'rot180' in out


def test_stacked_and_aurocs():
  x = _images(n=5)
  stacked, names = surrogates.stacked(x, seed=0)
  assert stacked.shape == (5 * len(names), 8, 8, 1)
  normal = np.zeros(5)
  # A score that ranks every surrogate above every normal: AUROC 1; one
  # that cannot tell them apart: 0.5.
  perfect = surrogates.aurocs(normal, np.ones(len(stacked)), names)
  flat = surrogates.aurocs(normal, np.zeros(len(stacked)), names)
  assert perfect['mean'] == 1.0 and flat['mean'] == 0.5
  assert set(perfect) == set(names) | {'mean'}


@pytest.mark.parametrize('style, turns, left_out', [
    ('none', 'all', ()), ('outward', 'all', ()),
    ('rotate', 'all', ('rot90', 'rot180')), ('rotate', 'quarter', ('rot90',))])
def test_transforms_the_training_saw_are_held_out(style, turns, left_out):
  names = surrogates.held_out({'style': style, 'turns': turns})
  assert names == tuple(t for t in surrogates.TRANSFORMS if t not in left_out)
  stacked, got = surrogates.stacked(_images(n=3), seed=0, names=names)
  assert got == list(names) and len(stacked) == 3 * len(names)


def test_unknown_transform_and_bad_shape_are_errors():
  with pytest.raises(ValueError, match='Unknown transform'):
    surrogates.transform(_images(), 0, names=['blur'])
  with pytest.raises(ValueError, match=r'\[N, H, W, C\]'):
    surrogates.transform(np.zeros((3, 8, 8)), 0)


def _results(cal, knn, how='surrogate', with_surrogate=True):
  results = {'config': {'eval': {'label_free_score': how, 'knn_k': 1}},
             'test': {'last': {'auroc': 0.9, 'knn_auroc': 0.8}},
             'model_selection': {'criterion': 'last_state'}}
  if how is None:
    del results['config']['eval']['label_free_score']
  if with_surrogate:
    results['surrogate'] = {'last': {'calibrated': {'mean': cal},
                                     'knn': {'mean': knn}}}
  return results


@pytest.mark.parametrize('cal, knn, how, with_surrogate, want', [
    (0.93, 0.92, 'surrogate', True, 'calibrated'),
    (0.80, 0.86, 'surrogate', True, 'knn'),
    (0.90, 0.90, 'surrogate', True, 'knn'),  # Ties: kNN.
    (0.93, 0.92, 'knn', True, 'knn'),  # The fixed rules.
    (0.80, 0.86, 'calibrated', True, 'calibrated'),
    (0.93, 0.92, None, True, 'knn'),  # Stored before the field: kNN.
    (0.93, 0.92, 'surrogate', False, 'knn'),  # Nothing to transform.
])
def test_label_free_pick(cal, knn, how, with_surrogate, want):
  results = _results(cal, knn, how, with_surrogate)
  assert report.pick(results, 'label_free') == ('last', want)


def test_label_free_without_knn_is_calibrated():
  results = _results(0.5, 0.9)
  del results['test']['last']['knn_auroc']
  assert report.pick(results, 'label_free') == ('last', 'calibrated')


def test_label_free_pick_leaves_out_the_transforms_trained_on():
  # The kNN score wins on the turns the critic was trained to tell apart,
  # the calibrated score on the held-out transforms: calibrated.
  results = _results(0.0, 0.0)
  results['config']['sampling'] = {'style': 'rotate', 'turns': 'all'}
  results['surrogate']['last'] = {
      'calibrated': {'rot90': 0.95, 'rot180': 0.95, 'vflip': 0.96,
                     'hflip': 0.58, 'cutout': 0.90, 'mean': 0.868},
      'knn': {'rot90': 0.99, 'rot180': 0.98, 'vflip': 0.97, 'hflip': 0.56,
              'cutout': 0.89, 'mean': 0.878}}
  assert report.pick(results, 'label_free') == ('last', 'calibrated')
  results['config']['sampling']['style'] = 'outward'  # Nothing left out.
  assert report.pick(results, 'label_free') == ('last', 'knn')
