"""bot.log in-process: the text and JSON formatters, the job context, and what is never logged.

The same guarantees through a real `python -m bot` at DEBUG are in tests/test_secrets.py and
tests/test_log_process.py.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import TracebackType

import discord.http
import pytest
from hypothesis import given, strategies as st

from bot.fal import EditRequest
from bot.jobs import Job
from bot.log import (
    BODY_ARGUMENTS,
    BODY_OMITTED,
    QUIET_LOGGERS,
    JsonFormatter,
    LogFields,
    RedactingFormatter,
    bind,
    current_context,
    log_context,
    reset,
    setup_logging,
)
from bot.store import SqliteJobStore

FAL_KEY = "kid-4711:s3cr3t-Xq9vLpZt"
DISCORD_TOKEN = "MTIz.discord-TOKEN-value.Zy9"
SECRETS = (DISCORD_TOKEN, FAL_KEY)
INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OTp4eXo6c2VjcmV0LXJhbmRvbS1wYXJ0"
JOB = LogFields(job_id="a1b2c3", request_id="req-9f", guild_id=1150000000000000001, user_id=42)


def record(
    message: object, *args: object, name: str = "bot.jobs", exc: BaseException | None = None, **extra: object
) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    made = logging.LogRecord(name, logging.INFO, __file__, 1, message, args, exc_info)
    made.__dict__.update(extra)
    return made


def as_json(message: object, *args: object, **kwargs: object) -> dict[str, str]:
    line = JsonFormatter(SECRETS).format(record(message, *args, **kwargs))  # type: ignore[arg-type]
    assert "\n" not in line
    parsed = json.loads(line)
    assert isinstance(parsed, dict)
    return parsed


def as_text(message: object, *args: object, **kwargs: object) -> str:
    return RedactingFormatter(secrets=SECRETS).format(record(message, *args, **kwargs))  # type: ignore[arg-type]


def raised(text: str) -> RuntimeError:
    try:
        raise RuntimeError(text)
    except RuntimeError as exc:
        return exc


# -- the JSON line ---------------------------------------------------------------------------


def test_json_line_has_the_fields():
    with log_context(**JOB):
        entry = as_json("job %s delivered in %.1f s", "a1b2c3", 12.25)

    assert entry.pop("message") == "job a1b2c3 delivered in 12.2 s"
    ts = datetime.fromisoformat(entry.pop("ts"))
    assert ts.tzinfo is not None and ts.utcoffset() == timedelta(0) and abs(ts - datetime.now(UTC)) < timedelta(5)
    assert entry == {
        "level": "INFO", "logger": "bot.jobs", "job_id": "a1b2c3", "request_id": "req-9f",
        "guild_id": "1150000000000000001", "user_id": "42",  # snowflakes as strings: JSON readers lose 64-bit ints
    }  # fmt: skip


def test_json_line_carries_the_traceback_scrubbed():
    entry = as_json("fal call failed", exc=raised(f"request with Authorization: Key {FAL_KEY} failed"))

    assert entry["message"] == "fal call failed"
    assert entry["exc"].startswith("Traceback (most recent call last):")
    assert entry["exc"].endswith("RuntimeError: request with Authorization: Key [redacted] failed")
    assert FAL_KEY not in json.dumps(entry) and "s3cr3t-Xq9vLpZt" not in json.dumps(entry)


def test_no_exc_and_no_context_fields_when_there_are_none():
    assert set(as_json("plain")) == {"ts", "level", "logger", "message"}


def test_stack_info_is_kept_scrubbed():
    made = record("where am I")
    made.stack_info = f'Stack (most recent call last):\n  File "x.py", line 1, in f {DISCORD_TOKEN}'
    entry = json.loads(JsonFormatter(SECRETS).format(made))

    assert entry["exc"].startswith("Stack (most recent call last):") and DISCORD_TOKEN not in entry["exc"]


@pytest.mark.parametrize(
    ("message", "args", "expected"),
    [
        ("n=%d ratio=%.2f none=%s", (3, 0.5, None), "n=3 ratio=0.50 none=None"),
        ("payload %s", ({"auth": f"Bot {DISCORD_TOKEN}", "n": [1]},), "payload {'auth': 'Bot [redacted]', 'n': [1]}"),
        ("raw %r", (f"key={FAL_KEY}".encode(),), "raw b'key=[redacted]'"),
        ("error: %s", (raised(f"token {DISCORD_TOKEN}"),), "error: token [redacted]"),
        (ValueError(f"a bare exception as the message, {FAL_KEY}"), (), "a bare exception as the message, [redacted]"),
        ({"a dict": "as the message"}, (), "{'a dict': 'as the message'}"),
        ("%(user)s did %(what)s", ({"user": "u1", "what": "x"},), "u1 did x"),
    ],
    ids=["numbers", "dict-arg", "bytes-arg", "exception-arg", "exception-message", "dict-message", "mapping-args"],
)
def test_non_str_messages_and_args(message: object, args: tuple[object, ...], expected: str):
    assert as_json(message, *args)["message"] == expected
    assert as_text(message, *args).endswith(f"bot.jobs: {expected}")


def test_a_bad_format_string_costs_the_arguments_not_the_line():
    entry = as_json("two placeholders %s %s", f"only one, with {FAL_KEY}")

    assert entry["message"] == "unformattable log message 'two placeholders %s %s' (TypeError)"
    text = as_text("%d", "not a number")
    assert text.endswith("unformattable log message '%d' (TypeError)")


@given(st.text())
def test_any_text_makes_one_valid_json_line(text: str):
    line = JsonFormatter().format(record("%s", text))

    assert "\n" not in line and line.isascii()
    assert json.loads(line)["message"] == JsonFormatter().scrub(text)


@given(st.text(alphabet=st.characters(codec="utf-8")), st.sampled_from(SECRETS))
def test_a_secret_never_survives_any_surroundings(text: str, secret: str):
    line = JsonFormatter(SECRETS).format(record("%s%s%s", text, secret, text))

    assert secret not in json.loads(line)["message"]


# -- the text line ---------------------------------------------------------------------------


def test_text_line_shows_the_context_compactly():
    with log_context(job_id="a1b2c3", request_id="req-9f"):
        line = as_text("status %s", "IN_QUEUE", name="discord.http")

    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO    discord\.http \[job=a1b2c3 req=req-9f\]: status IN_QUEUE", line
    ), line
    assert as_text("no job").endswith(" INFO    bot.jobs: no job")


def test_text_line_has_the_traceback_scrubbed():
    line = as_text("job %s crashed", "a1", exc=raised(f"bad token {DISCORD_TOKEN}"))

    first, *rest = line.splitlines()
    assert first.endswith("bot.jobs: job a1 crashed")
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "RuntimeError: bad token [redacted]"


# -- tokens and bodies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"PATCH https://discord.com/api/v10/webhooks/1200/{INTERACTION_TOKEN}/messages/@original has returned 200",
            "PATCH https://discord.com/api/v10/webhooks/1200/[token]/messages/@original has returned 200",
        ),
        (
            "POST http://127.0.0.1:5/api/v10/interactions/99/fake-interaction-token-99/callback?with_response=true",
            "POST http://127.0.0.1:5/api/v10/interactions/99/[token]/callback?with_response=true",
        ),
        ("Webhook ID 5 with POST /webhooks/5/Zx-y_1 has returned", "Webhook ID 5 with POST /webhooks/5/[token] has"),
        (f"interaction token={INTERACTION_TOKEN}!", "interaction token=[token]!"),
        ("{'Authorization': 'Bot abc.def.ghi', 'X': 1}", "{'Authorization': 'Bot [redacted]', 'X': 1}"),
        ('"authorization": "Bearer sk-live-123"', '"authorization": "Bearer [redacted]"'),
        ("GET /webhooks/5 and /interactions/ stay", "GET /webhooks/5 and /interactions/ stay"),
    ],
    ids=["webhook-url", "callback-url", "plain-webhook", "raw-interaction-token", "auth-header", "bearer", "untouched"],
)
def test_tokens_are_scrubbed_by_pattern(text: str, expected: str):
    assert as_json("%s", text)["message"].startswith(expected)
    assert expected in as_text("%s", text)


def test_discord_request_and_response_bodies_are_left_out():
    body = '{"content": "paint it gold", "attachments": [{"url": "https://cdn/x.png?ex=1&is=2&hm=3"}]}'
    url = "https://x/channels/1/messages"
    sent = as_json("%s %s with %s has returned %s", "POST", url, body, 200, name="discord.http")
    got = as_json("%s %s has received %s", "GET", f"{url}/2", {"content": "x"}, name="discord.http")

    assert sent["message"] == f"POST {url} with {BODY_OMITTED} has returned 200"
    assert got["message"] == f"GET {url}/2 has received {BODY_OMITTED}"
    assert as_json("%s %s has received %s", "a", "b", "kept", name="bot.other")["message"] == "a b has received kept"


def test_discord_py_still_logs_bodies_with_these_templates():
    """If discord.py changes its wording, the bodies would come back: this fails first."""
    source = inspect.getsource(discord.http)

    for logger, template in BODY_ARGUMENTS:
        assert logger == discord.http._log.name and f"'{template}'" in source


# -- context ---------------------------------------------------------------------------------


def test_contexts_nest_merge_and_unwind():
    assert current_context() == {}
    with log_context(guild_id=1, user_id=2):
        with log_context(job_id="j1", user_id=3):
            assert current_context() == {"guild_id": "1", "user_id": "3", "job_id": "j1"}
            bind(request_id="r1")
            assert as_json("x")["request_id"] == "r1"
        assert current_context() == {"guild_id": "1", "user_id": "2"}  # the bind inside went with its block
        token = bind(request_id="r2", job_id=None, shard_id=0)  # None: not known, leaves nothing
        assert current_context() == {"guild_id": "1", "user_id": "2", "request_id": "r2", "shard_id": "0"}
        reset(token)
        assert current_context() == {"guild_id": "1", "user_id": "2"}
    assert current_context() == {}


def test_unknown_empty_and_extra_fields():
    with pytest.raises(TypeError, match="prompt"):
        bind(prompt="paint it gold")  # type: ignore[call-arg]  # only ids may be bound, never content
    with log_context(job_id="j1", request_id=""):
        assert current_context() == {"job_id": "j1"}  # "" is a request id not known yet
        assert as_json("x", job_id="other", request_id="r9")["job_id"] == "other"  # extra= wins for one line
        assert as_json("x", job_id="other", request_id="r9")["request_id"] == "r9"


async def test_concurrent_tasks_keep_their_own_context():
    lines: list[dict[str, str]] = []

    async def job(job_id: str, user_id: int) -> None:
        bind(job_id=job_id, user_id=user_id)  # the rest of this task
        for step in range(3):
            await asyncio.sleep(0)
            lines.append(as_json("step %d", step, name="discord.http"))
            with log_context(request_id=f"{job_id}-r{step}"):
                await asyncio.sleep(0)
                lines.append(as_json("inner", name="aiohttp.client"))

    await asyncio.gather(job("j1", 1), job("j2", 2), job("j3", 3))

    assert len(lines) == 18 and current_context() == {}
    for entry in lines:
        assert entry["user_id"] == entry["job_id"][1]
        assert entry.get("request_id", entry["job_id"]).startswith(entry["job_id"])


async def test_tasks_threads_and_callbacks_started_in_a_context_inherit_it():
    loop = asyncio.get_running_loop()
    seen: dict[str, str] = {}
    called = asyncio.Event()

    def callback() -> None:
        seen["callback"] = as_json("cb")["job_id"]
        called.set()

    async def child() -> str:
        return as_json("child")["job_id"]

    with log_context(job_id="outer"):
        task = asyncio.create_task(child())  # the job owner's one wrap: create the task inside the context
        loop.call_soon(callback)
        in_thread = await asyncio.to_thread(lambda: as_json("thread")["job_id"])
    bind(job_id="later")  # changes after the task was created do not reach it

    assert await task == "outer" and in_thread == "outer"
    await called.wait()
    assert seen["callback"] == "outer"


# -- setup_logging ---------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    excepthook = sys.excepthook
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, quiet_level in quiet.items():
            logging.getLogger(name).setLevel(quiet_level)
        sys.excepthook = excepthook
        logging.captureWarnings(False)


def json_lines(out: str) -> list[dict[str, str]]:
    return [json.loads(line) for line in out.splitlines()]


@pytest.mark.usefixtures("restore_logging")
async def test_sql_and_its_parameters_stay_out_even_at_debug(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    setup_logging("DEBUG", SECRETS, "json")

    async with SqliteJobStore(tmp_path / "x.sqlite3") as store:
        request = EditRequest(prompt="paint it gold", image_urls=("https://cdn.example/a.png",))
        await store.save(Job(request=request, user_id=1, channel_id=2, guild_id=3, source="slash", cost_usd=Decimal(0)))
    logging.getLogger("bot").debug("still at DEBUG")

    out = capsys.readouterr().out
    assert [e["message"] for e in json_lines(out)] == ["still at DEBUG"]
    assert all(logging.getLogger(name).level == logging.WARNING for name in QUIET_LOGGERS)


@pytest.mark.usefixtures("restore_logging")
def test_quiet_loggers_follow_a_stricter_level():
    setup_logging("ERROR", SECRETS)

    assert all(logging.getLogger(name).getEffectiveLevel() == logging.ERROR for name in QUIET_LOGGERS)


@pytest.mark.usefixtures("restore_logging")
def test_warnings_and_crashes_become_json_lines(capsys: pytest.CaptureFixture[str]):
    setup_logging("INFO", SECRETS, "json")

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn(f"careless {DISCORD_TOKEN}", UserWarning, stacklevel=1)
    sys.excepthook(*exc_info(raised(f"crash with {FAL_KEY}")))

    warned, crashed = json_lines(capsys.readouterr().out)
    assert warned["logger"] == "py.warnings" and "careless [redacted]" in warned["message"]
    assert crashed["level"] == "CRITICAL" and crashed["exc"].endswith("RuntimeError: crash with [redacted]")


def exc_info(exc: BaseException) -> tuple[type[BaseException], BaseException, TracebackType | None]:
    return type(exc), exc, exc.__traceback__
