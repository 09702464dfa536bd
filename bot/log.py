"""Logging to stdout (Docker collects it), with secrets scrubbed as a last line of defence."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

__all__ = ("RedactingFormatter", "setup_logging")

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class RedactingFormatter(logging.Formatter):
    """Replaces configured secrets in the finished line, tracebacks included. Secrets are never
    logged on purpose; this catches a library echoing a header or a URL."""

    def __init__(self, fmt: str, secrets: Iterable[str]) -> None:
        super().__init__(fmt)
        self._secrets = [secret for secret in secrets if len(secret) >= 6]

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        for secret in self._secrets:
            line = line.replace(secret, "[redacted]")
        return line


def setup_logging(level: str, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(RedactingFormatter(FORMAT, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("discord.gateway").setLevel(logging.WARNING)
