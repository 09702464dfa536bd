"""FAL_KEY and DISCORD_TOKEN never leave the places they are meant for, and the logs hold no content.

`python -m bot` runs as a child process at LOG_LEVEL=DEBUG with distinctive secrets, through a delivered
job and jobs that fail on the way (fal 401, 403 and 422 on the submit, 401 on the result). Then neither
secret, in any form someone might encode it, may appear in what the process printed, in any request body
Discord received, or in the bytes of the SQLite files. fal gets the key in the Authorization header only,
and the result host gets no Authorization header at all.

What the process printed, in both LOG_FORMATs, also holds no interaction token (discord.py logs the webhook
URLs that carry them: scrubbed to `[token]`), no prompt, no SQL and no signed Discord link; in JSON, every
line is one JSON object.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.bot_process import BotProcess, bot_environment
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_fal import EXHAUSTED, UNAUTHORIZED, FakeFal
from tests.fakes.images import make_png
from tests.harness import Json

FAL_KEY_ID = "7c41e0d2-kontext-key-id-9f3b"
FAL_KEY_SECRET = "fal-secret-Qz8Lw2Vn5Rt0Yx4K"
FAL_KEY = f"{FAL_KEY_ID}:{FAL_KEY_SECRET}"
TOKEN_SECRET = "TokenHmac-Pq7Zr2Xw9Ks4Dv1Mn6Bt"
DISCORD_TOKEN = f"MTAwMDAwMDAwMDAwMDAwMDAy.GkXp3a.{TOKEN_SECRET}"  # id . timestamp . HMAC, like a real token
PROMPT = "paint it gold"


def forms(secret: str) -> list[str]:
    """The secret and the encodings a careless log line or header dump could carry it in."""
    raw = secret.encode()
    return [
        secret,
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        base64.b64encode(raw).decode().rstrip("="),
        raw.hex(),
    ]


LEAKS = [*forms(FAL_KEY), *forms(FAL_KEY_SECRET), *forms(DISCORD_TOKEN), *forms(TOKEN_SECRET)]


def leaks_in(text: str) -> list[str]:
    return [form for form in LEAKS if form in text]


@pytest.fixture
async def fal() -> AsyncIterator[FakeFal]:
    async with FakeFal(key=FAL_KEY) as fake:
        yield fake


@pytest.fixture
def log_format() -> str:
    return "text"


@pytest.fixture
async def bot(fake_discord: FakeDiscord, fal: FakeFal, tmp_path: Path, log_format: str) -> AsyncIterator[BotProcess]:
    env = bot_environment(
        fake_discord, fal, tmp_path / "kontext.sqlite3",
        DISCORD_TOKEN=DISCORD_TOKEN, FAL_KEY=FAL_KEY, LOG_LEVEL="DEBUG", LOG_FORMAT=log_format,
    )  # fmt: skip
    process = BotProcess(env, tmp_path)
    await process.start()
    yield process
    await process.kill()


async def kontext(discord: FakeDiscord) -> Json:
    image = discord.add_attachment("in.png", make_png(16, 16))
    options = [{"name": "prompt", "type": 3, "value": PROMPT}, {"name": "image1", "type": 11, "value": image["id"]}]
    payload = discord.slash("kontext", options, attachments=[image])
    await discord.interact(payload)
    return payload


async def final_text(discord: FakeDiscord, payload: Json, mark: str) -> str:
    """The interaction's status message once it shows `mark`."""

    def mine(message: Json) -> bool:
        return bool(message.get("interaction_metadata", {}).get("id") == payload["id"] and mark in message["content"])

    message = await discord.wait_for_message(mine, timeout=15)
    return str(message["content"])


def database_bytes(directory: Path) -> bytes:
    """The SQLite file and its -wal/-shm companions, whatever state they were left in."""
    files = sorted(directory.glob("kontext.sqlite3*"))
    assert files
    return b"".join(path.read_bytes() for path in files)


def dumped(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=repr)


SQL = re.compile(r"\b(?:INSERT (?:OR REPLACE )?INTO|SELECT .* FROM|UPDATE \w+ SET|CREATE TABLE|DELETE FROM)\b", re.I)
SIGNED_LINK = re.compile(r"[?&](?:ex|is|hm)=[0-9a-f]+")  # Discord's attachment signature (the fake's too)


def log_entries(lines: list[str], log_format: str) -> list[dict[str, str]]:
    """The lines as level/logger/message/exc; in JSON each line must be one object with the base fields."""
    if log_format == "text":
        return [{"level": (line.split()[2:3] or [""])[0], "message": line} for line in lines]
    entries = [json.loads(line) for line in lines]
    assert all(isinstance(e, dict) and {"ts", "level", "logger", "message"} <= e.keys() for e in entries)
    return entries


def assert_no_content_in_logs(output: str, interaction_tokens: list[str]) -> None:
    """No interaction token, prompt, SQL or signed link, where discord.py at DEBUG would print all of them."""
    assert interaction_tokens and [t for t in interaction_tokens if t in output] == []
    assert "/[token]/" in output  # non-vacuous: the webhook URLs with their tokens were logged, scrubbed
    assert PROMPT not in output and "[body omitted]" in output  # the message bodies were logged, left out
    assert SQL.findall(output) == [] and SIGNED_LINK.findall(output) == []


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_secrets_never_appear_in_logs_messages_or_the_database(
    bot: BotProcess, fake_discord: FakeDiscord, fal: FakeFal, tmp_path: Path, log_format: str
):
    payloads = [await kontext(fake_discord)]
    assert "✅ Done" in await final_text(fake_discord, payloads[-1], "✅ Done")
    fal.fail_next("submit", 401, UNAUTHORIZED)
    payloads.append(await kontext(fake_discord))
    assert "key was refused" in await final_text(fake_discord, payloads[-1], "❌")
    fal.fail_next("submit", 403, EXHAUSTED)
    payloads.append(await kontext(fake_discord))
    assert "out of credit" in await final_text(fake_discord, payloads[-1], "❌")
    detail = [{"loc": ["body", "image_urls", 0], "msg": "Could not load the image", "type": "image_load_error"}]
    fal.fail_next("submit", 422, {"detail": detail})
    payloads.append(await kontext(fake_discord))
    assert "could not read one of the images" in await final_text(fake_discord, payloads[-1], "❌")
    fal.fail_next("result", 401, UNAUTHORIZED)  # after fal took (and stored) the job
    payloads.append(await kontext(fake_discord))
    assert "key was refused" in await final_text(fake_discord, payloads[-1], "❌")
    assert await bot.terminate() == 0

    output = "\n".join(bot.lines)
    entries = log_entries(bot.lines, log_format)
    assert "DEBUG" in {e["level"] for e in entries} and "ready as" in output  # the process did log, at DEBUG
    assert leaks_in(output) == []
    assert "[redacted]" not in output  # nothing even tried: the formatter's scrubbing is the last resort only
    assert [e for e in entries if e["level"] in ("ERROR", "CRITICAL") or "Traceback" in str(e)] == []
    assert_no_content_in_logs(output, [str(p["token"]) for p in payloads])

    rest = [dumped([r.method, r.path, r.query, r.json, [f.filename for f in r.files]]) for r in fake_discord.requests]
    assert any("here is your edit" in r for r in rest) and any("key was refused" in r for r in rest)  # non-vacuous
    assert leaks_in("\n".join(rest)) == []
    assert leaks_in("".join(f.data.decode("latin-1") for r in fake_discord.requests for f in r.files)) == []
    messages = [*fake_discord.messages.values(), *fake_discord.deleted_messages.values()]
    assert leaks_in(dumped(messages)) == []

    frames = fake_discord.gateway_frames  # what the bot sent on the gateway: the token only to log in
    logins = [f for f in frames if f.get("op") in (2, 6)]  # IDENTIFY, RESUME
    assert logins and all(f["d"]["token"] == DISCORD_TOKEN for f in logins)
    assert leaks_in(dumped([{**f, "d": {**f["d"], "token": None}} if f in logins else f for f in frames])) == []

    stored = await asyncio.to_thread(database_bytes, tmp_path)
    assert PROMPT.encode() in stored  # the jobs are in these bytes
    assert leaks_in(stored.decode("latin-1")) == []


async def test_the_key_travels_only_in_the_authorization_header_to_fal(
    bot: BotProcess, fake_discord: FakeDiscord, fal: FakeFal
):
    assert "✅ Done" in await final_text(fake_discord, await kontext(fake_discord), "✅ Done")
    assert await bot.terminate() == 0

    api = [r for r in fal.requests if r.kind != "file"]
    files = [r for r in fal.requests if r.kind == "file"]
    assert {r.kind for r in api} >= {"submit", "result"} and files
    for rec in api:
        assert rec.headers["authorization"] == f"Key {FAL_KEY}", rec.path
        others = {name: value for name, value in rec.headers.items() if name != "authorization"}
        assert leaks_in(dumped([rec.path, rec.query, rec.json, others])) == [], rec.path
    for rec in files:  # the result host is not fal's API: no credentials of any kind
        assert "authorization" not in rec.headers and leaks_in(dumped(rec.headers)) == [], rec.path
