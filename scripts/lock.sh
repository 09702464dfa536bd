#!/usr/bin/env sh
# Re-pins requirements.lock (runtime) and requirements-test.lock (runtime + test tools) from the ranges in
# pyproject.toml, with the sha256 of every file of each pinned version, for CPython 3.11 on Linux. Current
# pins are kept where they still fit; `sh scripts/lock.sh --upgrade` moves everything to the newest allowed,
# `--upgrade-package NAME` one package (any `uv pip compile` option passes through).
set -eu
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
UV_VERSION=0.13.9
TOOLS=.venv-tools
UV="$TOOLS/bin/uv"
TARGET="--python-version 3.11 --python-platform x86_64-manylinux_2_28"

if ! "$UV" --version 2>/dev/null | grep -q " $UV_VERSION "; then
    "$PYTHON" -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

# The build backend is locked too: run.sh, test.sh and the Dockerfile build the project without build isolation.
build_requires() {
    "$PYTHON" -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))'
}

compile() {
    out=$1
    shift
    # shellcheck disable=SC2086  # TARGET is two options
    build_requires | "$UV" pip compile --quiet pyproject.toml - --generate-hashes $TARGET \
        --custom-compile-command "sh scripts/lock.sh" --output-file "$out" "$@"
}

compile requirements.lock "$@"
# The runtime pins constrain the test lock, so the tests run exactly what production runs.
compile requirements-test.lock --extra test --constraint requirements.lock "$@"

# Every pinned version must have a wheel for both architectures the image may be built on.
for arch in x86_64 aarch64; do
    for lock in requirements.lock requirements-test.lock; do
        "$UV" pip compile --quiet --only-binary :all: --python-version 3.11 \
            --python-platform "$arch-manylinux_2_28" "$lock" >/dev/null
    done
done
echo "locked: requirements.lock requirements-test.lock (wheels for x86_64 and aarch64)"
