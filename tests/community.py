"""Driving the community commands over the wire: /kontext-admin, /kontext-settings, /kontext-history."""

from __future__ import annotations

from typing import Any

from tests.harness import Harness, Json

CHANNEL, ROLE = 7, 8


def option(name: str, value: Any) -> Json:
    """A slash option; a (type, value) pair for channels and roles."""
    if isinstance(value, tuple):
        kind, value = value
        return {"name": name, "type": kind, "value": str(value)}
    kinds = {bool: 5, int: 4, float: 10, str: 3}
    return {"name": name, "type": kinds[type(value)], "value": value}


async def command(harness: Harness, name: str, options: list[Json], *, user_id: int | None = None,
                  channel_id: int | None = None) -> str:  # fmt: skip
    """Run a slash command; returns the next ephemeral reply it got."""
    before = len(harness.ephemeral_replies())
    payload = harness.discord.slash(name, options, user_id=user_id, channel_id=channel_id)
    await harness.discord.interact(payload)
    await harness.discord.wait_until(lambda: len(harness.ephemeral_replies()) > before, what=f"an answer to {name}")
    return harness.ephemeral_replies()[before]


async def admin(harness: Harness, sub: str, *, user_id: int | None = None, **values: Any) -> str:
    """`/kontext-admin <sub> name:value ...` (by the server's owner unless `user_id`); returns the answer."""
    options = [{"name": sub, "type": 1, "options": [option(k, v) for k, v in values.items()]}]
    return await command(harness, "kontext-admin", options, user_id=user_id)


async def personal(harness: Harness, *, user_id: int | None = None, **values: Any) -> str:
    """`/kontext-settings name:value ...`; returns the answer."""
    return await command(harness, "kontext-settings", [option(k, v) for k, v in values.items()], user_id=user_id)


def submits(harness: Harness) -> list[Json]:
    return [r.json for r in harness.fal.requests if r.kind == "submit"]


def result_messages(harness: Harness) -> list[Json]:
    return harness.result_messages()


async def refused_job(harness: Harness, **options: Any) -> str:
    """Run /kontext and return the ephemeral refusal it got (whether before or after admission)."""
    before = len(harness.ephemeral_replies())
    await harness.kontext(**options)
    await harness.discord.wait_until(lambda: len(harness.ephemeral_replies()) > before, what="a refusal")
    return harness.ephemeral_replies()[before]


async def delivered(harness: Harness, **options: Any) -> None:
    payload = await harness.kontext(**options)
    final = await harness.final_status(payload["token"])
    assert "✅ Done" in final, final
    await harness.bot.runner.wait_idle()
