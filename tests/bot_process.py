"""`python -m bot` as a real child process against the fakes, so a test can SIGKILL it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

from tests.conftest import DISCORD_TOKEN, FAL_KEY
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_fal import FakeFal

READY_LINE = "ready as"


def bot_environment(discord: FakeDiscord, fal: FakeFal, database: Path, **extra: str) -> dict[str, str]:
    """Only what the bot needs; nothing from the developer's own environment or .env leaks in."""
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "DISCORD_TOKEN": DISCORD_TOKEN,
        "FAL_KEY": FAL_KEY,
        "FAL_QUEUE_URL": fal.base_url,
        "FAL_RESULT_HOSTS": json.dumps([fal.authority]),
        "FAL_RESULT_ALLOW_HTTP": "true",  # the fake fal serves result files over http
        "DISCORD_API_URL": discord.api_url,
        "DISCORD_GATEWAY_URL": discord.gateway_url,
        "DATABASE_PATH": str(database),
        "POLL_INTERVAL_SECONDS": "0.05",
        "STATUS_EDIT_INTERVAL_SECONDS": "0.05",
        "COOLDOWN_SECONDS": "0",
        "RETRY_BASE_SECONDS": "0.05",
        "LOG_LEVEL": "INFO",
    }
    env.update(extra)
    return env


class BotProcess:
    """One run of the bot. `lines` collects everything it printed."""

    python: str = sys.executable  # the bench may run another checkout of the bot, in its own venv
    python_args: tuple[str, ...] = ("-m", "bot")  # ... or run it under a profiler

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self._env = env
        self._cwd = cwd
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.lines: list[str] = []
        self._ready = asyncio.Event()
        self._printed = asyncio.Event()

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("not started")
        return self._process.pid

    async def launch(self) -> None:
        """Start the process without waiting for anything."""
        self._process = await asyncio.create_subprocess_exec(
            self.python, *self.python_args, env=self._env, cwd=self._cwd,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())

    async def start(self, timeout: float = 15.0) -> None:
        await self.launch()
        assert self._reader is not None
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait([ready, self._reader], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            ready.cancel()
            await self.kill()
            raise RuntimeError("bot did not get ready:\n" + "\n".join(self.lines[-30:]))

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        try:
            async for raw in self._process.stdout:
                line = raw.decode(errors="replace").rstrip()
                self.lines.append(line)
                self._printed.set()
                if READY_LINE in line:
                    self._ready.set()
        finally:
            self._printed.set()

    async def wait_for_lines(self, text: str, count: int = 1, timeout: float = 15.0) -> list[str]:
        """The first `count` lines (printed so far or later) containing `text`."""
        assert self._reader is not None
        async with asyncio.timeout(timeout):
            while len(found := [line for line in self.lines if text in line]) < count:
                if self._reader.done():
                    raise RuntimeError(f"the bot exited before printing {text!r}:\n" + "\n".join(self.lines[-30:]))
                self._printed.clear()
                await self._printed.wait()
        return found[:count]

    async def wait_for_line(self, text: str, timeout: float = 15.0) -> str:
        """The first line (printed so far or later) that contains `text`."""
        try:
            [line] = await self.wait_for_lines(text, 1, timeout)
        except TimeoutError:
            raise TimeoutError(f"no line with {text!r}:\n" + "\n".join(self.lines[-20:])) from None
        return line

    async def exited(self, timeout: float = 15.0) -> int:
        """Wait for the process to end on its own; its exit status."""
        assert self._process is not None and self._reader is not None
        code = await asyncio.wait_for(self._process.wait(), timeout)
        await asyncio.wait_for(self._reader, 5)
        return code

    async def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, like a power cut."""
        await self._stop(signal.SIGKILL)

    async def terminate(self) -> int:
        return await self._stop(signal.SIGTERM)

    async def _stop(self, sig: signal.Signals) -> int:
        if self._process is None:
            return 0
        if self._process.returncode is None:
            self._process.send_signal(sig)
        code = await asyncio.wait_for(self._process.wait(), 15)
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)
        return code

    def errors(self) -> list[str]:
        return [line for line in self.lines if " ERROR " in line or "Traceback" in line]


def free_port() -> int:
    """A port nothing listens on (for "unreachable"), free to be taken later."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
