#!/usr/bin/env bash
# Build the documentation site strict (broken links, missing references and docstring warnings fail) into build/site/,
# or into the folder given as the first argument. Installs the docs extra into the environment first.
# View it with: python -m http.server -d build/site 8000 --bind 127.0.0.1
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
out="${1:-build/site}"
bash scripts/setup.sh docs
# shellcheck disable=SC1091
. "$VENV/bin/activate"
export NO_MKDOCS_2_WARNING=1 PYTHONDONTWRITEBYTECODE=1
mkdocs build --strict --site-dir "$out"
