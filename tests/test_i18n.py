"""The catalogs against the source, and the translation layer itself.

The msgids are extracted from bot/ and cogs/ by Babel through the maintainers' own script (`scripts/i18n.sh
extract`, the keywords it uses), so a text marked in the source but missing from a catalog, left fuzzy or
untranslated there, with other placeholders, or kept there after the source dropped it, fails here.
"""

from __future__ import annotations

import asyncio
import gettext
import io
import os
import re
import string
import subprocess
import sys
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
from babel.messages.catalog import Catalog, Message
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

from bot import i18n
from bot.i18n import COMMAND, catalog_for, catalog_path, catalogs, t, tn, tp, using_locale
from bot.translator import Location, localized, valid_localization

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "i18n.sh"
Key = tuple[str | None, object]  # (msgctxt, msgid or (singular, plural))


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[Key, Message]:
    """The messages.pot of the current source, made as a maintainer makes it."""
    pot = tmp_path_factory.mktemp("pot") / "messages.pot"
    env = {**os.environ, "PYBABEL": str(Path(sys.executable).parent / "pybabel")}
    done = subprocess.run(["sh", str(SCRIPT), "extract", str(pot)], cwd=ROOT, env=env, capture_output=True, text=True)  # noqa: S603, S607
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr.lower(), done.stderr  # e.g. an f-string inside t(): not extractable
    with pot.open("rb") as file:
        return _messages(read_po(file))


def _messages(catalog: Catalog) -> dict[Key, Message]:
    return {(m.context, m.id): m for m in catalog if m.id}


def _read(name: str) -> Catalog:
    with catalog_path(name).open("rb") as file:
        return read_po(file, locale=name)


def _fields(text: str) -> set[tuple[str, str, str | None]]:
    """The `{placeholders}` of a text with their format specs and conversions; bad braces raise ValueError."""
    return {(name, spec or "", conversion) for _, name, spec, conversion in string.Formatter().parse(text) if name}


def _markup(text: str) -> Counter[str]:
    """What must survive translation: Discord markdown, mentions and timestamps, emoji, line structure."""
    found: Counter[str] = Counter(re.findall(r"\*\*|`|<[^<>\s]+>|\n|^-# |^- ", text, flags=re.MULTILINE))
    found.update(char for char in text if unicodedata.category(char) == "So")
    return found


CATALOGS = sorted(catalogs())
NAME = Location.command_name
QUEUE = ("In the queue: {count} job ahead", "In the queue: {count} jobs ahead")


def test_there_is_a_simplified_chinese_catalog():
    assert "zh_CN" in CATALOGS


@pytest.mark.parametrize("name", CATALOGS)
def test_every_message_of_the_source_is_translated(template: dict[Key, Message], name: str):
    messages = _messages(_read(name))
    missing = [key for key in template if key not in messages]
    fuzzy = [key for key in template if key in messages and messages[key].fuzzy]
    empty = [key for key in template if key in messages and not all(_strings(messages[key]))]
    assert (missing, fuzzy, empty) == ([], [], [])


@pytest.mark.parametrize("name", CATALOGS)
def test_no_catalog_keeps_a_message_the_source_dropped(template: dict[Key, Message], name: str):
    catalog = _read(name)
    stale = [key for key in _messages(catalog) if key not in template]
    assert stale == [] and list(catalog.obsolete) == []  # `sh scripts/i18n.sh update` removes both


@pytest.mark.parametrize("name", CATALOGS)
def test_translations_keep_the_placeholders(template: dict[Key, Message], name: str):
    messages = _messages(_read(name))
    wrong = []
    for key, source in template.items():
        english = set().union(*(_fields(text) for text in _ids(source)))
        if key in messages and any(_fields(text) != english for text in _strings(messages[key])):
            wrong.append(key)
    assert wrong == []


@pytest.mark.parametrize("name", CATALOGS)
def test_translations_keep_markdown_mentions_and_emoji(template: dict[Key, Message], name: str):
    messages = _messages(_read(name))
    changed = [
        (key, text)
        for key, source in template.items() if key in messages
        for text in _strings(messages[key]) if _markup(text) != _markup(_ids(source)[-1])
    ]  # fmt: skip
    assert changed == []


@pytest.mark.parametrize("name", CATALOGS)
def test_commands_named_in_messages_carry_their_translated_names(name: str):
    """A message that tells the user to run /kontext-admin names it as their Discord shows it."""
    messages = _messages(_read(name))
    names = {str(m.id): str(m.string) for (context, _), m in messages.items() if context == COMMAND}
    wrong = []
    for (context, msgid), message in messages.items():
        for command in re.findall(r"/(kontext[-a-z]*)", str(msgid)) if context is None else ():
            if f"/{names[command]}" not in str(message.string):
                wrong.append((msgid, command))
    assert wrong == []


@pytest.mark.parametrize("name", CATALOGS)
def test_command_name_translations_follow_discords_rules(name: str):
    messages = _messages(_read(name))
    names = [(str(m.id), str(m.string)) for (context, _), m in messages.items() if context == COMMAND]
    bad = [(msgid, text) for msgid, text in names if not valid_localization(text, NAME, slash=" " not in msgid)]
    assert bad == []


def _ids(message: Message) -> tuple[str, ...]:
    return tuple(message.id) if isinstance(message.id, tuple | list) else (message.id,)


def _strings(message: Message) -> tuple[str, ...]:
    return tuple(message.string) if isinstance(message.string, tuple | list) else (message.string or "",)


# --- the layer ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("locale", "catalog"),
    [("zh-CN", "zh_CN"), ("zh-TW", None), ("en-US", None), ("en-GB", None), ("fr", None), ("pt-BR", None)],
)
def test_discord_locales_map_to_their_catalog_or_english(locale: str, catalog: str | None):
    assert catalog_for(locale) == catalog


def test_a_regional_locale_takes_its_languages_catalog(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(i18n, "catalogs", lambda: frozenset({"zh_CN", "es", "pt_BR"}))

    assert [catalog_for(code) for code in ("es-ES", "es-419", "pt-BR", "zh-TW", "zh-CN", "fr")] == [
        "es", "es", "pt_BR", None, "zh_CN", None,
    ]  # fmt: skip


def test_texts_come_out_in_the_current_locale():
    assert t("Cancel") == "Cancel" and tp(COMMAND, "seed") == "seed"  # English by default
    with using_locale("zh-CN"):
        assert t("Cancel") == "取消"
        assert t("Only <@{user}> or a moderator can cancel this job.", user=5) == "只有 <@5> 或版主才能取消这个任务。"
        assert tn(*QUEUE, 1) == "排队中：前面还有 1 个任务"  # noqa: RUF001
        assert tn(*QUEUE, 3) == "排队中：前面还有 3 个任务"  # noqa: RUF001
        assert tp(COMMAND, "seed") == "种子" and t("seed") == "seed"  # the option's name is not the word "seed"
        assert t("A text no catalog has, {name}", name="x") == "A text no catalog has, x"
        with using_locale("zh-TW"):
            assert t("Cancel") == "Cancel"
        assert t("Cancel") == "取消"
    with using_locale(None):
        assert tn("{amount} byte", "{amount} bytes", 2, amount="2") == "2 bytes"


async def test_the_locale_follows_each_task():
    async def text(locale: str) -> str:
        with using_locale(locale):
            await asyncio.sleep(0.01)
            return t("Reroll")

    assert list(await asyncio.gather(text("zh-CN"), text("en-US"), text("zh-CN"))) == ["重新生成", "Reroll", "重新生成"]


def _compiled(*messages: Message) -> gettext.GNUTranslations:
    catalog = Catalog(locale="zh_CN")
    for message in messages:
        catalog[message.id] = message
    compiled = io.BytesIO()
    write_mo(compiled, catalog)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


def test_a_translation_with_wrong_placeholders_gives_way_to_english(monkeypatch: pytest.MonkeyPatch):
    broken = _compiled(Message("Hello {name}", "你好 {nom}"), Message("Bye {name}", "再见 {name"))
    monkeypatch.setattr(i18n, "_for_locale", lambda locale: broken)

    assert t("Hello {name}", name="Ann") == "Hello Ann" and t("Bye {name}", name="Ann") == "Bye Ann"


def test_fuzzy_entries_are_not_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    catalog = Catalog(locale="xx")
    catalog.add("Reroll", "guessed", flags=["fuzzy"])
    catalog.add("Cancel", "reviewed")
    folder = tmp_path / "xx" / "LC_MESSAGES"
    folder.mkdir(parents=True)
    (folder / "messages.po").write_text(_po_text(catalog), encoding="utf-8")
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)

    loaded = i18n.translations.__wrapped__("xx")

    assert (loaded.gettext("Reroll"), loaded.gettext("Cancel")) == ("Reroll", "reviewed")


def _po_text(catalog: Catalog) -> str:
    from babel.messages.pofile import write_po

    out = io.BytesIO()
    write_po(out, catalog)
    return out.getvalue().decode()


# --- the Translator's rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "location", "slash", "valid"),
    [
        ("kontext-修图", Location.command_name, True, True),
        ("图片1", Location.parameter_name, True, True),
        ("हिन्दी", Location.parameter_name, True, True),  # Devanagari's vowel signs are marks, allowed
        ("ภาษาไทย", Location.group_name, True, True),
        ("Kontext", Location.command_name, True, False),  # capitals
        ("用 Kontext 编辑", Location.command_name, True, False),  # spaces
        ("用 Kontext 编辑", Location.command_name, False, True),  # a message menu's name may have them
        ("x" * 33, Location.command_name, False, False),
        ("a.b", Location.parameter_name, True, False),
        ("", Location.command_description, True, False),
        ("说" * 100, Location.command_description, True, True),
        ("说" * 101, Location.choice_name, True, False),
    ],
)
def test_localizations_follow_discords_rules(text: str, location: Location, slash: bool, valid: bool):
    assert valid_localization(text, location, slash=slash) is valid


def test_the_translator_localizes_only_what_a_catalog_translates():
    assert localized("kontext", "zh-CN", Location.command_name) == "kontext-修图"
    assert localized("seed", "zh-CN", Location.parameter_name) == "种子"
    assert localized("Reroll", "zh-CN", Location.choice_name) == "重新生成"
    assert localized("FLUX.1 Kontext [max] multi", "zh-CN", Location.choice_name) is None  # a name: as it is
    assert localized("kontext", "en-GB", Location.command_name) is None
    assert localized("kontext", "zh-TW", Location.command_name) is None


def test_an_invalid_translation_is_left_out(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    monkeypatch.setattr("bot.translator.tp", lambda context, message: "Zwei Wörter")

    assert localized("kontext", "zh-CN", Location.command_name) is None
    assert "breaks Discord's rules" in caplog.text


def test_catalogs_ship_with_the_package():
    """pyproject's package-data takes every catalog into a wheel (and so into the Docker image)."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    pattern = re.search(r'^bot = \["(locales/[^"]+)"\]', pyproject, flags=re.MULTILINE)
    assert pattern is not None
    shipped = sorted((ROOT / "bot").glob(pattern[1]))
    assert shipped and shipped == sorted((ROOT / "bot" / "locales").rglob("*.po"))
