"""Per digit: are the per-step training metrics identical in the 10- and 1000-anomaly runs?"""
import json, sys, pathlib
# Usage: python same_traj.py OUT_10/tuned OUT_1000/tuned (reproduce --out dirs).
OLD, NEW = (pathlib.Path(a) for a in sys.argv[1:3])
def load(p):
    return {r['step']: r for r in map(json.loads, open(p)) if r.get('kind') == 'train'}
for c in range(10):
    n = NEW / f'mnist_oneclass_{c}/full/e10_s0'
    if not (n / 'results.json').exists(): continue
    a, b = load(OLD / f'mnist_oneclass_{c}/full/e10_s0/history.jsonl'), load(n / 'history.jsonl')
    common = sorted(a.keys() & b.keys())
    diff = [s for s in common if a[s] != b[s]]
    print(c, 'steps', len(a), len(b), 'identical' if not diff and len(a) == len(b) else f'differ from step {diff[:1]}')
