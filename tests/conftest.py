"""Shared fixtures: the fakes on 127.0.0.1, a real aiohttp session, a real SQLite store, a real PostgreSQL
server (a throwaway cluster per session, a fresh database per test).

KONTEXT_NO_SKIPS=1 (set by .ci/run) turns every skip into a failure: CI runs every test or fails."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from bot.__main__ import fal_client
from bot.config import Settings
from bot.fal import FalClient
from bot.store import PostgresJobStore, SqliteJobStore, Store
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_fal import FakeFal
from tests.fakes.images import make_png
from tests.harness import Harness, running_bot
from tests.postgres import Cluster, PostgresUnavailable, start_cluster

FAL_KEY = "fake-key:secret"
DISCORD_TOKEN = "fake-discord-token.XYZ123"

SettingsFactory = Callable[..., Settings]
NO_SKIPS = "KONTEXT_NO_SKIPS"


def skip_or_fail(reason: str) -> None:
    """Skip with `reason`; fail instead where every test must run (CI)."""
    if os.environ.get(NO_SKIPS):
        pytest.fail(f"{reason} ({NO_SKIPS} is set: this test must run here)", pytrace=False)
    pytest.skip(reason)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With KONTEXT_NO_SKIPS set, a run that skipped anything fails."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if os.environ.get(NO_SKIPS) and skipped and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_line(f"{skipped} test(s) skipped while {NO_SKIPS} is set: failing the run", red=True)


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings for tests: fast intervals, no .env file, everything overridable."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "discord_token": DISCORD_TOKEN,
            "fal_key": FAL_KEY,
            "fal_result_hosts": ("127.0.0.1",),
            "fal_result_allow_http": True,  # the fake fal serves result files over http
            "poll_interval_seconds": 0.02,
            "poll_max_interval_seconds": 0.2,
            "request_timeout_seconds": 5.0,
            "submit_timeout_seconds": 5.0,
            "status_edit_interval_seconds": 0.05,
            "cooldown_seconds": 0.0,
            "retry_base_seconds": 0.05,
            "database_path": tmp_path / "kontext.sqlite3",
        }
        values.update(overrides)
        if "fal_result_hosts" not in overrides and "fal_queue_url" in overrides:  # the fake fal's own files
            values["fal_result_hosts"] = (urlsplit(overrides["fal_queue_url"]).netloc,)
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
async def fake_fal() -> AsyncIterator[FakeFal]:
    async with FakeFal(key=FAL_KEY) as fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
def fal(session: aiohttp.ClientSession, fake_fal: FakeFal, make_settings: SettingsFactory) -> FalClient:
    return fal_client(session, make_settings(fal_queue_url=fake_fal.base_url))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteJobStore]:
    async with SqliteJobStore(tmp_path / "jobs.sqlite3") as opened:
        yield opened


@pytest.fixture
async def fake_discord() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(edit_rate=(5, 0.5)) as fake:  # Discord's 5 per 5 s, ten times faster
        yield fake


StartBot = Callable[..., AbstractAsyncContextManager[Harness]]


@pytest.fixture
def start_bot(
    monkeypatch: pytest.MonkeyPatch, fake_fal: FakeFal, fake_discord: FakeDiscord, make_settings: SettingsFactory
) -> StartBot:
    """`async with start_bot(**setting_overrides) as harness:` runs the real bot against both fakes."""

    def start(**overrides: Any) -> AbstractAsyncContextManager[Harness]:
        settings = make_settings(fal_queue_url=fake_fal.base_url, discord_api_url=fake_discord.api_url, **overrides)
        return running_bot(monkeypatch, fake_fal, settings, fake_discord)

    return start


@pytest.fixture
async def harness(start_bot: StartBot) -> AsyncIterator[Harness]:
    """The real bot against both fakes, with test-speed settings."""
    async with start_bot() as running:
        yield running


class Trap:
    """A web server that records every request: result URLs on unexpected hosts point here."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append(str(request.url))
        return web.Response(body=make_png(32, 32), content_type="image/png")


@pytest.fixture
async def trap() -> AsyncIterator[Trap]:
    server = Trap()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.port = runner.addresses[0][1]
    yield server
    await runner.cleanup()


# --- PostgreSQL ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """One throwaway PostgreSQL server for the whole session (skipped, or failed under KONTEXT_NO_SKIPS, only
    where no server can be run here)."""
    try:
        cluster = start_cluster()
    except PostgresUnavailable as exc:
        skip_or_fail(str(exc))
        raise  # not reached: skip_or_fail raises
    yield cluster
    cluster.stop()


@pytest.fixture
async def postgres_url(postgres_cluster: Cluster) -> str:
    """postgresql://... of a fresh, empty database on the session's server."""
    return await postgres_cluster.new_database()


@dataclass
class Database:
    """One database of either kind; `store()` makes another (unopened) store on it, as another process would."""

    kind: str
    location: str

    def store(self) -> Store:
        if self.kind == "postgres":
            return PostgresJobStore(self.location)
        return SqliteJobStore(self.location)


@pytest.fixture(params=["sqlite", "postgres"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> Database:
    """The same tests on both stores."""
    if request.param == "postgres":
        cluster: Cluster = request.getfixturevalue("postgres_cluster")
        return Database("postgres", await cluster.new_database())
    return Database("sqlite", str(tmp_path / "jobs.sqlite3"))
