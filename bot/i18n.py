"""Every user-facing text goes through `t` (and `tn` for counts), in the locale of the current context.

The locale is a context variable: an interaction handler sets it from `interaction.locale`, a job's
task from the locale stored with the job, so texts built anywhere below come out in that language.
Messages are English msgids with `{named}` placeholders, as gettext expects.

The catalogs are gettext `.po` files, `bot/locales/<catalog>/LC_MESSAGES/messages.po`, read with Babel the first
time a locale needs one (`preload` reads them all at start) and kept in memory as `gettext` translations: there is
no build step. A Discord locale takes the catalog of its own name (`zh-CN` → zh_CN), else that of its language
(`es-ES` → es); without one it stays English (`zh-TW`, `en-GB`). Untranslated and fuzzy entries are English too.
`scripts/i18n.sh` extracts the msgids from the source and updates the catalogs (README, "Adding a language").
"""

from __future__ import annotations

import contextvars
import functools
import gettext
import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

__all__ = (
    "COMMAND",
    "DEFAULT_LOCALE",
    "DOMAIN",
    "LOCALE_DIR",
    "N_",
    "Np_",
    "catalog_for",
    "catalog_path",
    "catalogs",
    "current_locale",
    "preload",
    "t",
    "tn",
    "tp",
    "translations",
    "using_locale",
)

log = logging.getLogger(__name__)

DEFAULT_LOCALE = "en-US"
LOCALE_DIR = Path(__file__).with_name("locales")
DOMAIN = "messages"
COMMAND = "command"  # msgctxt of command, group and option names (lowercase words Discord shows in the command bar)

_locale: contextvars.ContextVar[str] = contextvars.ContextVar("locale", default=DEFAULT_LOCALE)
_ENGLISH = gettext.NullTranslations()


def current_locale() -> str:
    return _locale.get()


@contextmanager
def using_locale(locale: str | None) -> Iterator[None]:
    """Texts built inside the block come out in `locale` (the default when None)."""
    token = _locale.set(locale or DEFAULT_LOCALE)
    try:
        yield
    finally:
        _locale.reset(token)


# --- catalogs -------------------------------------------------------------------------------------------


def catalog_path(catalog: str) -> Path:
    return LOCALE_DIR / catalog / "LC_MESSAGES" / f"{DOMAIN}.po"


@functools.cache
def catalogs() -> frozenset[str]:
    """The catalogs there are (`zh_CN`, ...); English, the source language, has none."""
    return frozenset(path.parent.parent.name for path in LOCALE_DIR.glob(f"*/LC_MESSAGES/{DOMAIN}.po"))


def catalog_for(locale: str) -> str | None:
    """The catalog for a Discord locale code: its own (`zh-CN` → zh_CN), else its language's (`pt-BR` → pt);
    None (English) when there is neither."""
    code = locale.replace("-", "_")
    available = catalogs()
    if code in available:
        return code
    language = code.partition("_")[0]
    return language if language in available else None


@functools.cache
def translations(catalog: str) -> gettext.GNUTranslations:
    """One catalog, read from its `.po` with Babel and compiled in memory; fuzzy entries are left out."""
    with catalog_path(catalog).open("rb") as po:
        parsed = read_po(po, locale=catalog, domain=DOMAIN)
    compiled = io.BytesIO()
    write_mo(compiled, parsed, use_fuzzy=False)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


@functools.lru_cache(maxsize=128)
def _for_locale(locale: str) -> gettext.NullTranslations:
    catalog = catalog_for(locale)
    return translations(catalog) if catalog is not None else _ENGLISH


def preload() -> int:
    """Read every catalog now (at start, so that no interaction waits for it, and a broken one stops the bot)."""
    for catalog in sorted(catalogs()):
        translations(catalog)
    return len(catalogs())


# --- texts ----------------------------------------------------------------------------------------------


def t(message: str, /, **params: Any) -> str:
    """The translation of `message` in the current locale, with its placeholders filled in."""
    text = _for_locale(_locale.get()).gettext(message)
    return _filled(text, message, params) if params else text


def tn(singular: str, plural: str, count: int, /, **params: Any) -> str:
    """Like `t`, choosing the plural form for `count` (also available as `{count}`)."""
    text = _for_locale(_locale.get()).ngettext(singular, plural, count)
    return _filled(text, singular if count == 1 else plural, {"count": count, **params})


def tp(context: str, message: str, /, **params: Any) -> str:
    """Like `t`, for a message in a context (gettext's `pgettext`), e.g. an option's name: `tp(COMMAND, name)`."""
    text = _for_locale(_locale.get()).pgettext(context, message)
    return _filled(text, message, params) if params else text


def _filled(text: str, english: str, params: dict[str, Any]) -> str:
    """`text` with its placeholders filled in; a translation whose placeholders are wrong gives way to English."""
    try:
        return text.format(**params)
    except (KeyError, IndexError, ValueError):
        log.warning("the %s translation of %r has wrong placeholders", current_locale(), english)
        return english.format(**params)


# --- markers for the extractor --------------------------------------------------------------------------


def N_(message: str, /) -> str:  # gettext's name for "mark for translation, translate later"
    """Marks a constant text for the catalog; pass it through `t` where it is shown (command descriptions and
    choice names are translated by `bot.translator`)."""
    return message


def Np_(context: str, message: str, /) -> str:
    """Marks a text of a context for the catalog, e.g. `Np_("command", "show")`: a command's or option's name, which
    `bot.translator` translates. Write the context as a literal (the extractor reads it; `COMMAND` it can't)."""
    return message
