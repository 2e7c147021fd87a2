#!/usr/bin/env bash
# Create (or reuse) a virtual environment and install ei_toolkit into it.
# Usage: scripts/setup.sh [extras]   e.g. scripts/setup.sh test    (VENV=path to choose the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
extras="${1:-}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# The CPU build of torch 2.13.0 first: a plain 'torch' requirement could pull a multi-GB CUDA build.
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
if [ -n "$extras" ]; then
  python -m pip install --quiet --disable-pip-version-check -e ".[$extras]"
else
  python -m pip install --quiet --disable-pip-version-check -e .
fi
case ",$extras," in
  *,bench,*)
    # k-diffusion's samplers only; --no-deps keeps its torchvision/CUDA-torch requirements out.
    python -m pip install --quiet --disable-pip-version-check --no-deps "k-diffusion==0.1.1.post1" ;;
esac
