#!/usr/bin/env sh
# Installs the project with its test tools into .venv, then runs lint, types and the tests.
# Usage: sh scripts/test.sh [pytest args...]
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/hadolint --failure-threshold warning Dockerfile
.venv/bin/python -m pytest "$@"
