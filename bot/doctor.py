"""`python -m bot check`: the setup checked item by item against the configured Discord, fal and database.

Nothing paid is ever sent: fal is asked for the status of a made-up request id (404 means the key was
accepted, 401/403 that it was not). Each item is a ✓ or a ✗ with what to do about it; a - marks an item
not checked because the one it needs failed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

import aiohttp
import discord
from yarl import URL

from bot.bot import invite_url
from bot.config import ConfigError, Settings
from bot.fal import (
    FalAuthError,
    FalConnectionError,
    FalError,
    FalHTTPError,
    FalRateLimited,
    FalServerError,
    FalTimeout,
    QueueHandle,
    QueueStatus,
)
from bot.store import SCHEMA_VERSION, ShardClaim, StoreError, shard_claim

__all__ = ("FalProbe", "Result", "Verdict", "probe_fal", "run_checks", "settings_failed", "summary")

# What "Discord or fal cannot be reached (for now)" looks like from discord.py and aiohttp.
UNREACHABLE = (aiohttp.ClientConnectionError, OSError, TimeoutError, discord.DiscordServerError)
PORTAL = "https://discord.com/developers/applications"


@dataclass(frozen=True, slots=True)
class Result:
    """One item: `ok` None means not checked (what it needs failed)."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = {True: "✓", False: "✗", None: "-"}[self.ok]
        text = f"{mark} {self.name}: {self.detail}"
        return f"{text} → {self.fix}" if self.fix and self.ok is not True else text


def summary(results: list[Result]) -> str:
    failed = sum(1 for r in results if r.ok is False)
    return f"{failed} of {len(results)} checks failed" if failed else f"all {len(results)} checks passed"


def describe(exc: BaseException) -> str:
    """One line about an exception: its message, or its type when it has none."""
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


def settings_failed(exc: ConfigError) -> Result:
    problems = "; ".join(line.strip() for line in str(exc).splitlines()[1:]) or str(exc)
    return Result("settings", False, problems, "fix them in .env or the environment (.env.example lists every one)")


# --- fal -----------------------------------------------------------------------------------------------


class FalStatus(Protocol):
    async def status(self, handle: QueueHandle) -> QueueStatus: ...


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    UNAVAILABLE = "unavailable"  # no answer, a timeout, 5xx or 429: worth trying again
    UNEXPECTED = "unexpected"


@dataclass(frozen=True, slots=True)
class FalProbe:
    verdict: Verdict
    detail: str
    error: FalError | None = None


async def probe_fal(fal: FalStatus, endpoint: str) -> FalProbe:
    """Ask for the status of a made-up request: free, and it shows whether the key is accepted."""
    try:
        await fal.status(QueueHandle(endpoint, f"kontext-bot-check-{uuid.uuid4().hex}"))
    except FalAuthError as exc:
        return FalProbe(Verdict.REFUSED, f"HTTP {exc.status}: {exc.summary[:200]}", exc)
    except (FalConnectionError, FalTimeout, FalServerError, FalRateLimited) as exc:
        return FalProbe(Verdict.UNAVAILABLE, describe(exc), exc)
    except FalHTTPError as exc:
        if exc.status == 404:
            return FalProbe(Verdict.ACCEPTED, "a made-up request id got 404")
        return FalProbe(Verdict.UNEXPECTED, describe(exc), exc)
    except FalError as exc:
        return FalProbe(Verdict.UNEXPECTED, describe(exc), exc)
    return FalProbe(Verdict.ACCEPTED, "a made-up request id got a status")


async def check_fal(settings: Settings, fal: FalStatus) -> Result:
    where = str(URL(settings.fal_queue_url).with_user(None))
    probe = await probe_fal(fal, settings.model(settings.default_model).endpoint)
    if probe.verdict is Verdict.ACCEPTED:
        return Result("fal", True, f"{where} accepted the key ({probe.detail}; nothing paid)")
    if probe.verdict is Verdict.REFUSED:
        locked = isinstance(probe.error, FalAuthError) and probe.error.balance_exhausted
        fix = "top up at https://fal.ai/dashboard/billing" if locked else (
            "check FAL_KEY (fal: key_id:key_secret) and FAL_AUTH_SCHEME (Key for fal, Bearer for most resellers)"
        )  # fmt: skip
        return Result("fal", False, f"{where} refused the key ({probe.detail})", fix)
    if probe.verdict is Verdict.UNAVAILABLE:
        return Result("fal", False, f"{where} unavailable ({probe.detail})", "check the network and FAL_QUEUE_URL")
    fix = "is FAL_QUEUE_URL fal's queue (https://queue.fal.run) or a fal-compatible reseller's base?"
    return Result("fal", False, f"{where} answered unexpectedly ({probe.detail})", fix)


# --- Discord -------------------------------------------------------------------------------------------


async def check_discord(settings: Settings) -> list[Result]:
    """Log in over REST as the bot does (the token, then the application); never opens the gateway."""
    client = discord.Client(intents=discord.Intents.none())
    try:
        async with asyncio.timeout(settings.request_timeout_seconds):
            await client.login(settings.discord_token.get_secret_value())
        return _application_results(settings, client)
    except discord.LoginFailure:
        problem = Result("Discord token", False, "refused by Discord (401)",
                         f"{PORTAL} → your application → Bot → Reset Token, and put it in DISCORD_TOKEN")  # fmt: skip
    except UNREACHABLE as exc:
        where = URL(discord.http.Route.BASE).host
        problem = Result("Discord token", False, f"cannot reach {where} ({describe(exc)})",
                         "check the network (and DISCORD_API_URL, if you set it)")  # fmt: skip
    except discord.HTTPException as exc:
        problem = Result("Discord token", False, f"Discord answered {exc.status}: {describe(exc)}", "try again later")
    finally:
        await client.close()
    skipped = [Result(name, None, "not checked: needs the token") for name in ("Message Content intent",
               "interactions", "invite URL")]  # fmt: skip
    return [problem, *skipped]


def _application_results(settings: Settings, client: discord.Client) -> list[Result]:
    app, user = client.application, client.user
    if app is None or user is None:
        raise RuntimeError("logged in without an application or user")
    token = Result("Discord token", True, f"accepted for bot {user} ({user.id}) of application {app.name} ({app.id})")
    return [token, _intent(settings, app), _interactions(app), _invite(app)]


def _intent(settings: Settings, app: discord.AppInfo) -> Result:
    name = "Message Content intent"
    if not settings.message_content_intent:
        return Result(name, True, "not asked for (MESSAGE_CONTENT_INTENT=false: the 🎨 trigger cannot read text)")
    if app.flags.gateway_message_content or app.flags.gateway_message_content_limited:
        return Result(name, True, "enabled for the application")
    return Result(name, False, "not enabled, and the bot asks for it (MESSAGE_CONTENT_INTENT=true)",
                  f"{PORTAL} → Bot → Privileged Gateway Intents → Message Content; or set "
                  "MESSAGE_CONTENT_INTENT=false")  # fmt: skip


def _interactions(app: discord.AppInfo) -> Result:
    if app.interactions_endpoint_url:
        return Result("interactions", False, f"sent to {app.interactions_endpoint_url}, not to the bot",
                      f"{PORTAL} → General Information → clear Interactions Endpoint URL")  # fmt: skip
    return Result("interactions", True, "come over the gateway (no Interactions Endpoint URL)")


def _invite(app: discord.AppInfo) -> Result:
    if app.bot_require_code_grant:
        return Result("invite URL", False, "the bot requires an OAuth2 code grant, so the invite fails",
                      f"{PORTAL} → Bot → turn off Requires OAuth2 Code Grant")  # fmt: skip
    only_owner = "" if app.bot_public else " (Public Bot is off: only the owner can use it)"
    return Result("invite URL", True, invite_url(app.id) + only_owner)


# --- database ------------------------------------------------------------------------------------------


class PinStore(Protocol):
    async def pin_input(self, user_id: int, url: str, content_type: str, now: datetime) -> None: ...
    async def unpin_input(self, user_id: int) -> None: ...


StoreOpener = Callable[[], AbstractAsyncContextManager[PinStore]]
NO_USER = 0  # no Discord user has id 0: the test write touches nobody's data


async def check_database(open_store: StoreOpener, where: str) -> Result:
    """Open as the bot does (which also brings an older schema up to date), then write and undo one row."""
    try:
        async with open_store() as store:
            await store.pin_input(NO_USER, "https://check.invalid/", "image/png", datetime.now(UTC))
            await store.unpin_input(NO_USER)
    except StoreError as exc:
        return Result("database", False, describe(exc), "see the message; DATABASE_PATH names the file")
    except Exception as exc:
        return Result("database", False, f"{where}: {describe(exc)}",
                      "DATABASE_PATH must be a writable file in a directory the bot may write to")  # fmt: skip
    return Result("database", True, f"{where} opens, is writable, schema version {SCHEMA_VERSION}")


async def check_shards(claim: ShardClaim, shards: str) -> Result:
    """Who runs the shards now, without claiming them: a running bot is no failure, but a bot started now
    would wait for it."""
    try:
        holder = await claim.holder()
    except StoreError as exc:
        return Result("shards", None, f"not checked: {describe(exc)}")
    if holder is None:
        return Result("shards", True, f"{shards}: free (no bot process runs them now)")
    return Result("shards", True, f"{shards}: {holder} now; a bot started now would wait for it")


# --- all of it -----------------------------------------------------------------------------------------


async def run_checks(
    settings: Settings,
    *,
    fal: FalStatus,
    open_store: StoreOpener,
    where: str,
    report: Callable[[Result], None] = lambda result: None,
) -> list[Result]:
    """Every item after the settings, in order; `report` sees each as soon as it is known."""
    results: list[Result] = []

    def add(*items: Result) -> None:
        for item in items:
            results.append(item)
            report(item)

    add(Result("settings", True, "valid"))
    add(*await check_discord(settings))
    add(await check_fal(settings, fal))
    add(database := await check_database(open_store, where))
    if database.ok:
        add(await check_shards(shard_claim(settings), str(settings.own_shards)))
    else:
        add(Result("shards", None, "not checked: needs the database"))
    return results
