"""Logging to stdout (Docker collects it), as text or one JSON object per line.

Context: `log_context(...)` and `bind(...)` put a job's ids in a contextvar. asyncio copies the context into
every task created while it is set, so every line such a task logs, aiohttp's and discord.py's included,
carries the ids. For a job that means three calls in the job owner:

    with log_context(job_id=job.id, guild_id=job.guild_id, user_id=job.user_id):  # around the interaction's
        ...                                                                        # handling of the new job
        bind(request_id=handle.request_id)                                         # once fal accepted it
    with log_context(job_id=job.id, request_id=job.request_id, guild_id=job.guild_id, user_id=job.user_id):
        task = asyncio.create_task(...)                                            # where the job's task starts

Kept out, whatever the level: configured secrets and Discord interaction/webhook tokens (scrubbed from the
finished text, tracebacks included), request and response bodies of discord.py (prompts, signed attachment
links) and SQL statements with their parameters (the SQLite store logs none; asyncpg's logger is held at
WARNING).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Literal, TypedDict, Unpack

__all__ = (
    "JsonFormatter",
    "LogFields",
    "LogFormat",
    "RedactingFormatter",
    "Scrubber",
    "bind",
    "current_context",
    "log_context",
    "reset",
    "setup_logging",
)

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s%(context)s: %(message)s"
REDACTED = "[redacted]"
TOKEN_REDACTED = "[token]"  # noqa: S105  # the placeholder, not a token
BODY_OMITTED = "[body omitted]"

# Context field → its short name in text lines.
CONTEXT_FIELDS = {"job_id": "job", "request_id": "req", "guild_id": "guild", "user_id": "user", "shard_id": "shard"}

# Loggers held at WARNING or above, and why.
QUIET_LOGGERS = (
    "discord.gateway",  # every gateway payload: interaction tokens, message texts
    "asyncpg",  # logs no queries today; held here so a future version cannot start to
)

# discord.py logs whole request and response bodies at DEBUG (message texts, signed attachment links):
# (logger, message template) → the index of the body among the arguments.
BODY_ARGUMENTS = {
    ("discord.http", "%s %s with %s has returned %s"): 2,
    ("discord.http", "%s %s has received %s"): 2,
}

PATTERNS = (
    # /webhooks/<app_id>/<token>/... and /interactions/<id>/<token>/callback: a token lets anyone post as the bot.
    (re.compile(r"(/(?:webhooks|interactions)/\d+/)[^/\s?#'\"]+"), rf"\g<1>{TOKEN_REDACTED}"),
    # An interaction token anywhere: base64 of "interaction:<id>:…" always starts like this.
    (re.compile(r"aW50ZXJhY3Rpb246[A-Za-z0-9_\-]+=*"), TOKEN_REDACTED),
    # Credentials in a dumped header.
    (
        re.compile(r"(authorization['\"]?\s*[:=]\s*['\"]?(?:(?:bot|bearer|key|basic)\s+)?)[^\s'\",}]+", re.I),
        rf"\g<1>{REDACTED}",
    ),
)


class LogFields(TypedDict, total=False):
    """What a log line may carry about its job. None or "" means not known (yet)."""

    job_id: str | None
    request_id: str | None
    guild_id: int | None
    user_id: int | None
    shard_id: int | None


Context = Mapping[str, str]
_context: ContextVar[Context] = ContextVar("log_context", default=MappingProxyType({}))


def bind(**fields: Unpack[LogFields]) -> Token[Context]:
    """Add `fields` to the context of the current task (and tasks it creates from now on) until `reset`."""
    unknown = fields.keys() - CONTEXT_FIELDS.keys()
    if unknown:
        raise TypeError(f"unknown log context field(s): {', '.join(sorted(unknown))}")
    known = {name: str(value) for name, value in fields.items() if value is not None and value != ""}
    return _context.set(MappingProxyType({**_context.get(), **known}))


def reset(token: Token[Context]) -> None:
    """Undo a `bind` (and every bind made after it in this context)."""
    _context.reset(token)


@contextlib.contextmanager
def log_context(**fields: Unpack[LogFields]) -> Iterator[None]:
    """`bind` for the duration of a block; nested blocks merge their fields."""
    token = bind(**fields)
    try:
        yield
    finally:
        reset(token)


def current_context() -> Context:
    return _context.get()


def context_of(record: logging.LogRecord) -> dict[str, str]:
    """The record's context: the contextvar's, overridden by fields passed with `extra=`."""
    extra = {name: str(getattr(record, name)) for name in CONTEXT_FIELDS if getattr(record, name, None) is not None}
    return {name: value for name, value in {**current_context(), **extra}.items() if value}


class Scrubber:
    """Takes configured secrets and token-shaped strings out of a finished text."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms = {form for secret in secrets for form in (secret, secret.partition(":")[2])}
        self._secrets = sorted((form for form in forms if len(form) >= 6), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern, replacement in PATTERNS:
            text = pattern.sub(replacement, text)
        return text


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str | None, secrets: Iterable[str]) -> None:
        super().__init__(fmt)
        self.scrub = Scrubber(secrets)

    def message(self, record: logging.LogRecord) -> str:
        """The record's message with bodies left out; a bad format string does not lose the line."""
        try:
            return _without_body(record).getMessage()
        except Exception as exc:  # logging must not raise; the arguments are not shown
            return f"unformattable log message {record.msg!r} ({type(exc).__name__})"

    def details(self, record: logging.LogRecord) -> str:
        """The traceback and stack, if any."""
        parts = []
        if record.exc_text:
            parts.append(record.exc_text)
        elif record.exc_info and record.exc_info[0] is not None:
            parts.append(self.formatException(record.exc_info))
        if record.stack_info:
            parts.append(self.formatStack(record.stack_info))
        return "\n".join(parts)


class RedactingFormatter(_Formatter):
    """Text lines: `TEXT_FORMAT`, the context as ` [job=… req=…]`, then the traceback, all scrubbed."""

    def __init__(self, fmt: str = TEXT_FORMAT, secrets: Iterable[str] = ()) -> None:
        super().__init__(fmt, secrets)

    def format(self, record: logging.LogRecord) -> str:
        record.message = self.message(record)
        record.asctime = self.formatTime(record, self.datefmt)
        record.context = _compact(context_of(record))
        line = self.formatMessage(record)
        details = self.details(record)
        return self.scrub(f"{line}\n{details}" if details else line)


class JsonFormatter(_Formatter):
    """One JSON object per line: ts, level, logger, message, the context fields, exc (if any). Ids are strings."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(None, secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.scrub(self.message(record)),
            **context_of(record),
        }
        details = self.details(record)
        if details:
            entry["exc"] = self.scrub(details)
        return json.dumps(entry)  # ASCII only: a stray surrogate or a non-UTF-8 stdout cannot break a line


def _compact(context: Mapping[str, str]) -> str:
    if not context:
        return ""
    return " [" + " ".join(f"{CONTEXT_FIELDS[name]}={value}" for name, value in context.items()) + "]"


def _without_body(record: logging.LogRecord) -> logging.LogRecord:
    index = BODY_ARGUMENTS.get((record.name, record.msg)) if isinstance(record.msg, str) else None
    if index is None or not isinstance(record.args, tuple) or len(record.args) <= index or record.args[index] is None:
        return record
    quiet = logging.makeLogRecord(record.__dict__)
    quiet.args = (*record.args[:index], BODY_OMITTED, *record.args[index + 1 :])
    return quiet


def setup_logging(level: str, secrets: Iterable[str] = (), fmt: LogFormat = "text") -> None:
    """Everything to stdout through one handler on the root logger, so every logger is formatted and scrubbed."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else RedactingFormatter(TEXT_FORMAT, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)  # warnings too become log lines (valid JSON, scrubbed)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """A crash's traceback goes through the formatter too instead of raw to stderr."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, exc, tb)
        return
    logging.getLogger("bot").critical("uncaught exception", exc_info=(kind, exc, tb))
