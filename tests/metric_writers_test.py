"""Tests of the metric writers (`metric_writers.create_writer`)."""
import json
import pathlib
import sys
import tempfile
from unittest import mock

from absl.testing import absltest
import numpy as np

from ama_jax.reporting import metric_writers


class WriterTest(absltest.TestCase):

  def test_clu_writer_when_tensorflow_is_installed(self):
    with tempfile.TemporaryDirectory() as d:
      writer, progress = metric_writers.create_writer(pathlib.Path(d), True, 10)
      self.assertNotIsInstance(writer, metric_writers.JsonlWriter)
      self.assertTrue(hasattr(progress, 'timed'))
      writer.close()

  def test_jsonl_fallback_without_clu_writers(self):
    """No TensorFlow -> clu's writers fail to import -> metrics.jsonl."""
    with tempfile.TemporaryDirectory() as d, mock.patch.dict(
        sys.modules, {'clu.metric_writers': None}):
      workdir = pathlib.Path(d)
      writer, progress = metric_writers.create_writer(workdir, True, 10)
      self.assertIsInstance(writer, metric_writers.JsonlWriter)
      writer.write_hparams({'optim.lr': 3e-4})
      metric_writers.write_scalars(writer, 7, 'val', {'auroc': np.float32(0.5),
                                             'curve': np.zeros(3)})
      with progress.timed('eval'):
        progress(7)
      writer.flush()
      lines = [json.loads(line) for line in
               (workdir / 'metrics.jsonl').read_text().splitlines()]
      self.assertEqual(lines, [{'hparams': {'optim.lr': 3e-4}},
                               {'step': 7, 'val/auroc': 0.5}])
      other, _ = metric_writers.create_writer(workdir / 'w1', False, 10)
      other.write_scalars(1, {'a': 1.0})  # Non-chief: log only.
      self.assertFalse((workdir / 'w1' / 'metrics.jsonl').exists())


if __name__ == '__main__':
  absltest.main()
