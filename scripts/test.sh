#!/usr/bin/env sh
# Installs the project with its test tools into .venv from requirements-test.lock (hash-checked), then runs
# lint, types and the tests. Usage: sh scripts/test.sh [pytest args...]
set -eu
cd "$(dirname "$0")/.."
# The store tests start a throwaway PostgreSQL server: as root (CI), install Debian's when it is missing.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's postgresql for the PostgreSQL tests" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
fi
. scripts/venv.sh
ensure_venv requirements-test.lock
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/hadolint --failure-threshold warning Dockerfile
.venv/bin/python -m pytest "$@"
