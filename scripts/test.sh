#!/usr/bin/env sh
# Installs the project with its test tools into .venv from requirements-test.lock (hash-checked), then runs
# lint, types and the tests. Usage: sh scripts/test.sh [pytest args...]
set -eu
cd "$(dirname "$0")/.."
. scripts/venv.sh
ensure_venv requirements-test.lock
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/hadolint --failure-threshold warning Dockerfile
.venv/bin/python -m pytest "$@"
