"""Every user-facing text goes through `t` (and `tn` for counts), in the locale of the current context.

The locale is a context variable: an interaction handler sets it from `interaction.locale`, a job's
task from the locale stored with the job, so texts built anywhere below come out in that language.
Messages are English msgids with `{named}` placeholders, as gettext expects.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ("DEFAULT_LOCALE", "N_", "current_locale", "t", "tn", "using_locale")

DEFAULT_LOCALE = "en-US"

_locale: contextvars.ContextVar[str] = contextvars.ContextVar("locale", default=DEFAULT_LOCALE)


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


def t(message: str, /, **params: Any) -> str:
    """The translation of `message` in the current locale, with its placeholders filled in."""
    return message.format(**params) if params else message


def tn(singular: str, plural: str, count: int, /, **params: Any) -> str:
    """Like `t`, choosing the plural form for `count` (also available as `{count}`)."""
    return (singular if count == 1 else plural).format(count=count, **params)


def N_(message: str, /) -> str:  # gettext's name for "mark for translation, translate later"
    """Marks a constant text for the catalog; pass it through `t` where it is shown."""
    return message
