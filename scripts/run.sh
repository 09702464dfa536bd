#!/usr/bin/env sh
# Installs the bot into .venv and starts it; settings come from the environment and ./.env.
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check .
exec .venv/bin/python -m bot
