"""Shared fixtures: the fakes on 127.0.0.1, a real aiohttp session, a real SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.__main__ import fal_client
from bot.config import Settings
from bot.fal import FalClient
from bot.store import SqliteJobStore
from tests.fakes.fake_fal import FakeFal

FAL_KEY = "fake-key:secret"
DISCORD_TOKEN = "fake-discord-token.XYZ123"

SettingsFactory = Callable[..., Settings]


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings for tests: fast intervals, no .env file, everything overridable."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "discord_token": DISCORD_TOKEN,
            "fal_key": FAL_KEY,
            "fal_result_hosts": ("127.0.0.1",),
            "poll_interval_seconds": 0.02,
            "poll_max_interval_seconds": 0.2,
            "request_timeout_seconds": 5.0,
            "submit_timeout_seconds": 5.0,
            "status_edit_interval_seconds": 0.0,
            "cooldown_seconds": 0.0,
            "database_path": tmp_path / "kontext.sqlite3",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

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
