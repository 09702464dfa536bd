"""Job storage: SQLite for one process (the default), PostgreSQL for several sharing one database."""

from __future__ import annotations

from bot.config import Settings
from bot.store.base import Store, StoreError
from bot.store.postgres import PostgresJobStore
from bot.store.sqlite import SCHEMA_VERSION, SqliteJobStore

__all__ = ("SCHEMA_VERSION", "PostgresJobStore", "SqliteJobStore", "Store", "StoreError", "open_store")


def open_store(settings: Settings) -> Store:
    """The store the settings ask for (not opened yet: `async with` it). DATABASE_URL selects PostgreSQL."""
    if settings.database_url is not None:
        return PostgresJobStore(settings.database_url.get_secret_value(), pool_size=settings.database_pool_size)
    return SqliteJobStore(settings.database_path)
