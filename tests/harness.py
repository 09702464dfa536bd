"""The whole bot, unmodified, against the fake Discord and the fake fal on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from bot.__main__ import fal_client
from bot.bot import KontextBot
from bot.config import Settings
from bot.jobs import Job
from bot.store import Store, open_store
from tests.fakes.discord_components import walk
from tests.fakes.fake_discord import FakeDiscord, Recorded, message_text, run_client
from tests.fakes.fake_fal import FakeFal
from tests.fakes.images import make_png

Json = dict[str, Any]
FINAL_MARKS = ("✅ Done", "❌ ", "🚫 Cancelled")
RESULT_TEXT = "here is your edit"

__all__ = ("RESULT_TEXT", "ErrorLog", "Harness", "Json", "custom_ids", "gallery_items", "message_text", "running_bot")


def custom_ids(message: Json) -> list[str]:
    """The custom_ids of a message's components, nested ones too (a result card's buttons sit in a container)."""
    return [c["custom_id"] for c in walk(list(message.get("components") or [])) if "custom_id" in c]


def gallery_items(message: Json) -> list[Json]:
    """The media gallery items of a (Components V2) message, in order."""
    return [item for c in walk(list(message.get("components") or [])) if c.get("type") == 12 for item in c["items"]]


class ErrorLog(logging.Handler):
    """Collects ERROR records (and discord.py's WARNINGs) so a test fails on anything the bot logged as wrong."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.allowed: list[str] = ["voice will NOT be supported"]

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.name.startswith("discord"):
            self.records.append(record)

    def unexpected(self) -> list[str]:
        lines = [f"{r.name}: {r.getMessage()}" for r in self.records]
        return [line for line in lines if not any(allowed in line for allowed in self.allowed)]


@dataclass
class Harness:
    discord: FakeDiscord
    fal: FakeFal
    bot: KontextBot
    store: Store
    settings: Settings
    errors: ErrorLog = field(default_factory=ErrorLog)

    # --- driving ----------------------------------------------------------------------------

    def image(self, name: str = "cat.png", *, color: tuple[int, int, int] = (200, 40, 40), **kw: Any) -> Json:
        return self.discord.add_attachment(name, make_png(32, 32, color), **kw)

    async def kontext(
        self, prompt: str | None = "make it blue", images: list[Json] | None = None, **options: Any
    ) -> Json:
        """Run /kontext (one default image unless `images` is given); returns the interaction payload."""
        chosen = [self.image()] if images is None else images
        who = self._who(options)
        opts: list[Json] = [] if prompt is None else [{"name": "prompt", "type": 3, "value": prompt}]
        opts += [{"name": f"image{i}", "type": 11, "value": a["id"]} for i, a in enumerate(chosen, start=1)]
        opts += [{"name": name, "type": _option_type(value), "value": value} for name, value in options.items()]
        payload = self.discord.slash("kontext", opts, attachments=chosen, **who)
        await self.discord.interact(payload)
        return payload

    @staticmethod
    def _who(options: dict[str, Any]) -> dict[str, Any]:
        where = ("user_id", "created_at", "channel_id", "user_install", "external_apps", "locale", "guild_locale")
        return {key: options.pop(key) for key in where if key in options}

    async def event(self, event: str, data: Json) -> None:
        """Dispatch a gateway event and return once the bot received it and its handlers ran to their first
        wait: enough to assert that a handler did nothing."""
        received = asyncio.ensure_future(self.bot.wait_for("socket_event_type", check=lambda t: t == event, timeout=5))
        await self.discord.dispatch(event, data)
        await received
        for _ in range(10):
            await asyncio.sleep(0)

    # --- observing --------------------------------------------------------------------------

    async def final_status(self, key: str | int, timeout: float = 10.0) -> str:
        """Wait until the status message (token or channel message id) shows a final state; return its text."""
        texts: list[str] = []

        def final() -> bool:
            texts[:] = [t for t in self.status_texts(key) if any(mark in t for mark in FINAL_MARKS)]
            return bool(texts)

        await self.discord.wait_until(final, timeout, f"final status of {key}")
        return texts[-1]

    async def finish_jobs(self) -> list[Job]:
        """Wait (10 s at most) until the bot follows no job any more; returns every stored job, oldest first."""
        await asyncio.wait_for(self.bot.runner.wait_idle(), 10.0)
        return list(reversed(await self.store.jobs(limit=100_000)))

    def status_texts(self, key: str | int) -> list[str]:
        """Contents the bot gave one status message, in order: `key` is the interaction token (callback and
        webhook edits) or a channel message id (channel edits)."""
        return [_payload(r)["content"] for r in self.discord.requests if _touches(r, key) and "content" in _payload(r)]

    def original_response(self, payload: Json) -> Json:
        """The message that answered the interaction `payload` (the status message of a /kontext)."""
        [message] = [
            m for m in self.discord.messages.values() if m.get("interaction_metadata", {}).get("id") == payload["id"]
        ]
        return message

    def result_messages(self) -> list[Json]:
        """Every result message the bot posted (channel post or followup), oldest first."""
        return [m for m in self.discord.messages.values() if RESULT_TEXT in message_text(m)]

    def ephemeral_replies(self) -> list[str]:
        """Texts only the user saw: ephemeral interaction responses and ephemeral followups, in order."""
        return [_payload(r)["content"] for r in self.discord.requests if _is_ephemeral_reply(r)]


def _payload(rec: Recorded) -> Json:
    body = rec.json
    if isinstance(body, dict) and isinstance(body.get("data"), dict) and "type" in body:
        data: Json = body["data"]  # an interaction callback
        return data
    return body if isinstance(body, dict) else {}


def _is_ephemeral_reply(rec: Recorded) -> bool:
    if rec.method != "POST" or not isinstance(rec.json, dict) or rec.status >= 300:
        return False
    body = _payload(rec)
    is_reply = (rec.path.endswith("/callback") and rec.json.get("type") == 4) or rec.path.startswith("/webhooks/")
    return is_reply and bool(body.get("flags", 0) & 64) and "content" in body


def _touches(rec: Recorded, key: str | int) -> bool:
    if isinstance(key, str):
        return key in rec.path and rec.method in ("POST", "PATCH")
    return rec.path.endswith(f"/messages/{key}") and rec.method == "PATCH"


def _option_type(value: Any) -> int:
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        return 4
    if isinstance(value, float):
        return 10
    return 3


@asynccontextmanager
async def running_bot(
    monkeypatch: pytest.MonkeyPatch, fake_fal: FakeFal, settings: Settings, fake_discord: FakeDiscord
) -> AsyncIterator[Harness]:
    """Start the real bot (our factory, our cog) and stop it after; fails on logged errors and unknown routes."""
    fake_discord.patch_discord(monkeypatch)
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    try:
        async with aiohttp.ClientSession() as session, open_store(settings) as store:
            bot = KontextBot(
                settings=settings, session=session, fal=fal_client(session, settings), store=store,
                guild_ready_timeout=0.05,
            )  # fmt: skip
            async with run_client(bot, fake_discord):
                yield Harness(fake_discord, fake_fal, bot, store, settings, errors)
    finally:
        logging.getLogger().removeHandler(errors)
    assert not fake_discord.unhandled, fake_discord.unhandled
    assert not errors.unexpected(), errors.unexpected()
