"""Per-digit: selection on 10 vs 1000 validation anomalies (same trajectories)."""
import json, sys, pathlib
# Usage: python oc_compare.py OUT_10/tuned OUT_1000/tuned (reproduce --out dirs).
OLD, NEW = (pathlib.Path(a) for a in sys.argv[1:3])
def load(root, c):
    p = root / f'mnist_oneclass_{c}/full/e10_s0/results.json'
    return json.load(open(p)) if p.exists() else None
def val_pick(r):
    # reproduce --score=val: highest validation AUROC of calibrated, raw, knn; ties in that order
    v = r['val']['best' if 'best' in r['test'] else 'last']; best = None
    for key, pre in (('calibrated', ''), ('raw', 'raw_'), ('knn', 'knn_')):
        a = v.get(pre + 'auroc')
        if a is not None and (best is None or a > best[1]): best = (key, a, pre)
    return best
rows = []
print('| digit | selected step (10 / 1000 anomalies) / last | val AUROC of the selected state (1000) | test: selected on 10 | test: selected on 1000, calibrated | raw R | feature kNN | chosen on validation | last state, calibrated |')
print('|---|---|---|---|---|---|---|---|---|')
sums = [0.0]*6; n = 0
for c in range(10):
    o, r = load(OLD, c), load(NEW, c)
    if r is None: continue
    tb, tl = r['test']['best'], r['test']['last']
    pick = val_pick(r)
    chosen = tb[pick[2] + 'auroc']
    ov = val_pick(o); old_chosen = o['test']['best'][ov[2] + 'auroc']
    vals = [old_chosen, tb['auroc'], tb['raw_auroc'], tb['knn_auroc'], chosen, tl['auroc']]
    sums = [s + v for s, v in zip(sums, vals)]; n += 1
    print(f"| {c} | {o['best_step']} / {r['best_step']} / {r['steps']} | {r['best_val_auroc']:.4f} | {old_chosen:.4f} | {tb['auroc']:.4f} | {tb['raw_auroc']:.4f} | {tb['knn_auroc']:.4f} | {chosen:.4f} ({pick[0]}) | {tl['auroc']:.4f} |")
print(f"| **mean** ({n} digits) | | | {sums[0]/n:.4f} | **{sums[1]/n:.4f}** | {sums[2]/n:.4f} | {sums[3]/n:.4f} | **{sums[4]/n:.4f}** | {sums[5]/n:.4f} |")
