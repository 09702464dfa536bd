"""Composition root: settings → logging → the claim on the shards → session, store, fal client → bot.
`python -m bot [check]`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import signal
import sys
import urllib.parse
from collections.abc import AsyncIterator, Callable, Sequence

import aiohttp
import discord
import yarl

from bot import doctor, startup
from bot.bot import KontextBot
from bot.config import ConfigError, Settings, load_settings
from bot.fal import FalClient, FalClientOptions
from bot.log import setup_logging
from bot.metrics_server import MetricsError, serve_metrics
from bot.store import Store, StoreError, open_store as store_for, shard_claim

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


def allow_open_files(wanted: int = 65536) -> None:
    """Every status stream is a socket: raise the soft limit on open files (often 1024) toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


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


def open_store(settings: Settings) -> Store:
    """The job store, as an async context manager that opens it (the bot and `check` both use this)."""
    return store_for(settings)


def http_session(settings: Settings) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(headers={"User-Agent": "kontext-bot"}, connector=fal_connector(settings))


async def run(settings: Settings) -> int:
    """Claim the shards, then run them until SIGTERM: 0; or until the claim is lost: 1 (another process may run
    them now; started again, this one waits for them)."""
    stop = stop_on_sigterm()
    claim = shard_claim(settings)
    if not await claim.acquire(stop):
        return 0
    try:
        await run_shards(settings, stop)  # a lost claim sets `stop` too
    finally:
        await claim.release()
    return 1 if claim.lost.is_set() else 0


async def run_shards(settings: Settings, stop: asyncio.Event) -> None:
    async with http_session(settings) as session, open_store(settings) as store:
        bot = KontextBot(settings=settings, session=session, fal=fal_client(session, settings), store=store)
        async with bot, metrics_endpoint(settings, bot):
            closer = asyncio.create_task(close_on(bot, stop), name="close-on-stop")
            fal_watch = asyncio.create_task(watch_fal(settings, bot.fal), name="fal-at-start")
            try:
                await start(bot, settings, stop)
            finally:
                fal_watch.cancel()
                if not stop.is_set():
                    closer.cancel()  # a close under way is left to finish
                await asyncio.wait([closer, fal_watch])


def stop_on_sigterm() -> asyncio.Event:
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError):  # not on Windows
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    return stop


async def close_on(bot: KontextBot, stop: asyncio.Event) -> None:
    """Close the bot at SIGTERM, or as soon as the claim on its shards is lost (the claim logged why)."""
    await stop.wait()
    await bot.close()


async def start(bot: KontextBot, settings: Settings, stop: asyncio.Event) -> None:
    """Log in, waiting out an unreachable Discord; then the gateway, which discord.py keeps reconnecting."""
    token = settings.discord_token.get_secret_value()
    if await startup.login(bot, token, first_delay=settings.retry_base_seconds, stop=stop):
        await bot.connect()  # an AutoShardedBot retries each shard's connection itself


async def watch_fal(settings: Settings, fal: FalClient) -> None:
    where = str(yarl.URL(settings.fal_queue_url).with_user(None))
    endpoint = settings.model(settings.default_model).endpoint
    await startup.watch_fal(fal, endpoint, where=where, first_delay=settings.retry_base_seconds)


@contextlib.asynccontextmanager
async def metrics_endpoint(settings: Settings, bot: KontextBot) -> AsyncIterator[None]:
    if settings.metrics_port is None:
        yield
        return
    async with serve_metrics(bot.metrics.registry, bot.gateway_connected, settings.metrics_host, settings.metrics_port):
        yield


async def check(settings: Settings) -> int:
    """`python -m bot check`: one line per item, as soon as it is known; 1 when any failed."""
    async with http_session(settings) as session:
        results = await doctor.run_checks(
            settings, fal=fal_client(session, settings), open_store=lambda: open_store(settings),
            where=str(settings.database_path), report=lambda result: say(result.line()),
        )  # fmt: skip
    say(doctor.summary(results))
    return 1 if any(result.ok is False for result in results) else 0


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="kontext-bot", description="The Kontext Discord bot.")
    parser.add_argument("command", nargs="?", choices=("run", "check"), default="run",
                        help="run the bot (the default), or check the setup without starting it")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    command = parse_args(argv).command
    try:
        settings = load_settings()
    except ConfigError as exc:
        if command == "check":
            say(doctor.settings_failed(exc).line())
            return 1
        print(exc, file=sys.stderr)  # noqa: T201
        return 2
    secrets = [settings.discord_token.get_secret_value(), settings.fal_key.get_secret_value()]
    if settings.database_url is not None:
        secrets += database_secrets(settings.database_url.get_secret_value())
    point_discord_at(settings)
    allow_open_files()
    if command == "check":
        setup_logging("CRITICAL", secrets, settings.log_format)  # the checklist is the output
        return asyncio.run(check(settings))
    setup_logging(settings.log_level, secrets, settings.log_format)
    for name in ("discord.client", "discord.shard"):
        logging.getLogger(name).addFilter(startup.OneLineReconnects())
    return run_bot(settings)


def event_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (every platform but Windows): the same work for less CPU."""
    try:
        import uvloop  # optional by platform
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_bot(settings: Settings) -> int:
    try:
        with asyncio.Runner(loop_factory=event_loop()) as runner:
            return runner.run(run(settings))
    except KeyboardInterrupt:
        return 0
    except discord.LoginFailure:
        log.error("Discord refused DISCORD_TOKEN; check the bot token in the developer portal")
        return 1
    except discord.PrivilegedIntentsRequired:
        log.error("enable the Message Content intent in the developer portal, or set MESSAGE_CONTENT_INTENT=false")
        return 1
    except StoreError as exc:
        log.error("cannot use the database: %s", exc)
        return 1
    except MetricsError as exc:
        log.error("cannot serve metrics: %s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
