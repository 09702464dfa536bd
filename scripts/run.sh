#!/usr/bin/env sh
# Installs the bot into .venv from requirements.lock (hash-checked) and starts it; settings come from the
# environment and ./.env. A .venv made by test.sh (a superset of the same pins) is used as it is.
set -eu
cd "$(dirname "$0")/.."
. scripts/venv.sh
ensure_venv requirements.lock requirements-test.lock
exec .venv/bin/python -m bot
