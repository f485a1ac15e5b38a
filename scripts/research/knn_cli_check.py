"""Scores a run's own test split with `ama_jax.tools.score --score=knn` and
compares the AUROC with the run's results.json (feature kNN, best state)."""
import json, pathlib, subprocess, sys, time
import numpy as np
from ama_jax.data import input_pipeline
from ama_jax.models import nets as models
from ama_jax.reporting import json_safe
from ama_jax.scoring import metrics
workdir = pathlib.Path(sys.argv[1]); out = pathlib.Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)
results = json.loads((workdir / 'results.json').read_text())
config = json_safe.config_from_dict(results['config'])
data = input_pipeline.load_protocol(config.data, config.seed,
                                    input_size=models.input_size(config.model.arch))
np.save(out / 'test.npy', data.test.images)
for attempt in ('first call', 'second call'):
  t0 = time.time()
  proc = subprocess.run([sys.executable, '-m', 'ama_jax.tools.score',
                         f'--workdir={workdir}', f'--input={out}/test.npy',
                         f'--output={out}/knn.csv', '--score=knn'],
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]
  import csv
  rows = list(csv.DictReader(open(out / 'knn.csv')))
  knn = np.array([float(r['knn']) for r in rows])
  flagged = np.array([int(r['is_anomaly']) for r in rows])
  m = metrics.compute_metrics(data.test.labels, knn)
  print(f'{attempt}: {time.time() - t0:.0f} s; score CLI --score=knn test AUROC {m["auroc"]:.4f} '
        f'FPR80 {m["fpr80"]:.4f}; results.json best knn_auroc '
        f'{results["test"]["best"]["knn_auroc"]:.4f} knn_fpr80 {results["test"]["best"]["knn_fpr80"]:.4f}; '
        f'flagged: {flagged[data.test.labels == 0].mean():.3f} of normals, '
        f'{flagged[data.test.labels == 1].mean():.3f} of anomalies', flush=True)
