"""The claims on shards themselves, in this process: SQLite's file lock, and PostgreSQL's advisory locks on a
real server. Which sets of shards exclude each other, that a waiting claim holds nothing, and that a released
claim lets the waiting one in. (`test_shard_claims.py` runs them in real bot processes.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bot.shards import ShardSet
from bot.store import StoreError
from bot.store.claims import DatabaseFileClaim, PostgresShardClaim, ShardClaim

Claim = Callable[..., PostgresShardClaim]


@pytest.fixture
async def claim(postgres_url: str) -> AsyncIterator[Claim]:
    """`claim(1, 2)`: a claim on shard 1 of 2 (`claim(0, 1, count=2)`: shards 0 and 1 of 2); released at the end."""
    made: list[PostgresShardClaim] = []

    def make(*ids: int, count: int) -> PostgresShardClaim:
        made.append(PostgresShardClaim(postgres_url, ShardSet(frozenset(ids), count)))
        return made[-1]

    yield make
    for each in made:
        await each.release()


async def acquired_soon(claim: ShardClaim, seconds: float = 3.0) -> bool:
    """Whether `claim` gets its shards within `seconds` (its wait is stopped after that)."""
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    return await claim.acquire(stop)


async def test_postgres_a_shard_is_claimed_by_one_process_at_a_time(claim: Claim):
    first, second = claim(1, count=2), claim(1, count=2)
    assert await acquired_soon(first)
    assert await second.holder() == "shard 1 of 2 is run by another process (kontext-bot shards 1 of 2, from 127.0.0.1)"
    assert not await acquired_soon(second, 1.5)

    waiting = asyncio.create_task(acquired_soon(second, 10))
    await asyncio.sleep(0.2)
    await first.release()
    assert await waiting  # within one poll of the release
    assert await first.holder() == "shard 1 of 2 is run by another process (kontext-bot shards 1 of 2, from 127.0.0.1)"


async def test_postgres_overlapping_sets_exclude_each_other_and_a_waiting_claim_holds_nothing(claim: Claim):
    assert await acquired_soon(claim(1, count=2))
    stop = asyncio.Event()
    both = asyncio.create_task(claim(0, 1, count=2).acquire(stop))  # shard 1 is taken: it waits
    await asyncio.sleep(0.5)
    assert await acquired_soon(claim(0, count=2), 1.0)  # so shard 0 was not kept while it waited
    stop.set()
    assert await both is False


async def test_postgres_another_shard_count_waits_for_every_process_of_the_first(claim: Claim):
    zero_of_two, one_of_two = claim(0, count=2), claim(1, count=2)
    assert await acquired_soon(zero_of_two) and await acquired_soon(one_of_two)
    single = claim(0, count=1)
    assert (await single.holder() or "").startswith("a bot process with SHARD_COUNT=2 runs on ")
    assert not await acquired_soon(single, 1.5)

    await zero_of_two.release()
    assert not await acquired_soon(single, 1.5)  # shard 1 of 2 still runs: it holds servers of shard 0 of 1
    await one_of_two.release()
    assert await acquired_soon(single)


async def test_sqlite_one_process_per_database_file(tmp_path: Path):
    database = tmp_path / "data" / "kontext.sqlite3"  # its directory made by the claim, as by the store
    first, second = DatabaseFileClaim(database), DatabaseFileClaim(database)
    try:
        assert await first.holder() is None
        assert await acquired_soon(first)
        assert (await second.holder() or "").startswith(
            f"the database {database} is in use by another bot process (pid "
        )
        assert not await acquired_soon(second, 1.5)
        await first.release()
        assert await acquired_soon(second)
        other = DatabaseFileClaim(tmp_path / "data" / "other.sqlite3")
        assert await acquired_soon(other, 0.5)  # another database: another process may run on it
        await other.release()
    finally:
        await first.release()
        await second.release()


async def test_sqlite_a_lock_file_that_cannot_be_opened_is_a_store_error(tmp_path: Path):
    """As for the database itself: one line naming the file (the bot exits 1 with it), no traceback."""
    database = tmp_path / "kontext.sqlite3"
    (tmp_path / "kontext.sqlite3.lock").mkdir()  # not openable as a file, whoever the user (root too)
    claim = DatabaseFileClaim(database)
    with pytest.raises(StoreError, match=r"kontext\.sqlite3\.lock: Is a directory"):
        await claim.acquire(asyncio.Event())
