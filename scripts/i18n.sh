#!/usr/bin/env sh
# The message catalogs, bot/locales/<catalog>/LC_MESSAGES/messages.po (gettext, read by Babel at start).
#
#   sh scripts/i18n.sh update         extract the msgids from bot/ and cogs/ and update every catalog: new texts
#                                     come in untranslated, changed ones as fuzzy guesses, removed ones go
#   sh scripts/i18n.sh init LOCALE    start the catalog of a new language (fr, pt_BR, ...), ready to translate
#   sh scripts/i18n.sh extract FILE   only extract the template (messages.pot) to FILE
#
# Marked in the source: t("..."), tn("...", "...", n), tp("context", "..."), N_("...") and Np_("context", "...").
# tests/test_i18n.py fails while a catalog lacks a text, keeps a fuzzy or stale one, or changes a placeholder.
set -eu
cd "$(dirname "$0")/.."
KEYWORDS="t tn:1,2 tp:1c,2 N_ Np_:1c,2"
LOCALES=bot/locales

if [ -z "${PYBABEL:-}" ]; then
    . scripts/venv.sh
    ensure_venv requirements.lock requirements-test.lock
    PYBABEL=.venv/bin/pybabel
fi

extract() {
    "$PYBABEL" --quiet extract --no-default-keywords --keywords="$KEYWORDS" --add-comments=TRANSLATORS: \
        --strip-comment-tags --add-location=file --project=kontext-bot --version=1 --output-file="$1" bot cogs
}

template() {
    POT="$(mktemp)"
    trap 'rm -f "$POT"' EXIT
    extract "$POT"
}

case "${1:-}" in
extract)
    extract "${2:?usage: sh scripts/i18n.sh extract FILE}"
    ;;
update)
    template
    "$PYBABEL" --quiet update --input-file="$POT" --output-dir="$LOCALES" --domain=messages --ignore-obsolete
    ;;
init)
    template
    "$PYBABEL" --quiet init --input-file="$POT" --output-dir="$LOCALES" --domain=messages \
        --locale="${2:?usage: sh scripts/i18n.sh init LOCALE}"
    ;;
*)
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
