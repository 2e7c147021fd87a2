#!/usr/bin/env bash
# Set up (fresh machine or not) and run the linter and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
bash scripts/setup.sh test,bench,docs
# shellcheck disable=SC1091
. "$VENV/bin/activate"
ruff check ei_toolkit tests benchmarks examples
# One worker per core (-n auto), a test file per worker so module fixtures are built once; the slowest tests listed
python -m pytest -q -n auto --dist loadfile --durations=15 "$@"
