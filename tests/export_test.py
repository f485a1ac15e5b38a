"""Your own images end to end: a folder of real MNIST PNGs is trained on
(`configs/folder.py:runlocal`), scored by `ama_jax.tools.score`, exported
by `ama_jax.tools.export` and scored again by the loader the export writes
(`score_exported.py`) in a fresh process that imports neither ama_jax nor flax; and a 200,000-image .npy is
scored with bounded memory.
"""
import csv
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
from unittest import mock

from absl import flags
from absl.testing import absltest
import numpy as np
from PIL import Image

from ama_jax.scoring import export
from ama_jax.scoring import score_error
from ama_jax.training import loop
from ama_jax.reporting import report
from ama_jax.data import idx_images
from ama_jax.data import image_files
from ama_jax.data import image_folder
from ama_jax.tools import export as export_tool
from ama_jax.tools import score
from configs import folder as folder_config

REPO = pathlib.Path(__file__).resolve().parents[1]
RAW_DIR = idx_images.DEFAULT_RAW_DIR
NUM_TEST = 60


def _read_csv(path: pathlib.Path) -> dict[str, np.ndarray]:
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  return {k: np.array([row[k] for row in rows]) for k in rows[0]}


def _train(config, workdir: pathlib.Path) -> dict:
  loop.train_and_evaluate(config, str(workdir))
  return json.loads((workdir / 'results.json').read_text())


class OwnFolderEndToEndTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = pathlib.Path(tempfile.mkdtemp(prefix='export_test_'))
    cls.addClassCleanup(shutil.rmtree, cls.root, ignore_errors=True)
    x, y = idx_images.read_split(RAW_DIR / 'mnist', 'train')
    xt, yt = idx_images.read_split(RAW_DIR / 'mnist', 'test')
    # One subfolder per digit, the user's own train/ and test/ sets.
    cls.images = cls.root / 'digits'
    image_folder.write_pngs(cls.images / 'train', x[:1500], y[:1500])
    image_folder.write_pngs(cls.images / 'test', xt[:200], yt[:200])
    config = folder_config.get_config('3,runlocal')
    config.data.dataset = f'folder:{cls.images}'
    config.data.data_dir = str(cls.root / 'tfds')
    config.log.figures = False
    cls.workdir = cls.root / 'run'
    cls.results = _train(config, cls.workdir)
    # New real images to score: MNIST test digits, as PNGs and as .npy.
    cls.new = xt[:NUM_TEST]
    cls.pngs = cls.root / 'new'
    image_folder.write_pngs(cls.pngs, cls.new)
    cls.npy = cls.root / 'new.npy'
    np.save(cls.npy, cls.new[..., 0])
    cls.exported = cls.root / 'export'
    export.run(cls.workdir, cls.exported)

  def test_folder_run_selects_on_its_known_anomalies(self):
    self.assertEqual(self.results['model_selection']['criterion'],
                     'best_val_auroc')
    self.assertEqual(self.results['counts']['val'], {
        'total': 30, 'normal': 20, 'anomaly': 10, 'corrupted': 0})
    self.assertEqual(self.results['counts']['test']['total'], 64)  # max_test
    self.assertBetween(self.results['test']['best']['auroc'], 0.0, 1.0)

  def test_score_cli_on_real_pngs_and_the_exported_loader_agree(self):
    out = self.root / 'cli.csv'
    proc = subprocess.run(
        [sys.executable, '-m', 'ama_jax.tools.score',
         f'--workdir={self.workdir}', f'--input={self.pngs}',
         f'--output={out}'],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    cli = _read_csv(out)
    self.assertEqual(list(cli['id']), sorted(p.name for p in
                                             self.pngs.iterdir()))

    # The export's own loader, in a fresh process: jax and numpy only.
    work = pathlib.Path(self.create_tempdir().full_path)
    script = work / 'loader.py'
    script.write_text((self.exported / 'score_exported.py').read_text()
                      + textwrap.dedent('''
        assert 'ama_jax' not in sys.modules and 'flax' not in sys.modules, (
            sorted(m for m in sys.modules if m.split('.')[0] in
                   ('ama_jax', 'flax')))
        '''))
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    loaded = work / 'loaded.csv'
    proc = subprocess.run(
        [sys.executable, str(script), str(self.exported), str(self.npy),
         str(loaded)], cwd=work, env=env, capture_output=True, text=True,
        timeout=600, check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    got = np.loadtxt(loaded, delimiter=',', skiprows=1)
    # Both score with the run's chosen detector (label-free: the kNN score,
    # its memory bank baked into the export).
    column = 'knn' if 'knn' in cli else 'score'
    self.assertEqual(column, self.results['chosen']['score'].replace(
        'calibrated', 'score'))
    r, scores = cli['r'].astype(float), cli[column].astype(float)
    np.testing.assert_allclose(got[:, 0], r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[:, 1], scores, rtol=1e-5, atol=1e-5)
    agree = got[:, 2].astype(int) == cli['is_anomaly'].astype(int)
    self.assertGreaterEqual(agree.mean(), 0.95)  # Threshold ties may flip.

    # ama_jax.tools.score takes the exported directory as well.
    via_export = self.root / 'export.csv'
    summary = score.run(self.exported, self.npy, via_export)
    self.assertEqual(summary['kind'], 'exported')
    exported = _read_csv(via_export)
    np.testing.assert_allclose(exported['r'].astype(float), r, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(exported[column].astype(float), scores,
                               rtol=1e-5, atol=1e-5)
    # An export of the calibrated score holds no training features: the
    # feature kNN score is refused there.
    calibrated = self.root / 'export_calibrated'
    export.run(self.workdir, calibrated, score='calibrated', platforms=['cpu'])
    with self.assertRaisesRegex(score_error.ScoreError,
                                'exported scorer.*no training features'):
      score.run(calibrated, self.npy, self.root / 'knn.csv', score='knn')
    self.assertFalse((self.root / 'knn.csv').exists())

  def test_savedmodel_scores_with_tensorflow_alone(self):
    out = self.root / 'export_tf'
    export.run(self.workdir, out, savedmodel=True, platforms=['cpu'])
    code = textwrap.dedent(f'''
        import sys
        import numpy as np
        import tensorflow as tf
        model = tf.saved_model.load('{out}/savedmodel')
        x = np.load('{self.npy}').astype(np.float32)[..., None] / 127.5 - 1
        out = model.signatures['serving_default'](images=tf.constant(x))
        # (TensorFlow imports jax itself when it is installed.)
        assert 'ama_jax' not in sys.modules and 'flax' not in sys.modules
        np.savetxt('{out}/tf.csv', np.stack([out['r'].numpy(),
                   out['score'].numpy()], 1), delimiter=',')
        ''')
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    proc = subprocess.run([sys.executable, '-c', code], cwd=out, env=env,
                          capture_output=True, text=True, timeout=600,
                          check=False)
    self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
    got = np.loadtxt(out / 'tf.csv', delimiter=',')
    want = self.root / 'want.csv'
    score.run(self.workdir, self.npy, want)
    want = _read_csv(want)
    np.testing.assert_allclose(got[:, 0], want['r'].astype(float), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(
        got[:, 1], want['knn' if 'knn' in want else 'score'].astype(float),
        rtol=1e-5, atol=1e-5)

  def test_score_converts_images_as_training_did(self):
    # The run brought its images to 28x28 (data.image_size): larger colour
    # files go through the same image_files.fit.
    big = pathlib.Path(self.create_tempdir().full_path)
    fitted = []
    for i, image in enumerate(self.new[:8, ..., 0]):
      pil = Image.fromarray(image).resize((56, 48)).convert('RGB')
      pil.save(big / f'{i}.png')
      fitted.append(image_files.fit(image_files.read(big / f'{i}.png'),
                                    (28, 28, 1), 'bilinear'))
    npy = big.parent / 'fitted.npy'
    np.save(npy, np.stack(fitted))
    a, b = big.parent / 'a.csv', big.parent / 'b.csv'
    score.run(self.workdir, big, a)
    score.run(self.workdir, npy, b)
    np.testing.assert_array_equal(_read_csv(a)['r'], _read_csv(b)['r'])

  def test_export_writes_a_self_describing_folder(self):
    meta = json.loads((self.exported / 'scorer.json').read_text())
    self.assertEqual(meta['image_shape'], [28, 28, 1])
    self.assertEqual(meta['preprocessing'], {'image_size': [28, 28],
                                             'channels': None,
                                             'resize': 'bilinear'})
    self.assertEqual(meta['platforms'], ['cpu', 'cuda', 'tpu'])
    self.assertEqual((self.exported / 'score_exported.py').read_text(),
                     export.LOADER)

  def test_export_errors_are_one_line(self):
    stderr = io.StringIO()
    fv = flags.FlagValues()
    export_tool.define_flags(fv)
    fv(['export', f'--workdir={self.root / "nowhere"}',
        f'--output={self.root / "e2"}'])
    with mock.patch.object(sys, 'stderr', stderr):
      self.assertEqual(export_tool.main(['export'], fv), 1)
    self.assertRegex(stderr.getvalue(), r'^error: Workdir .*nowhere does not '
                     r'exist[^\n]*\n$')

  def test_large_npy_scores_in_chunks_with_bounded_memory(self):
    big = self.root / 'big.npy'
    small = self.root / 'small.npy'
    rng = np.random.default_rng(0)
    rows = self.new[rng.integers(0, NUM_TEST, 200000), ..., 0]
    np.save(big, rows)
    np.save(small, rows[:5000])
    del rows
    # Peak resident memory of the command on 5,000 and on 200,000 images
    # (157 MB of uint8 pixels, 627 MB as float32), each in its own process.
    code = textwrap.dedent('''
        import resource, sys
        from absl import flags
        from ama_jax.tools import score
        fv = flags.FlagValues()
        score.define_flags(fv)
        fv(['score'] + sys.argv[1:])
        assert score.main(['score'], fv) == 0
        print('peak_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        ''')
    peaks, stderr = [], ''
    for name in ('small', 'big'):
      proc = subprocess.run(
          [sys.executable, '-c', code, f'--workdir={self.exported}',
           f'--input={self.root / name}.npy',
           f'--output={self.root / name}.csv', '--batch_size=2000'],
          cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
      self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
      peaks.append(int(proc.stdout.split('peak_kb')[1]))
      stderr = proc.stderr
    self.assertLess(peaks[1] - peaks[0], 150 * 1024, peaks)
    self.assertIn('scoring [', stderr)  # The progress line.
    self.assertIn('200000/200000 images (100%)', stderr)
    got = _read_csv(self.root / 'big.csv')
    self.assertLen(got['r'], 200000)
    np.testing.assert_array_equal(got['r'][:5000],
                                  _read_csv(self.root / 'small.csv')['r'])


class NormalAndAnomalyFoldersTest(absltest.TestCase):
  """normal/ + anomaly/, mixed sizes and colour, test held out."""

  def test_mixed_folder_trains_and_scores(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    x, y = idx_images.read_split(RAW_DIR / 'mnist', 'train')
    fx, _ = idx_images.read_split(RAW_DIR / 'fashion_mnist', 'test')
    images = root / 'images'
    (images / 'normal').mkdir(parents=True)
    for i, image in enumerate(x[y == 3][:200, ..., 0]):
      pil = Image.fromarray(image)
      if i % 3 == 1:  # A colour JPEG of another size.
        pil.resize((40, 36)).convert('RGB').save(
            images / 'normal' / f'{i:03d}.jpg', quality=95)
      else:
        pil.resize((56, 56) if i % 3 else (28, 28)).save(
            images / 'normal' / f'{i:03d}.png')
    image_folder.write_pngs(images / 'anomaly', fx[:60])
    config = folder_config.get_config('runlocal')
    config.data.update(dict(dataset=f'folder:{images}', channels=1,
                            data_dir=str(root / 'tfds')))
    config.log.figures = False
    results = _train(config, root / 'run')
    self.assertEqual(results['counts']['test'], {
        'total': 52, 'normal': 40, 'anomaly': 12, 'corrupted': 0})
    self.assertEqual(results['model_selection']['criterion'],
                     'best_val_auroc')
    # New images of any size and colour are converted as in training.
    summary = score.run(root / 'run', images / 'normal', root / 's.csv')
    self.assertEqual(summary['num_images'], 200)


class NormalsOnlyTest(absltest.TestCase):
  """A folder with normal/ only: no anomalies anywhere."""

  def test_unsupervised_run_keeps_the_last_state(self):
    root = pathlib.Path(self.create_tempdir().full_path)
    x, y = idx_images.read_split(RAW_DIR / 'fashion_mnist', 'test')
    image_folder.write_pngs(root / 'images' / 'normal', x[y == 1][:200])
    config = folder_config.get_config('runlocal')
    config.data.dataset = f'folder:{root / "images"}'
    config.data.data_dir = str(root / 'tfds')
    workdir = root / 'run'
    results = _train(config, workdir)
    self.assertEqual(results['model_selection']['criterion'], 'last_state')
    self.assertNotIn('best', results['test'])
    self.assertEqual(results['counts']['val']['anomaly'], 0)
    self.assertTrue(np.isnan(results['test']['last']['auroc']))
    self.assertFalse((workdir / 'best').exists() and any(
        (workdir / 'best').iterdir()))
    self.assertIn('model selection: validation holds no anomalies',
                  report.summary(str(workdir)))
    # Nor a score chosen on validation (no AUROC to choose by).
    self.assertNotIn('score_chosen_on_validation', results)
    self.assertNotIn('score chosen', report.summary(str(workdir)))
    # Scoring falls back to the latest checkpoint.
    npy = root / 'new.npy'
    np.save(npy, x[:10])
    summary = score.run(workdir, npy, root / 's.csv')
    self.assertEqual(summary['kind'], 'latest')


if __name__ == '__main__':
  absltest.main()
