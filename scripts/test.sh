#!/usr/bin/env bash
# Set up (fresh machine or not) and run the linter and the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
bash scripts/setup.sh test,bench,docs
# shellcheck disable=SC1091
. "$VENV/bin/activate"
ruff check ei_toolkit tests benchmarks examples
python -m pytest -q "$@"
