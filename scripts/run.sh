#!/usr/bin/env bash
# Set up (fresh machine or not) and run the main job on its built-in default.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
bash scripts/setup.sh bench
# shellcheck disable=SC1091
. "$VENV/bin/activate"
ei-toolkit "$@"
