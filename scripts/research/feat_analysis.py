import sys, numpy as np
from sklearn.metrics import roc_auc_score
d = dict(np.load(sys.argv[1]))
d = {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in d.items()}
ytv = {s: d[f'{s}_labels'] for s in ('val', 'test')}
def knn(x, ref, ks=(1, 5, 20)):
  rr = (ref ** 2).sum(1); out = {k: [] for k in ks}
  for i in range(0, len(x), 500):
    b = x[i:i + 500]; dd = (b ** 2).sum(1)[:, None] - 2 * b @ ref.T + rr[None]
    dd = np.partition(dd, max(ks), axis=1)[:, :max(ks) + 1]; dd.sort(1)
    for k in ks: out[k].append(dd[:, k - 1])
  return {k: np.concatenate(v) for k, v in out.items()}
def show(name, sv, st):
  print(f'{name:28s} val {roc_auc_score(ytv["val"], sv):.4f} test {roc_auc_score(ytv["test"], st):.4f}', flush=True)
tr = {k: d[f'train_{k}'] for k in ('fr', 'ff', 'z')}
print('train', len(tr['fr']), 'feat dim', tr['fr'].shape[1])
def norm(x): return x / np.linalg.norm(x, axis=1, keepdims=True)
cands = {'fr': lambda s: d[f'{s}_fr'], 'ff': lambda s: d[f'{s}_ff'],
         'cat': lambda s: np.concatenate([d[f'{s}_fr'], d[f'{s}_ff']], 1),
         'fr_cos': lambda s: norm(d[f'{s}_fr'])}
for name, f in cands.items():
  ref = f('train')
  kv, kt = knn(f('val'), ref), knn(f('test'), ref)
  for k in kv: show(f'knn{k}_{name}', kv[k], kt[k])
