# Sourced by run.sh and test.sh: `ensure_venv LOCK [OTHER_LOCK_ALSO_GOOD]` makes .venv hold exactly LOCK.
# .venv/lock.sha256 names the lock .venv was installed from and that lock's sha256. While it matches, nothing
# is installed (a fast re-run); when the lock changed, .venv is rebuilt from scratch, so no stale package stays.
# The project is installed editable without dependencies (all are in the lock), again only when pyproject.toml
# changed (.venv/project.sha256).
PYTHON="${PYTHON:-python3}"
VENV=.venv
PIP="$VENV/bin/python -m pip --disable-pip-version-check --quiet"

file_hash() {
    "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' "$1"
}

venv_matches() {
    [ -x "$VENV/bin/python" ] && [ -f "$VENV/lock.sha256" ] || return 1
    for lock in "$@"; do
        [ "$(cat "$VENV/lock.sha256")" = "$lock $(file_hash "$lock")" ] && return 0
    done
    return 1
}

install_lock() {
    echo "installing $1 into $VENV" >&2
    rm -rf "$VENV" &&
        "$PYTHON" -m venv "$VENV" &&
        $PIP install --require-hashes -r "$1" &&
        echo "$1 $(file_hash "$1")" >"$VENV/lock.sha256"
}

install_project() {
    [ "$(cat "$VENV/project.sha256" 2>/dev/null)" = "$(file_hash pyproject.toml)" ] && return 0
    # No build isolation: the build backend (setuptools) comes from the lock, not from an unpinned download.
    $PIP install --no-deps --no-build-isolation --editable . &&
        file_hash pyproject.toml >"$VENV/project.sha256"
}

ensure_venv() {
    { venv_matches "$@" || install_lock "$1"; } && install_project
}
