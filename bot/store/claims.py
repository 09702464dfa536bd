"""One process per shard: the claim a process holds on its shards for as long as it runs them.

Two processes running the same shard would both get its events and, at start, both resume its unfinished
jobs: each of those jobs would be delivered twice. So before it connects to Discord a process claims its
shards, and waits while another process holds any of them (one still stopping, or one started by mistake).

- SQLite (one process per database file): an exclusive `flock` on `<database>.lock`, which the kernel lets
  go when the process ends, however it ends. It is never lost.
- PostgreSQL: session advisory locks on a connection of the claim's own, which the server lets go when that
  connection ends: a shared one on the shard count (a process with another count splits the servers another
  way, so it overlaps every shard: it must wait too) and an exclusive one per shard. The claim checks its
  connection every few seconds; when it is gone it claims again on a new one. If another process got a
  shard first, or the database stays out of reach for longer than the server takes to notice a dead client
  (its TCP keepalives, set below), the claim is lost and the process must stop running the shards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from bot.shards import ShardSet
from bot.store.base import StoreError
from bot.store.postgres import CONNECT_TIMEOUT, DATABASE_ERRORS, describe_url, problem_of

try:
    import fcntl
except ImportError:  # Windows: no flock; one process per database is then up to the operator
    fcntl = None  # type: ignore[assignment]

__all__ = ("DatabaseFileClaim", "PostgresShardClaim", "ShardClaim")

log = logging.getLogger(__name__)

WAIT_POLL_SECONDS = 1.0  # how often a waiting process asks again
# Advisory lock keys, two-int form (never equal to the one-bigint keys of admissions and migrations).
CLAIMING = (0x6B6E7478, 0)  # held for the moment of one claim: claims are made one at a time
COUNT_SPACE = 0x6B6E7479  # (space, SHARD_COUNT), shared by every process of that count
SHARD_SPACE = 0x6B6E747A  # (space, shard id), exclusive
# The claim's connection: claimed again at once when it ends, and checked this often (each check given this
# long) for a network gone silent; a lost claim is claimed again for at most GRACE. Check, timeout and grace
# (20 s) stay under the ~25 s the server takes to drop a silent client (its keepalives below), after which
# another process could claim the shards.
CHECK_SECONDS = 5.0
CHECK_TIMEOUT = 5.0
GRACE_SECONDS = 10.0
KEEPALIVES = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}

HOLDER = """
SELECT l.objid::bigint AS key, coalesce(a.application_name, '') AS name, host(a.client_addr) AS address
FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.pid <> pg_backend_pid()
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = $1::bigint::oid AND ($2::bigint IS NULL OR l.objid = $2::bigint::oid)
  AND ($3::bigint IS NULL OR l.objid <> $3::bigint::oid)
LIMIT 1
"""


class ShardClaim(Protocol):
    """Claimed by `acquire`, let go by `release` (or by the process's end); `lost` is set if it no longer holds."""

    lost: asyncio.Event

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until the shards are ours; False when `stop` was set first. Should the claim be lost later, it
        sets `lost` and `stop`: the process must stop running the shards."""
        ...

    async def release(self) -> None: ...

    async def holder(self) -> str | None:
        """Who would make `acquire` wait now (nothing is claimed to find out); None: nobody."""
        ...


class DatabaseFileClaim:
    """One process per SQLite database: an exclusive lock on the file `<database>.lock` beside it."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = database.with_name(database.name + ".lock")
        self.lost = asyncio.Event()  # never set: the kernel keeps the lock until the process ends
        self._fd: int | None = None

    async def acquire(self, stop: asyncio.Event) -> bool:
        if fcntl is None:
            return True
        fd = self._open(os.O_RDWR | os.O_CREAT)
        waited = False
        while not _locked(fd):
            if not waited:
                log.warning("%s; waiting for it to stop", self._in_use(fd))
                waited = True
            if await _stopped(stop, WAIT_POLL_SECONDS):
                os.close(fd)
                return False
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        if waited:
            log.info("the database %s is free: starting", self.database)
        return True

    async def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # lets the lock go
            self._fd = None

    async def holder(self) -> str | None:
        if fcntl is None or not self.path.exists():
            return None
        fd = self._open(os.O_RDONLY)
        try:
            return None if _locked(fd) else self._in_use(fd)  # closing the file lets a lock taken here go
        finally:
            os.close(fd)

    def _open(self, flags: int) -> int:
        """The lock file's descriptor; a StoreError naming it if it can't be opened (as for the database)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise StoreError(f"{self.path}: {exc.strerror or exc}") from None

    def _in_use(self, fd: int) -> str:
        return f"the database {self.database} is in use by another bot process ({_holder_of(fd)})"


def _locked(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder_of(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"


class PostgresShardClaim:
    """The shards of one process, claimed with advisory locks on a PostgreSQL connection of their own."""

    def __init__(self, url: str, shards: ShardSet) -> None:
        self.lost = asyncio.Event()
        self._url = url
        self._shards = shards
        self._name = describe_url(url)
        self._conn: Any = None
        self._gone = asyncio.Event()  # the claim's connection ended (the server's end, or a network error)
        self._keeper: asyncio.Task[None] | None = None

    async def acquire(self, stop: asyncio.Event) -> bool:
        """The first connection must open (else StoreError, as for the store); while waiting, the database may
        come and go."""
        conn = await self._connect()
        waited = False
        while True:
            try:
                if (holder := await self._try_claim(conn)) is None:
                    break
            except DATABASE_ERRORS as exc:
                log.warning("claiming shards %s: %s; trying again", self._shards, problem_of(exc, self._url))
                conn = await self._reconnect(conn)
            else:
                if not waited:
                    log.warning("%s; waiting for it to stop", holder)
                waited = True
            if await _stopped(stop, WAIT_POLL_SECONDS):
                await _close(conn)
                return False
        self._hold(conn)
        if waited:
            log.info("shards %s are free: starting", self._shards)
        self._keeper = asyncio.create_task(self._keep(stop), name="shard-claim")
        return True

    async def release(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.wait([self._keeper])
        if self._conn is not None:
            await _close(self._conn)  # the server lets the locks go with it
            self._conn = None

    async def holder(self) -> str | None:
        conn = await self._connect()
        try:
            if other_count := await self._other_count(conn):
                return other_count
            for shard in sorted(self._shards.ids):
                if (row := await conn.fetchrow(HOLDER, SHARD_SPACE, shard, None)) is not None:
                    return _shard_held(shard, self._shards.count, row)
            return None
        finally:
            await _close(conn)

    def _hold(self, conn: Any) -> None:
        self._conn = conn
        self._gone.clear()
        conn.add_termination_listener(lambda _: self._gone.set())

    async def _connect(self) -> Any:
        settings = {"application_name": f"kontext-bot shards {self._shards}"[:63], **KEEPALIVES}
        try:
            return await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT, server_settings=settings)
        except (*DATABASE_ERRORS, ValueError, TimeoutError) as exc:
            raise StoreError(f"{self._name}: {problem_of(exc, self._url)}") from None

    async def _reconnect(self, old: Any) -> Any:
        await _close(old)
        try:
            return await self._connect()
        except StoreError:
            return old  # closed: the next try fails at once and comes back here

    async def _try_claim(self, conn: Any) -> str | None:
        """Claim every shard, or none: None when claimed, else who is in the way."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", *CLAIMING)
            if other_count := await self._other_count(conn):
                return other_count
            count = self._shards.count
            await conn.execute("SELECT pg_advisory_lock_shared($1, $2)", COUNT_SPACE, count)
            for shard in sorted(self._shards.ids):
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", SHARD_SPACE, shard):
                    holder = await conn.fetchrow(HOLDER, SHARD_SPACE, shard, None)
                    await conn.execute("SELECT pg_advisory_unlock_all()")
                    return _shard_held(shard, count, holder)
        return None

    async def _other_count(self, conn: Any) -> str | None:
        """A process with another SHARD_COUNT: it splits the servers another way, so it overlaps every shard."""
        count = self._shards.count
        if (other := await conn.fetchrow(HOLDER, COUNT_SPACE, None, count)) is None:
            return None
        return (f"a bot process with SHARD_COUNT={other['key']} runs on {self._name} ({_described(other)}), "
                f"and this one has SHARD_COUNT={count}")  # fmt: skip

    async def _keep(self, stop: asyncio.Event) -> None:
        """Check the connection every CHECK_SECONDS (a silent network), and at once when it ends."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_SECONDS):
                    await self._gone.wait()
            if not self._gone.is_set() and await self._alive():
                continue
            log.warning("the connection that holds shards %s is gone; claiming them again", self._shards)
            if not await self._claim_again():
                self.lost.set()
                stop.set()
                return
            log.info("claimed shards %s again", self._shards)

    async def _alive(self) -> bool:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                await self._conn.fetchval("SELECT 1")
        except (*DATABASE_ERRORS, TimeoutError):
            return False
        return True

    async def _claim_again(self) -> bool:
        await _close(self._conn)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GRACE_SECONDS
        while (left := deadline - loop.time()) > 0:
            conn = None
            try:
                async with asyncio.timeout(left):
                    conn = await self._connect()
                    holder = await self._try_claim(conn)
            except (StoreError, *DATABASE_ERRORS, TimeoutError) as exc:
                if conn is not None:
                    await _close(conn)
                log.warning("claiming shards %s again failed: %s", self._shards, problem_of(exc, self._url))
                await asyncio.sleep(min(1.0, max(deadline - loop.time(), 0)))
                continue
            if holder is None:
                self._hold(conn)
                return True
            await _close(conn)
            log.error("shards %s were taken over: %s; stopping", self._shards, holder)
            return False
        log.error("could not claim shards %s again within %.0f s; stopping", self._shards, GRACE_SECONDS)
        return False


async def _close(conn: Any) -> None:
    with contextlib.suppress(*DATABASE_ERRORS, TimeoutError):
        await conn.close(timeout=CHECK_TIMEOUT)


def _shard_held(shard: int, count: int, row: Any) -> str:
    return f"shard {shard} of {count} is run by another process ({_described(row)})"


def _described(row: Any) -> str:
    if row is None:
        return "it just stopped"
    name = row["name"] or "unnamed"
    return f"{name}, from {row['address']}" if row["address"] else name


async def _stopped(stop: asyncio.Event, seconds: float) -> bool:
    """Wait `seconds`; whether `stop` was set meanwhile."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()
    return stop.is_set()
