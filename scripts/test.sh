#!/usr/bin/env bash
# The project's one test command (README "Tests"; .ci/run calls it):
#   bash scripts/test.sh [pytest args...]
# Creates or reuses .venv, installs requirements.txt when it changed, fetches
# the offline MNIST / Fashion-MNIST files when missing, then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
