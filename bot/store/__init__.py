"""Job storage: SQLite for one process (the default), PostgreSQL for several sharing one database."""

from __future__ import annotations

from bot.config import Settings
from bot.store.base import Store, StoreError
from bot.store.claims import DatabaseFileClaim, PostgresShardClaim, ShardClaim
from bot.store.postgres import PostgresJobStore
from bot.store.sqlite import SCHEMA_VERSION, SqliteJobStore

__all__ = (
    "SCHEMA_VERSION",
    "PostgresJobStore",
    "ShardClaim",
    "SqliteJobStore",
    "Store",
    "StoreError",
    "open_store",
    "shard_claim",
)


def open_store(settings: Settings) -> Store:
    """The store the settings ask for (not opened yet: `async with` it). DATABASE_URL selects PostgreSQL."""
    if settings.database_url is not None:
        return PostgresJobStore(settings.database_url.get_secret_value(), pool_size=settings.database_pool_size)
    return SqliteJobStore(settings.database_path)


def shard_claim(settings: Settings) -> ShardClaim:
    """The claim this process must hold on its shards before it runs them: on PostgreSQL each shard (every one
    when SHARD_IDS is not set), on SQLite the database file (one process per file)."""
    if settings.database_url is not None:
        return PostgresShardClaim(settings.database_url.get_secret_value(), settings.own_shards)
    return DatabaseFileClaim(settings.database_path)
