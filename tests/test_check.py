"""`python -m bot check` / `kontext-bot check`: every item green and red, over the wire against the fakes.

In-process through `bot.doctor.run_checks` (real discord.py and aiohttp clients, real SQLite), and as the real
entry point in a child process for the output and the exit status.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import pytest

from bot.__main__ import fal_client, open_store
from bot.bot import REQUIRED_PERMISSIONS
from bot.config import Settings
from bot.doctor import Result, run_checks
from bot.shards import ShardSet
from bot.store import SCHEMA_VERSION
from bot.store.claims import COUNT_SPACE, SHARD_SPACE, DatabaseFileClaim, PostgresShardClaim
from tests.bot_process import bot_environment, free_port
from tests.conftest import DISCORD_TOKEN, FAL_KEY, SettingsFactory
from tests.fakes.fake_discord import GATEWAY_MESSAGE_CONTENT, GATEWAY_MESSAGE_CONTENT_LIMITED, FakeDiscord
from tests.fakes.fake_fal import EXHAUSTED, FakeFal

ROOT = Path(__file__).resolve().parent.parent
ITEMS = [
    "settings",
    "Discord token",
    "Message Content intent",
    "interactions",
    "invite URL",
    "fal",
    "database",
    "shards",
]
DISCORD_ITEMS = ITEMS[2:5]


@pytest.fixture
def settings(make_settings: SettingsFactory, fake_discord: FakeDiscord, fake_fal: FakeFal) -> SettingsFactory:
    def make(**overrides: object) -> Settings:
        values = {"fal_queue_url": fake_fal.base_url, "discord_api_url": fake_discord.api_url, **overrides}
        return make_settings(**values)

    return make


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch, fake_discord: FakeDiscord):
    """`await checks(settings)`: the results by item name, after checking they come in the documented order."""
    fake_discord.patch_discord(monkeypatch)

    async def run(settings: Settings) -> dict[str, Result]:
        async with aiohttp.ClientSession() as session:
            results = await run_checks(
                settings, fal=fal_client(session, settings), open_store=lambda: open_store(settings),
                where=str(settings.database_path),
            )  # fmt: skip
        assert [r.name for r in results] == ITEMS
        return {r.name: r for r in results}

    return run


def failed(results: dict[str, Result]) -> list[str]:
    return [name for name, result in results.items() if result.ok is False]


# --- all green ------------------------------------------------------------------------------------------


async def test_a_good_setup_is_all_green(checks, settings, fake_discord: FakeDiscord, fake_fal: FakeFal):
    results = await checks(settings())

    assert all(r.ok is True and not r.line().count("→") for r in results.values()), results
    assert "Kontext" in results["Discord token"].detail and str(fake_discord.app_id) in results["Discord token"].detail
    assert "accepted the key" in results["fal"].detail and "nothing paid" in results["fal"].detail
    assert f"schema version {SCHEMA_VERSION}" in results["database"].detail
    # fal was asked one free question: the status of a request that does not exist.
    [asked] = fake_fal.requests
    assert (asked.method, asked.kind, asked.status) == ("GET", "status", 404)
    assert asked.path.endswith("/status") and "/requests/kontext-bot-check-" in asked.path
    # Discord: the token and the application over REST, nothing else (no gateway, no commands).
    assert [(r.method, r.path) for r in fake_discord.requests] == [
        ("GET", "/users/@me"),
        ("GET", "/oauth2/applications/@me"),
    ]
    assert fake_discord.identify_payloads == []


async def test_the_invite_url_asks_for_exactly_the_needed_permissions(checks, settings, fake_discord: FakeDiscord):
    invite = (await checks(settings()))["invite URL"]

    query = parse_qs(urlsplit(invite.detail).query)
    assert query["client_id"] == [str(fake_discord.app_id)]
    assert query["permissions"] == [str(REQUIRED_PERMISSIONS.value)]
    assert sorted(query["scope"][0].split()) == ["applications.commands", "bot"]


async def test_the_database_check_leaves_no_row_behind(checks, settings, tmp_path: Path):
    database = tmp_path / "fresh" / "kontext.sqlite3"
    assert (await checks(settings(database_path=database)))["database"].ok is True

    with sqlite3.connect(database) as db:
        assert db.execute("SELECT COUNT(*) FROM pinned_inputs").fetchone() == (0,)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)


async def test_the_shards_check_names_the_process_that_runs_them(checks, settings, tmp_path: Path):
    database = tmp_path / "kontext.sqlite3"
    free = (await checks(settings(database_path=database)))["shards"]
    assert free.ok is True and free.detail == "0 of 1: free (no bot process runs them now)"

    claim = DatabaseFileClaim(database)  # as a running bot holds it
    assert await claim.acquire(asyncio.Event())
    try:
        held = (await checks(settings(database_path=database)))["shards"]
    finally:
        await claim.release()
    assert held.ok is True, held
    assert held.detail.startswith(f"0 of 1: the database {database} is in use by another bot process (pid ")
    assert held.detail.endswith("now; a bot started now would wait for it")


async def test_the_shards_check_on_postgres_names_the_process_and_claims_nothing(checks, settings, postgres_url: str):
    running = PostgresShardClaim(postgres_url, ShardSet(frozenset({1}), 2))
    assert await running.acquire(asyncio.Event())
    try:
        held = (await checks(settings(database_url=postgres_url, shard_count=2, shard_ids=(0, 1))))["shards"]
        assert await claim_holders(postgres_url) == 1  # the check claimed nothing itself
    finally:
        await running.release()
    assert held.ok is True
    assert held.detail.startswith("0,1 of 2: shard 1 of 2 is run by another process (kontext-bot shards 1 of 2")


async def claim_holders(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT count(DISTINCT pid) FROM pg_locks WHERE locktype = 'advisory' "
                                       "AND objsubid = 2 AND classid IN ($1::bigint::oid, $2::bigint::oid)",
                                       SHARD_SPACE, COUNT_SPACE))  # fmt: skip
    finally:
        await conn.close()


# --- Discord --------------------------------------------------------------------------------------------


async def test_a_wrong_token_is_refused_and_the_items_needing_it_are_not_checked(
    checks, settings, fake_discord: FakeDiscord
):
    fake_discord.token = "the-real-token"

    results = await checks(settings())

    assert failed(results) == ["Discord token"]
    assert "refused" in results["Discord token"].detail and "Reset Token" in results["Discord token"].fix
    assert all(results[name].ok is None and results[name].line().startswith("- ") for name in DISCORD_ITEMS)


@pytest.mark.parametrize(
    ("flags", "wanted", "ok"),
    [
        pytest.param(0, True, False, id="missing"),
        pytest.param(GATEWAY_MESSAGE_CONTENT_LIMITED, True, True, id="enabled-limited"),
        pytest.param(GATEWAY_MESSAGE_CONTENT, True, True, id="enabled-approved"),
        pytest.param(0, False, True, id="not-wanted"),
    ],
)
async def test_the_message_content_intent(checks, settings, fake_discord: FakeDiscord, flags, wanted, ok):
    fake_discord.app_flags = flags

    intent = (await checks(settings(message_content_intent=wanted)))["Message Content intent"]

    assert intent.ok is ok
    if not ok:
        assert "Privileged Gateway Intents" in intent.fix and "MESSAGE_CONTENT_INTENT=false" in intent.fix


async def test_an_interactions_endpoint_url_is_flagged(checks, settings, fake_discord: FakeDiscord):
    fake_discord.interactions_endpoint_url = "https://elsewhere.example/interactions"

    results = await checks(settings())

    assert failed(results) == ["interactions"]
    assert "elsewhere.example" in results["interactions"].detail


async def test_an_unreachable_discord(checks, settings, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("discord.http.Route.BASE", f"http://127.0.0.1:{free_port()}/api/v10")

    results = await checks(settings())

    assert failed(results) == ["Discord token"]
    assert "cannot reach 127.0.0.1" in results["Discord token"].detail
    assert "network" in results["Discord token"].fix


# --- fal ------------------------------------------------------------------------------------------------


async def test_a_wrong_fal_key_is_refused(checks, settings, fake_fal: FakeFal):
    results = await checks(settings(fal_key="wrong:key"))

    assert failed(results) == ["fal"]
    assert "refused the key" in results["fal"].detail and "401" in results["fal"].detail
    assert "FAL_KEY" in results["fal"].fix and "FAL_AUTH_SCHEME" in results["fal"].fix
    assert [r.kind for r in fake_fal.requests] == ["status"]  # still nothing paid


async def test_an_exhausted_balance_says_top_up(checks, settings, fake_fal: FakeFal):
    fake_fal.fail_next("status", 403, EXHAUSTED)

    fal = (await checks(settings()))["fal"]

    assert fal.ok is False and "403" in fal.detail and "top up" in fal.fix


async def test_an_unreachable_fal(checks, settings):
    results = await checks(settings(fal_queue_url=f"http://127.0.0.1:{free_port()}"))

    assert failed(results) == ["fal"]
    assert "unavailable" in results["fal"].detail and "FAL_QUEUE_URL" in results["fal"].fix


@pytest.fixture
async def reseller() -> AsyncIterator[FakeFal]:
    """A fal-compatible reseller: its own key, Bearer auth, fal's paths under /fal."""
    async with FakeFal(key="reseller-key", auth_scheme="Bearer", path_prefix="/fal") as fake:
        yield fake


@pytest.mark.parametrize(("scheme", "ok"), [("Bearer", True), ("Key", False)])
async def test_a_reseller_base(checks, settings, reseller: FakeFal, scheme: str, ok: bool):
    results = await checks(settings(fal_queue_url=reseller.base_url, fal_key="reseller-key", fal_auth_scheme=scheme))

    assert results["fal"].ok is ok and reseller.base_url in results["fal"].detail
    [asked] = reseller.requests
    assert asked.path.startswith("/fal/") and asked.authorization == f"{scheme} reseller-key"


# --- database -------------------------------------------------------------------------------------------


async def test_a_database_from_a_newer_bot(checks, settings, tmp_path: Path):
    database = tmp_path / "newer.sqlite3"
    with sqlite3.connect(database) as db:
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")

    results = await checks(settings(database_path=database))

    assert failed(results) == ["database"]
    assert "newer" in results["database"].detail


async def test_a_database_path_that_cannot_be_made(checks, settings, tmp_path: Path):
    (tmp_path / "a-file").write_text("not a directory")

    results = await checks(settings(database_path=tmp_path / "a-file" / "kontext.sqlite3"))

    assert failed(results) == ["database"]
    assert "a-file" in results["database"].detail and "DATABASE_PATH" in results["database"].fix


# --- the entry point ------------------------------------------------------------------------------------


async def run_check(env: dict[str, str], cwd: Path, *, script: bool = False) -> tuple[int, list[str]]:
    command = [str(Path(sys.executable).with_name("kontext-bot")), "check"] if script else [
        sys.executable, "-m", "bot", "check"]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    return await process.wait(), output.decode().splitlines()


async def test_python_m_bot_check_prints_a_green_checklist(fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path):
    env = bot_environment(fake_discord, fake_fal, tmp_path / "kontext.sqlite3")

    code, lines = await run_check(env, tmp_path)

    assert code == 0, lines
    assert [line.split(":")[0] for line in lines[:-1]] == [f"✓ {item}" for item in ITEMS]
    assert lines[-1] == f"all {len(ITEMS)} checks passed"
    assert not any(DISCORD_TOKEN in line or FAL_KEY in line for line in lines)


async def test_kontext_bot_check_fails_with_what_to_do(fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path):
    fake_discord.token = "the-real-token"
    env = bot_environment(fake_discord, fake_fal, tmp_path / "kontext.sqlite3", FAL_KEY="wrong:key")

    code, lines = await run_check(env, tmp_path, script=True)

    assert code == 1, lines
    failures = [line for line in lines if line.startswith("✗ ")]
    assert [line.split(":")[0] for line in failures] == ["✗ Discord token", "✗ fal"]
    assert all(" → " in line for line in failures)
    assert lines[-1] == f"2 of {len(ITEMS)} checks failed"
    assert not any("Traceback" in line or "wrong:key" in line for line in lines)


async def test_check_with_invalid_settings_names_them(tmp_path: Path):
    env = {"PATH": "", "PYTHONPATH": str(ROOT), "POLL_INTERVAL_SECONDS": "-1"}

    code, lines = await run_check(env, tmp_path)

    assert code == 1
    [line] = lines
    assert line.startswith("✗ settings: ") and "DISCORD_TOKEN: missing" in line and "POLL_INTERVAL_SECONDS" in line
    assert ".env.example" in line
