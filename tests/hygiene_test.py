"""The tracked files speak of what the project does, not of how it was made:
no words of its development process, no paths of the machines it was made
on, no references to files outside the repository."""
import pathlib
import re
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Built from parts so that this file's own source does not match them.
_WORDS = ['iss' + 'ues?', 'sess' + 'ions?', 'sand' + 'box', 'lea' + 'se']
PATTERN = re.compile(
    '|'.join([rf'\b{w}\b' for w in _WORDS]
             + [r'iss' + r'ue ?#?\d+', '/wo' + 'rk/', '/home/[a-z0-9_]+/',
                '/Us' + 'ers/', r'\.\./sha' + 'red', r'\.\./\.\./']),
    re.IGNORECASE)
MAX_BYTES = 2 << 20


def _tracked() -> list[pathlib.Path]:
  try:
    out = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO, check=True,
                         capture_output=True).stdout
  except (OSError, subprocess.CalledProcessError):
    pytest.skip('not a git checkout')
  return [REPO / p for p in out.decode().split('\0') if p]


def test_no_development_words_paths_or_outside_references():
  hits = []
  for path in _tracked():
    if path == pathlib.Path(__file__).resolve() or not path.is_file():
      continue
    if path.stat().st_size > MAX_BYTES:
      continue
    data = path.read_bytes()
    if b'\0' in data:  # Binary.
      continue
    for number, line in enumerate(data.decode('utf-8', 'replace')
                                  .splitlines(), 1):
      if PATTERN.search(line):
        hits.append(f'{path.relative_to(REPO)}:{number}: {line.strip()[:120]}')
  assert not hits, (f'{len(hits)} line(s) speak of the development process '
                    'or of paths outside the repository:\n'
                    + '\n'.join(hits[:50]))
