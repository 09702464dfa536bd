"""Discord's attachment URLs are signed and expire (`ex=` is the expiry, hex seconds). Inputs
reused later (Reroll) get fresh URLs from `POST /attachments/refresh-urls` first."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import discord
from yarl import URL

if TYPE_CHECKING:
    from bot.bot import KontextBot

__all__ = ("refresh_discord_urls", "signed_url_expires_soon")

log = logging.getLogger(__name__)

REFRESH_MARGIN_SECONDS = 3600


def signed_url_expires_soon(url: str, now: float | None = None) -> bool:
    """True for a signed Discord CDN URL that expires within the margin."""
    expiry = URL(url).query.get("ex")
    if expiry is None:
        return False
    try:
        expires_at = int(expiry, 16)
    except ValueError:
        return False
    return expires_at - (now if now is not None else time.time()) < REFRESH_MARGIN_SECONDS


async def refresh_discord_urls(bot: KontextBot, urls: Sequence[str]) -> tuple[str, ...]:
    """Replace soon-expiring signed URLs with fresh ones; anything else is kept as it is."""
    stale = [url for url in urls if signed_url_expires_soon(url)]
    if not stale:
        return tuple(urls)
    route = discord.http.Route("POST", "/attachments/refresh-urls")
    try:
        answer: Any = await bot.http.request(route, json={"attachment_urls": stale})
    except discord.HTTPException as exc:
        log.warning("could not refresh %d attachment URL(s): %s", len(stale), exc)
        return tuple(urls)
    fresh = {item["original"]: item["refreshed"] for item in answer.get("refreshed_urls", [])}
    return tuple(fresh.get(url, url) for url in urls)
