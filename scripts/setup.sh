#!/usr/bin/env bash
# Idempotent set-up: .venv with requirements.txt, then the offline data.
#   bash scripts/setup.sh
# A second run only checks a stamp and the data files' md5s (a few seconds).
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
.venv/bin/python scripts/fetch_data.py
