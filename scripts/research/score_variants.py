"""Scores from one checkpoint: R(x) and variants, val and test AUROC.

usage: PYTHONPATH=. python scripts/research/score_variants.py WORKDIR [best|latest] [OUT.json]
"""
import json, pathlib, sys
import jax, jax.numpy as jnp, numpy as np
from sklearn.metrics import roc_auc_score
from ama_jax.data import input_pipeline
from ama_jax.reporting import json_safe
from ama_jax.scoring import detectors
from ama_jax.training import train_state

wd = pathlib.Path(sys.argv[1]); kind = sys.argv[2] if len(sys.argv) > 2 else 'best'
meta = detectors.read_checked_meta(wd, kind, None)
state, ae, critic = detectors.restore_state(wd, kind, meta)
ae_vars, cr_vars = train_state.scoring_variables(state)
config = json_safe.config_from_dict(meta['config'])
data = input_pipeline.load_protocol(config.data, config.seed)

@jax.jit
def feats(x):
  x_rec, z = ae.apply(ae_vars, x, train=False)
  _, f = critic.apply(cr_vars, jnp.concatenate([x, x]), jnp.concatenate([x, x_rec]), train=False)
  fr, ff = jnp.split(f, 2)
  return dict(z=z, fr=fr, ff=ff, l1=jnp.mean(jnp.abs(x - x_rec), axis=(1, 2, 3)),
              l2=jnp.mean((x - x_rec) ** 2, axis=(1, 2, 3)))

def run(images, bs=500):
  outs = []
  for i in range(0, len(images), bs):
    b = images[i:i + bs]; n = len(b)
    if n < bs: b = np.concatenate([b, np.zeros((bs - n,) + b.shape[1:], b.dtype)])
    outs.append(jax.tree.map(lambda a: np.asarray(a)[:n], feats(b)))
  return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}

rng = np.random.default_rng(0)
tr_idx = rng.permutation(len(data.train))[:int(__import__('os').environ.get('NTRAIN', 10000))]
F = {s: run(getattr(data, s).images if s != 'train' else data.train.images[tr_idx]) for s in ('train', 'val', 'test')}
import os
if os.environ.get('DUMP'): np.savez(os.environ['DUMP'], **{f'{s}_{k}': v for s in F for k, v in F[s].items()}, val_labels=data.val.labels, test_labels=data.test.labels)

def maha_fit(x, shrink=1e-3):
  mu = x.mean(0); c = np.cov(x - mu, rowvar=False)
  c += shrink * np.trace(c) / len(c) * np.eye(len(c))
  return mu, np.linalg.inv(c)
def maha(x, fit):
  mu, p = fit; d = x - mu; return np.einsum('ij,jk,ik->i', d, p, d)
def knn(x, ref, k=5):
  out = []
  rr = (ref ** 2).sum(1)
  for i in range(0, len(x), 1000):
    b = x[i:i + 1000]
    d = (b ** 2).sum(1)[:, None] - 2 * b @ ref.T + rr[None]
    out.append(np.sort(d, 1)[:, k - 1])
  return np.concatenate(out)

variants = {}
for s in ('train', 'val', 'test'):
  f = F[s]; variants.setdefault(s, {})
  variants[s]['R'] = np.abs(f['fr'] - f['ff']).sum(1)
  variants[s]['pix_l1'] = f['l1']; variants[s]['pix_l2'] = f['l2']
  variants[s]['znorm'] = np.linalg.norm(f['z'], axis=1)
fits = {k: maha_fit(F['train'][k]) for k in ('z', 'fr', 'ff')}
dtr = F['train']['fr'] - F['train']['ff']; fit_d = maha_fit(dtr)
for s in ('train', 'val', 'test'):
  f = F[s]
  for k in ('z', 'fr', 'ff'):
    variants[s][f'maha_{k}'] = maha(f[k], fits[k])
  variants[s]['maha_diff'] = maha(f['fr'] - f['ff'], fit_d)
  if s != 'train':
    variants[s]['knn5_fr'] = knn(f['fr'], F['train']['fr'])
    variants[s]['knn5_z'] = knn(f['z'], F['train']['z'])
mu, sd = variants['train']['R'].mean(), variants['train']['R'].std()
for s in ('val', 'test'):
  variants[s]['R_two_sided'] = ((variants[s]['R'] - mu) / sd) ** 2
res = {}
for k in variants['val']:
  res[k] = {s: float(roc_auc_score(getattr(data, s).labels, variants[s][k])) for s in ('val', 'test')}
  print(f'{k:14s} val {res[k]["val"]:.4f}  test {res[k]["test"]:.4f}')
out = pathlib.Path(sys.argv[3]) if len(sys.argv) > 3 else None
if out: out.write_text(json.dumps({'workdir': str(wd), 'kind': kind, 'step': meta['step'], 'auroc': res}, indent=1))
