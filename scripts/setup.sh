#!/usr/bin/env bash
# Idempotent set-up: .venv with requirements.txt (the exact versions), this
# checkout installed into it in editable mode (the `ama-jax` command), then
# the offline data.
#   bash scripts/setup.sh
# A second run only checks stamps and the data files' md5s (a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [[ ! -x .venv/bin/python ]] || [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "setup: installing requirements.txt into .venv"
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    -r requirements.txt 2> >(grep -v "is ignored: it is neither" >&2)
  echo "$want" > "$stamp"
else
  echo "setup: .venv is up to date"
fi
# The package itself (pyproject.toml), its dependencies being those above.
pkg_stamp=.venv/.package.sha256
pkg_want=$( (cat pyproject.toml; pwd) | sha256sum | cut -d' ' -f1)
if [[ ! -x .venv/bin/ama-jax ]] || [[ "$(cat "$pkg_stamp" 2>/dev/null)" != "$pkg_want" ]]; then
  echo "setup: installing this checkout into .venv (pip install -e .)"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check \
    --no-deps --no-build-isolation -e .
  echo "$pkg_want" > "$pkg_stamp"
fi
.venv/bin/python scripts/fetch_data.py
