"""`python -m bot` as a real child process against the fakes, so a test can SIGKILL it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
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

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self._env = env
        self._cwd = cwd
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.lines: list[str] = []
        self._ready = asyncio.Event()
        self._printed = asyncio.Event()  # set, and replaced, at every new line

    async def start(self, timeout: float = 15.0) -> None:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", env=self._env, cwd=self._cwd,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read())
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait([ready, self._reader], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():
            ready.cancel()
            await self.kill()
            raise RuntimeError("bot did not get ready:\n" + "\n".join(self.lines[-30:]))

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for raw in self._process.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.lines.append(line)
            self._printed.set()
            self._printed = asyncio.Event()
            if READY_LINE in line:
                self._ready.set()

    async def wait_for_line(self, text: str, timeout: float = 15.0) -> str:
        """The first line (printed so far or later) that contains `text`."""
        try:
            async with asyncio.timeout(timeout):
                while not (found := [line for line in self.lines if text in line]):
                    await self._printed.wait()
        except TimeoutError:
            raise TimeoutError(f"no line with {text!r}:\n" + "\n".join(self.lines[-20:])) from None
        return found[0]

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
