#!/usr/bin/env bash
# Set up (fresh machine or not) and run the main job on its built-in default: the accuracy comparison
# against diffusers and k-diffusion (benchmarks/compare.py; arguments go to it, see its --help).
# The package's own command line, for describe / sample / compare without peers, is `ei-toolkit`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
bash scripts/setup.sh bench
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python benchmarks/compare.py "$@"
