"""Command localizations: discord.py's `app_commands.Translator` over the same catalogs as the messages.

discord.py hands every name, description and choice name of every command to `translate` once per Discord locale
when the commands are synced. Names (of commands, groups and options) are looked up in the "command" context,
descriptions and choice names like any message. A text without a translation, or one that breaks Discord's rules,
gives no localization: Discord then shows the English one.
"""

from __future__ import annotations

import logging
import unicodedata

import discord
from discord import app_commands

from bot.i18n import COMMAND, catalog_for, t, tp, using_locale

__all__ = ("CatalogTranslator", "localized", "valid_localization")

log = logging.getLogger(__name__)

Location = app_commands.TranslationContextLocation
NAMES = frozenset({Location.command_name, Location.group_name, Location.parameter_name})
NAME_LIMIT, TEXT_LIMIT = 32, 100
# Scripts whose combining marks Discord's name pattern allows besides letters and digits
# (`^[-_\p{L}\p{N}\p{sc=Deva}\p{sc=Thai}]{1,32}$`).
MARKED_SCRIPTS = (("\u0900", "\u097f"), ("\u0e00", "\u0e7f"))


class CatalogTranslator(app_commands.Translator):
    """Set on the bot's tree before the commands are synced (`KontextBot.setup_hook`)."""

    async def translate(
        self, string: app_commands.locale_str, locale: discord.Locale, context: app_commands.TranslationContextTypes
    ) -> str | None:
        return localized(string.message, locale.value, context.location, slash=_is_slash(context))


def localized(message: str, locale: str, location: Location, *, slash: bool = True) -> str | None:
    """The localization of a command's text in `locale`, or None where it has none (or an invalid one).
    `slash`: a name of a slash command or its options (not of a message menu, whose names may have spaces)."""
    if catalog_for(locale) is None:
        return None
    with using_locale(locale):
        text = tp(COMMAND, message) if location in NAMES else t(message)
    if text == message:
        return None
    if not valid_localization(text, location, slash=slash):
        log.warning("the %s localization %r of %r breaks Discord's rules; it is left out", locale, text, message)
        return None
    return text


def valid_localization(text: str, location: Location, *, slash: bool = True) -> bool:
    """Discord's rules: names 1-32 characters (those of slash commands and options lowercase, without spaces:
    letters, digits, - and _), descriptions and choice names 1-100."""
    if location not in NAMES:
        return 1 <= len(text) <= TEXT_LIMIT
    if not 1 <= len(text) <= NAME_LIMIT:
        return False
    return not slash or (text == text.lower() and all(map(_name_character, text)))


def _name_character(char: str) -> bool:
    return (
        char in "-_"
        or unicodedata.category(char)[0] in "LN"
        or any(low <= char <= high for low, high in MARKED_SCRIPTS)
    )


def _is_slash(context: app_commands.TranslationContextTypes) -> bool:
    return not isinstance(context.data, app_commands.ContextMenu)
