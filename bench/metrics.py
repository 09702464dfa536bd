"""Measuring tools: percentiles, a log-record counter, and a sampler thread for RSS and CPU attribution."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import resource
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# Whose work an event-loop callback is, by the file of the code it runs (first match wins).
OWNERS = (
    ("fakes", ("/tests/fakes/", "/aiohttp/web_")),  # aiohttp's web_* modules: the fakes' HTTP servers
    ("bench", ("/bench/",)),
    ("official", ("/fal_client/", "/httpx/", "/httpcore/")),
)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Spread:
    n: int
    p50: float
    p95: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        return cls(len(values), percentile(values, 50), percentile(values, 95), max(values, default=math.nan))


class LogCounter(logging.Handler):
    """Counts WARNING+ records by level and keeps a few distinct messages of each level."""

    def __init__(self, keep: int = 6) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()
        self.samples: dict[str, Counter[str]] = {}
        self._keep = keep

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1
        seen = self.samples.setdefault(record.levelname, Counter())
        text = f"{record.name}: {record.getMessage().splitlines()[0]}"[:160]
        if record.exc_info and record.exc_info[1] is not None:
            text += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"[:160]
        if text in seen or len(seen) < self._keep:
            seen[text] += 1

    @property
    def errors(self) -> int:
        return self.counts["ERROR"] + self.counts["CRITICAL"]


def rss_kib(field_name: str = "VmRSS") -> int:
    """A size field of /proc/self/status in KiB (VmRSS now, VmHWM = peak so far)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def open_fds() -> int:
    """Open file descriptors: both ends of every loopback connection live in this process."""
    return len(os.listdir("/proc/self/fd"))


def listen_overflows() -> int:
    """The kernel's count of connection attempts dropped because a listen queue was full (all sockets)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return 0


def tcp_connections(*ports: int) -> list[int]:
    """ESTABLISHED IPv4 connections whose remote end is each port: the client sides of connections to a fake."""
    wanted = {f"{port:04X}": i for i, port in enumerate(ports)}
    counts = [0] * len(ports)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split(maxsplit=4)
        index = wanted.get(fields[2][-4:])
        if index is not None and fields[3] == "01":
            counts[index] += 1
    return counts


def max_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _owner_of_file(filename: str) -> str:
    return next((owner for owner, marks in OWNERS if any(m in filename for m in marks)), "bot")


def _owner(callback: Callable[..., Any]) -> str:
    """Task steps belong to the task's coroutine; socket reads to the protocol (aiohttp server = fakes)."""
    target = getattr(callback, "__self__", None)
    if isinstance(target, asyncio.Task):
        code = getattr(target.get_coro(), "cr_code", None)
        return _owner_of_file(code.co_filename) if code is not None else "other"
    protocol = getattr(target, "_protocol", None)
    if protocol is not None:
        return "fakes" if type(protocol).__module__.startswith("aiohttp.web") else "bot"
    if getattr(callback, "__name__", "") == "_accept_connection":
        return "fakes"  # only the fakes listen
    code = getattr(callback, "__code__", None)
    return _owner_of_file(code.co_filename) if code is not None else "other"


@dataclass
class CpuReport:
    wall: float
    cpu_total: float  # time.process_time: every thread
    cpu_main: float  # the event loop's thread
    by_owner: dict[str, float]  # main-thread CPU inside event-loop callbacks, by owner

    @property
    def cpu_other_threads(self) -> float:
        """aiosqlite's worker thread (the bot's SQLite work) and executor threads."""
        return max(self.cpu_total - self.cpu_main, 0.0)

    @property
    def cpu_fakes(self) -> float:
        return self.by_owner.get("fakes", 0.0)

    @property
    def cpu_bench(self) -> float:
        return self.by_owner.get("bench", 0.0)

    @property
    def cpu_bot_estimate(self) -> float:
        """Everything but the fakes and the bench's own monitor: bot callbacks, unattributed callbacks,
        the loop's own overhead and the other threads."""
        return self.cpu_total - self.cpu_fakes - self.cpu_bench


@contextmanager
def cpu_accounting() -> Iterator[list[CpuReport]]:
    """Times every event-loop callback with the thread's CPU clock and books it to its owner.

    Patches asyncio.events.Handle._run (bench-only, undone on exit); costs ~2 µs per callback and
    adds no thread, so nothing competes with aiosqlite's worker for the GIL. Yields a list that
    holds the report after the block."""
    by_owner: defaultdict[str, float] = defaultdict(float)
    original = asyncio.events.Handle._run

    def timed_run(handle: asyncio.Handle) -> None:
        started = time.thread_time()
        try:
            original(handle)
        finally:
            by_owner[_owner(handle._callback)] += time.thread_time() - started  # type: ignore[attr-defined]

    out: list[CpuReport] = []
    wall0, cpu0, main0 = time.perf_counter(), time.process_time(), time.thread_time()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(asyncio.events.Handle, "_run", timed_run)
        yield out
    out.append(CpuReport(time.perf_counter() - wall0, time.process_time() - cpu0, time.thread_time() - main0,
                         dict(by_owner)))  # fmt: skip


@dataclass
class RssReport:
    baseline_kib: int
    peak_kib: int
    hwm_before_kib: int
    hwm_after_kib: int
    maxrss_after_kib: int
    fds_baseline: int
    fds_peak: int

    @property
    def increase_kib(self) -> int:
        return self.peak_kib - self.baseline_kib


@dataclass
class RssSampler:
    """Samples VmRSS and open fds from an asyncio task every `interval` s (no thread); the RSS peak minus
    the baseline is the memory the run added, whatever the process's earlier high-water mark was."""

    interval: float = 0.1
    _peak: int = 0
    _fds_peak: int = 0
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._baseline, self._hwm_before = rss_kib(), rss_kib("VmHWM")
        self._peak = self._baseline
        self._fds_baseline = self._fds_peak = open_fds()
        self._task = asyncio.create_task(self._run(), name="bench-rss")

    def stop(self) -> RssReport:
        if self._task is not None:
            self._task.cancel()
        self._peak = max(self._peak, rss_kib())
        return RssReport(
            self._baseline, self._peak, self._hwm_before, rss_kib("VmHWM"), max_rss_kib(),
            self._fds_baseline, self._fds_peak,
        )  # fmt: skip

    async def _run(self) -> None:
        while True:
            self._peak = max(self._peak, rss_kib())
            self._fds_peak = max(self._fds_peak, open_fds())
            await asyncio.sleep(self.interval)
