"""Composition root: settings → logging → session, store, fal client → bot. `python -m bot`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import urllib.parse

import aiohttp
import discord
import yarl

from bot.bot import KontextBot
from bot.config import ConfigError, Settings, load_settings
from bot.fal import FalClient, FalClientOptions
from bot.log import setup_logging
from bot.store import StoreError, open_store

log = logging.getLogger("bot")


def fal_client(session: aiohttp.ClientSession, settings: Settings) -> FalClient:
    options = FalClientOptions(
        auth_scheme=settings.fal_auth_scheme,
        request_timeout=settings.request_timeout_seconds,
        submit_timeout=settings.submit_timeout_seconds,
        start_timeout=settings.fal_start_timeout_seconds,
        poll_interval=settings.poll_interval_seconds,
        poll_max_interval=settings.poll_max_interval_seconds,
        use_stream=settings.use_status_stream,
        max_streams=settings.max_status_streams,
        result_hosts=settings.fal_result_hosts,
        result_allow_http=settings.fal_result_allow_http,
        max_download_bytes=settings.max_result_bytes,
    )
    return FalClient(session, key=settings.fal_key, base_url=settings.fal_queue_url, options=options)


def fal_connector(settings: Settings) -> aiohttp.TCPConnector:
    """Room for every status stream plus the submits, results and downloads next to them."""
    return aiohttp.TCPConnector(limit=settings.max_status_streams + 100)


def database_secrets(url: str) -> list[str]:
    """The URL and its password (when it has one), so no log line ever shows them."""
    with contextlib.suppress(ValueError):
        if password := urllib.parse.urlsplit(url).password:
            return [url, password, urllib.parse.unquote(password)]
    return [url]


def point_discord_at(settings: Settings) -> None:
    """REST proxies (and the tests' fake Discord) take the place of discord.com."""
    discord.http.Route.BASE = settings.discord_api_url
    if settings.discord_gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


async def run(settings: Settings) -> None:
    async with (
        aiohttp.ClientSession(headers={"User-Agent": "kontext-bot"}, connector=fal_connector(settings)) as session,
        open_store(settings) as store,
    ):
        bot = KontextBot(settings=settings, session=session, fal=fal_client(session, settings), store=store)
        async with bot:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(NotImplementedError):  # not on Windows
                loop.add_signal_handler(signal.SIGTERM, lambda: loop.create_task(bot.close()))
            await bot.start(settings.discord_token.get_secret_value())


def main() -> int:
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc, file=sys.stderr)  # noqa: T201
        return 2
    secrets = [settings.discord_token.get_secret_value(), settings.fal_key.get_secret_value()]
    if settings.database_url is not None:
        secrets += database_secrets(settings.database_url.get_secret_value())
    setup_logging(settings.log_level, secrets, settings.log_format)
    point_discord_at(settings)
    try:
        asyncio.run(run(settings))
    except KeyboardInterrupt:
        pass
    except discord.LoginFailure:
        log.error("Discord refused DISCORD_TOKEN; check the bot token in the developer portal")
        return 1
    except discord.PrivilegedIntentsRequired:
        log.error("enable the Message Content intent in the developer portal, or set MESSAGE_CONTENT_INTENT=false")
        return 1
    except StoreError as exc:
        log.error("cannot use the database: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
