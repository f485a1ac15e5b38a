"""End-to-end tests of `python -m ama_jax.tools.score` on a tiny saved state."""
import contextlib
import copy
import csv
import functools
import io
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile

from absl import flags
from absl.testing import absltest
from absl.testing import parameterized
import jax
import numpy as np
from PIL import Image

from ama_jax.checkpoints import checkpointing
from ama_jax.scoring import knn_reference
from ama_jax.data import input_pipeline
from ama_jax.reporting import json_safe
from ama_jax.scoring import metrics
from ama_jax.models import nets
from ama_jax.scoring import scoring
from ama_jax.scoring import whitening
from ama_jax.training import train_state
from ama_jax.tools import score
from configs import default

REPO = pathlib.Path(__file__).resolve().parents[1]
SHAPE = (28, 28, 1)
NUM_IMAGES = 5


def _random_state(config) -> train_state.AMAState:
  """A state with the real structure and random values, without compiling.

  Scoring mechanics do not need training; the abstract tree comes from
  `create_train_state` under `jax.eval_shape`, as in the CLI.
  """
  abstract = jax.eval_shape(functools.partial(
      train_state.create_train_state, config=config, image_shape=SHAPE),
      jax.random.key(0))
  rng = np.random.default_rng(0)

  def fill(x):
    if np.issubdtype(x.dtype, np.floating):
      return (0.05 * rng.normal(size=x.shape)).astype(x.dtype)
    return np.full(x.shape, 3, x.dtype)

  return jax.tree.map(fill, abstract)


def _write_idx(path: pathlib.Path, images: np.ndarray) -> None:
  header = struct.pack('>I', 2051) + struct.pack('>3I', *images.shape)
  path.write_bytes(header + images.astype(np.uint8).tobytes())


def _read_csv(path: pathlib.Path) -> list[dict[str, str]]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


class ScoreTest(parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = pathlib.Path(tempfile.mkdtemp(prefix='score_test_'))
    cls.addClassCleanup(shutil.rmtree, cls.root, ignore_errors=True)
    config = default.get_config('runlocal')
    state = _random_state(config)
    rng = np.random.default_rng(1)
    cls.pixels = rng.integers(0, 256, (NUM_IMAGES, 28, 28), np.uint8)
    ae_model, critic_model = nets.create_models(config.model, SHAPE,
                                                  inference=True)
    scorer = scoring.scorer_from_state(state, ae_model, critic_model)
    cls.r = scorer(cls.pixels[..., None].astype(np.float32) / 127.5 - 1.0)
    mu, sigma = float(cls.r.mean()), float(cls.r.std() + 1e-3)
    cls.scores = scoring.calibrated_scores(cls.r, mu, sigma)
    # Between two scores, so no image sits on the threshold.
    threshold = float(np.mean(np.sort(cls.scores)[2:4]))
    cls.is_anomaly = cls.scores > threshold
    meta = {'config': json_safe.config_to_dict(config), 'epoch': 1,
            'mu': mu, 'sigma': sigma, 'threshold': threshold,
            'threshold_fpr': 0.05, 'image_shape': list(SHAPE),
            'val_auroc': 0.7}
    cls.workdir = cls.root / 'run'
    ckpts = checkpointing.CheckpointManagers(cls.workdir)
    ckpts.save_best(5, state, meta)
    ckpts.save_latest(5, state, meta)
    # A latest step saved before any validation: no calibration.
    ckpts.save_latest(6, state, {**meta, 'mu': None, 'sigma': None,
                                 'threshold': None, 'val_auroc': -np.inf})
    ckpts.close()
    # The same checkpoint, its run's data gone (for --score=knn).
    moved = copy.deepcopy(config)
    moved.data.raw_dir = moved.data.data_dir = str(cls.root / 'gone')
    cls.no_data = cls.root / 'no_data'
    ckpts = checkpointing.CheckpointManagers(cls.no_data)
    ckpts.save_best(5, state, {**meta, 'config': json_safe.config_to_dict(
        moved)})
    ckpts.close()
    cls.config, cls.state = config, state
    # The run's data prepared here, once: on a fresh machine the first
    # reader would otherwise print TFDS's preparation progress in the
    # middle of a test that counts stderr lines (knn_k_too_large).
    input_pipeline.load_protocol(config.data, config.seed, input_size=(28, 28))
    # The same images in every input format.
    cls.npy = cls.root / 'images.npy'
    np.save(cls.npy, cls.pixels)
    cls.npz = cls.root / 'images.npz'
    np.savez(cls.npz, labels=np.zeros(NUM_IMAGES), images=cls.pixels[..., None])
    cls.folder = cls.root / 'pngs'
    cls.folder.mkdir()
    cls.names = [f'img_{i:02d}.png' for i in range(NUM_IMAGES)]
    for name, image in zip(cls.names, cls.pixels):
      Image.fromarray(image).save(cls.folder / name)
    cls.idx = cls.root / 't10k-images-idx3-ubyte'
    _write_idx(cls.idx, cls.pixels)

  def setUp(self):
    super().setUp()
    self.tmp = pathlib.Path(self.create_tempdir().full_path)

  def _main(self, **flag_values) -> tuple[int, str]:
    """Runs `score.main` in-process; returns (exit status, stderr)."""
    fv = flags.FlagValues()
    score.define_flags(fv)
    fv(['score'] + [f'--{k}={v}' for k, v in flag_values.items()])
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
      status = score.main(['score'], fv)
    return status, stderr.getvalue()

  def _check_csv(self, path, ids):
    rows = _read_csv(path)
    self.assertEqual([row['id'] for row in rows], ids)
    r = np.array([float(row['r']) for row in rows])
    scores = np.array([float(row['score']) for row in rows])
    np.testing.assert_allclose(r, self.r, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, self.scores, rtol=1e-4, atol=1e-6)
    self.assertEqual([row['is_anomaly'] for row in rows],
                     [str(int(a)) for a in self.is_anomaly])
    self.assertEqual(sorted(p.name for p in path.parent.iterdir()),
                     [path.name])  # No temporary file left behind.

  def test_npy_via_main_matches_scoring(self):
    out = self.tmp / 'scores.csv'
    status, stderr = self._main(workdir=self.workdir, input=self.npy,
                                output=out, batch_size=4)
    self.assertEqual((status, stderr), (0, ''))
    self._check_csv(out, [str(i) for i in range(NUM_IMAGES)])
    umask = os.umask(0)
    os.umask(umask)
    # An ordinary new file's permissions, not the temporary file's 0600.
    self.assertEqual(out.stat().st_mode & 0o777, 0o666 & ~umask)

  @parameterized.named_parameters(
      ('npz', 'npz', None, None), ('png_folder', 'folder', 'best', None),
      ('idx', 'idx', None, 5), ('idx_latest_step', 'idx', 'latest', 5))
  def test_input_formats_and_checkpoint_choice(self, source, kind, step):
    out = self.tmp / 'scores.csv'
    summary = score.run(self.workdir, getattr(self, source), out, kind=kind,
                        step=step)
    self.assertEqual(summary['step'], 5)
    self.assertEqual(summary['kind'], kind or 'best')
    self._check_csv(out, self.names if source == 'folder' else
                    [str(i) for i in range(NUM_IMAGES)])

  def test_subprocess_writes_csv(self):
    out = self.tmp / 'scores.csv'
    proc = subprocess.run(
        [sys.executable, '-m', 'ama_jax.tools.score',
         f'--workdir={self.workdir}', f'--input={self.folder}',
         f'--output={out}'],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    self.assertNotIn('Traceback', proc.stderr)
    self._check_csv(out, self.names)

  def test_subprocess_error_is_one_line_without_traceback(self):
    proc = subprocess.run(
        [sys.executable, '-m', 'ama_jax.tools.score',
         f'--workdir={self.tmp / "missing"}', f'--input={self.npy}',
         f'--output={self.tmp / "s.csv"}'],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    self.assertEqual(proc.returncode, 1, proc.stderr[-3000:])
    self.assertNotIn('Traceback', proc.stderr)
    self.assertRegex(proc.stderr.strip().splitlines()[-1],
                     r'^error: Workdir .*missing does not exist')

  def test_knn_score_against_the_runs_training_normals(self):
    # The features of the run's training normals, read again from its data
    # settings, computed once and cached; a damaged cache is recomputed.
    data = input_pipeline.load_protocol(self.config.data, self.config.seed,
                                        input_size=(28, 28))
    ae_model, critic_model = nets.create_models(self.config.model, SHAPE,
                                                  inference=True)
    scorer = scoring.scorer_from_state(self.state, ae_model, critic_model)
    bank = scorer.with_features(data.train.images[data.train.labels == 0])[1]
    images = self.pixels[..., None].astype(np.float32) / 127.5 - 1.0
    # In the space of the run's whitening (eval.knn_shrinkage).
    space = whitening.fit(bank, self.config.eval.knn_shrinkage)
    self.assertIsNotNone(space)
    index = scoring.KnnIndex(bank, 2, whitening=space)
    want = index(scorer.with_features(images)[1])
    val = scorer.with_features(data.val.images[data.val.labels == 0])[1]
    threshold = metrics.threshold_at_fpr(index(val),
                                         self.config.eval.threshold_fpr)
    cache = self.workdir / knn_reference.KNN_DIR / 'best_5.npz'
    for attempt in ('computed', 'cached', 'damaged cache'):
      out = self.tmp / f'{attempt}.csv'
      status, stderr = self._main(workdir=self.workdir, input=self.npy,
                                  output=out, score='knn', knn_k=2)
      self.assertEqual((status, stderr), (0, ''), attempt)
      rows = _read_csv(out)
      self.assertEqual(list(rows[0]), ['id', 'r', 'knn', 'is_anomaly'])
      knn = np.array([float(row['knn']) for row in rows])
      np.testing.assert_allclose(knn, want, rtol=1e-4, err_msg=attempt)
      np.testing.assert_allclose([float(row['r']) for row in rows], self.r,
                                 rtol=1e-5, atol=1e-6)
      self.assertEqual([row['is_anomaly'] for row in rows],
                       [str(int(d > threshold)) for d in want])
      self.assertTrue(cache.is_file())
      if attempt == 'cached':
        cache.write_bytes(b'not an npz')
    # Features cached for another checkpoint saved at this step (another
    # calibration) are not used.
    with np.load(cache) as npz:
      stale = {k: npz[k] for k in npz.files}
    np.savez(cache, **{**stale, 'train': stale['train'] + 100.0,
                       'fingerprint': stale['fingerprint'] + 1.0})
    out = self.tmp / 'stale.csv'
    self.assertEqual(self._main(workdir=self.workdir, input=self.npy,
                                output=out, score='knn', knn_k=2), (0, ''))
    np.testing.assert_allclose([float(row['knn']) for row in _read_csv(out)],
                               want, rtol=1e-4)
    shutil.rmtree(cache.parent)

  def _error_inputs(self, case: str):
    """(flags, expected message regex) for one error case."""
    tmp, out = self.tmp, self.tmp / 'scores.csv'
    base = {'workdir': self.workdir, 'input': self.npy, 'output': out}
    save = lambda name, array: (np.save(tmp / name, array), tmp / name)[1]
    if case == 'missing_workdir':
      return {**base, 'workdir': tmp / 'nowhere'}, 'Workdir .* does not exist'
    if case == 'empty_workdir':
      (tmp / 'empty').mkdir()
      return {**base, 'workdir': tmp / 'empty'}, 'No checkpoint in'
    if case == 'missing_step':
      return {**base, 'step': 99}, r'No checkpoint at step 99 .*best \[5\]'
    if case == 'uncalibrated':
      return {**base, 'kind': 'latest'}, 'has no calibration'
    if case == 'missing_input':
      return {**base, 'input': tmp / 'no.npy'}, 'does not exist'
    if case == 'empty_array':
      return ({**base, 'input': save('e.npy', np.zeros((0, 28, 28), np.uint8))},
              'holds no images')
    if case == 'empty_folder':
      (tmp / 'imgs').mkdir()
      return {**base, 'input': tmp / 'imgs'}, 'empty folder'
    if case == 'non_image_in_folder':
      (tmp / 'imgs').mkdir()
      Image.fromarray(self.pixels[0]).save(tmp / 'imgs' / 'a.png')
      (tmp / 'imgs' / 'notes.txt').write_text('hi')
      return {**base, 'input': tmp / 'imgs'}, r'notes\.txt is not a PNG/JPEG'
    if case == 'corrupt_png':
      (tmp / 'imgs').mkdir()
      (tmp / 'imgs' / 'a.png').write_bytes(b'\x89PNG not really')
      return {**base, 'input': tmp / 'imgs'}, r'Cannot read image .*a\.png'
    if case == 'unknown_format':
      (tmp / 'x.bin').write_bytes(b'hello world')
      return {**base, 'input': tmp / 'x.bin'}, 'unrecognized input format'
    if case == 'wrong_size':
      return ({**base, 'input': save('s.npy', np.zeros((2, 32, 32), np.uint8))},
              r'32x32x1 .* expects 28x28x1')
    if case == 'wrong_channels':
      return ({**base,
               'input': save('c.npy', np.zeros((2, 28, 28, 3), np.uint8))},
              r'28x28x3 .* expects 28x28x1')
    if case == 'colour_png':
      (tmp / 'imgs').mkdir()
      rgb = np.zeros((28, 28, 3), np.uint8)
      rgb[..., 0] = 255
      Image.fromarray(rgb).save(tmp / 'imgs' / 'red.png')
      return {**base, 'input': tmp / 'imgs'}, 'colour image .* greyscale'
    if case == 'png_wrong_size':
      (tmp / 'imgs').mkdir()
      Image.fromarray(np.zeros((32, 30), np.uint8)).save(tmp / 'imgs' / 'a.png')
      return {**base, 'input': tmp / 'imgs'}, r'32x30x1 .* expects 28x28x1'
    if case == 'nan_pixels':
      x = np.zeros((3, 28, 28), np.float32)
      x[1, 2, 3] = np.nan
      return ({**base, 'input': save('n.npy', x)},
              r'1 NaN/Inf pixel values \(first in image 1\)')
    if case == 'float_out_of_range':
      return ({**base, 'input': save('f.npy',
                                     np.full((2, 28, 28), 3., np.float32))},
              r'must be in \[-1, 1\]')
    if case == 'gzip_idx':
      (tmp / 'i.gz').write_bytes(b'\x1f\x8b\x08\x00rest')
      return {**base, 'input': tmp / 'i.gz'}, 'gzip-compressed'
    if case == 'truncated_idx':
      (tmp / 'i-idx3-ubyte').write_bytes(self.idx.read_bytes()[:100])
      return {**base, 'input': tmp / 'i-idx3-ubyte'}, 'not a valid IDX'
    if case == 'output_folder_missing':
      return {**base, 'output': tmp / 'no' / 's.csv'}, 'does not exist'
    if case == 'output_is_folder':
      return {**base, 'output': tmp}, 'is a folder'
    if case == 'knn_k_without_knn':
      return {**base, 'knn_k': 3}, '--knn_k applies to --score=knn only'
    if case == 'knn_without_training_data':
      return ({**base, 'workdir': self.no_data, 'score': 'knn'},
              "compares new images with the run's training images.*cannot "
              'be read.*--score=calibrated')
    if case == 'knn_k_too_large':
      return ({**base, 'score': 'knn', 'knn_k': 100000},
              r'--knn_k=100000: must be between 1 and the \d+ training normals of '
              r'the run\'s memory bank')
    raise ValueError(case)

  @parameterized.parameters(
      'missing_workdir', 'empty_workdir', 'missing_step', 'uncalibrated',
      'missing_input', 'empty_array', 'empty_folder', 'non_image_in_folder',
      'corrupt_png', 'unknown_format', 'wrong_size', 'wrong_channels',
      'colour_png', 'png_wrong_size', 'nan_pixels', 'float_out_of_range',
      'gzip_idx', 'truncated_idx', 'output_folder_missing',
      'output_is_folder', 'knn_k_without_knn', 'knn_without_training_data',
      'knn_k_too_large')
  def test_error_is_one_line_and_nonzero_exit(self, case):
    flag_values, message = self._error_inputs(case)
    status, stderr = self._main(**flag_values)
    self.assertEqual(status, 1)
    self.assertNotIn('Traceback', stderr)
    self.assertEqual(len(stderr.splitlines()), 1, stderr)
    self.assertRegex(stderr, '^error: .*' + message)
    self.assertFalse((self.tmp / 'scores.csv').exists())


if __name__ == '__main__':
  absltest.main()
