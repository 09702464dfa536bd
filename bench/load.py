"""`python -m bench.load`: how much /kontext one bot process holds, and what it costs.

The fakes and this driver run here; the bot runs as `python -m bot` in its own process, so its CPU and
memory are read from /proc for that process alone. Every /kontext is a distinct user with a unique prompt;
each fal job walks queue positions 3, 2, 1, 0, two progress steps and COMPLETED (≈ 12 s at fal).

Figures (see bench/README.md):
  * the highest sustained rate with interaction ack p99 under 500 ms (a step search);
  * three times that rate for 30 s: expired interactions, lost or duplicated paid jobs, requests shed;
  * the bot's CPU per job and RSS per 1,000 concurrent jobs (from the 100/s run);
  * a soak at half the sustained rate with RSS growth.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

from bench.rig import Rig, in_flight, is_result, rig, sample, wall
from bench.world import bench_prompt, kontext_payload
from tests.fakes.fake_discord import message_text
from tests.fakes.fake_fal import JobScript

SCRIPT = JobScript(queue_positions=(3, 2, 1, 0), progress_steps=2, step_seconds=2.0)
ACK_TARGET = 0.5
DRAIN_SECONDS = 90.0  # after the last dispatch, for the jobs in flight to end
_CALLBACK = re.compile(r"/interactions/\d+/(?P<token>[^/]+)/callback")
WARNINGS = ("Can't keep up", "heartbeat blocked", "rate limited")


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass
class Run:
    """What one load run measured."""

    name: str
    rate: float
    seconds: float
    dispatched: int = 0
    acks: list[float] = field(default_factory=list)
    expired: int = 0
    shed: int = 0
    refused_other: int = 0
    paid: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    cpu_seconds: float = 0.0
    cpu_user: float = 0.0
    cpu_system: float = 0.0  # in the kernel: sockets, the event loop's polling, disk flushes
    rss_start_kib: int = 0
    rss_peak_kib: int = 0
    rss_end_kib: int = 0
    peak_in_flight: int = 0
    rss_series: list[tuple[float, int, int]] = field(default_factory=list)
    discord_requests: Counter[str] = field(default_factory=Counter)
    fal_requests: Counter[str] = field(default_factory=Counter)
    bot_warnings: Counter[str] = field(default_factory=Counter)
    bot_errors: list[str] = field(default_factory=list)
    drained: bool = True
    lost_examples: list[str] = field(default_factory=list)  # request id and fal's last state of a few lost jobs
    fakes_cpu_share: float = 0.0  # of one core, by this process (fakes + driver): near 1.0, they are the limit

    def ack(self, q: float) -> float:
        return percentile(self.acks, q) if self.acks else float("nan")

    @property
    def cpu_ms_per_job(self) -> float:
        return 1000 * self.cpu_seconds / self.delivered if self.delivered else float("nan")

    @property
    def rss_per_1000_kib(self) -> float:
        grown = self.rss_peak_kib - self.rss_start_kib
        return 1000 * grown / self.peak_in_flight if self.peak_in_flight else float("nan")

    @property
    def holds(self) -> bool:
        """Sustained: every interaction answered in time (p99 under the target) and nothing refused or lost."""
        return (self.ack(99) < ACK_TARGET and not self.expired and not self.shed and not self.lost
                and not self.duplicated and self.drained)  # fmt: skip


async def load(name: str, rate: float, seconds: float, *, jitter: float = 1.0, env: dict[str, str] | None = None,
               ) -> Run:  # fmt: skip
    """`rate` /kontext per second for `seconds`, then wait for every job to end; one fresh bot."""
    count = max(1, round(rate * seconds))
    async with rig(SCRIPT, jobs=count, jitter=jitter, users=count, env=env) as r:
        await asyncio.sleep(1.0)  # let the fresh process settle (command sync, first GC)
        return await _measure(r, Run(name, rate, seconds))


async def _measure(r: Rig, run: Run) -> Run:
    loop = asyncio.get_running_loop()
    stop, samples = asyncio.Event(), run.rss_series
    sampler = asyncio.create_task(sample(r, samples, stop))
    cpu_before, run.rss_start_kib = r.cpu_split(), r.rss_kib()
    fakes_cpu, started = time.process_time(), loop.time()
    tokens = await _dispatch(r, run)
    run.drained = await _drain(r, tokens, loop.time() + DRAIN_SECONDS)
    user, system = r.cpu_split()
    run.cpu_user, run.cpu_system = user - cpu_before[0], system - cpu_before[1]
    run.cpu_seconds = run.cpu_user + run.cpu_system
    run.fakes_cpu_share = (time.process_time() - fakes_cpu) / (loop.time() - started)
    stop.set()
    await sampler
    run.rss_end_kib = r.rss_kib()
    run.rss_peak_kib = max((kib for _, kib, _ in samples), default=run.rss_end_kib)
    run.peak_in_flight = max((n for _, _, n in samples), default=0)
    _score(r, run, tokens)
    return run


async def _dispatch(r: Rig, run: Run) -> dict[str, int]:
    """Send the interactions on schedule; token → job index."""
    loop = asyncio.get_running_loop()
    count, start, tokens = round(run.rate * run.seconds), loop.time(), {}
    for index in range(count):
        delay = start + index / run.rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        channel = r.channels[index % len(r.channels)]
        payload = kontext_payload(r.discord, bench_prompt(run.name, index), r.image, r.users[index], channel)
        tokens[payload["token"]] = index
        await r.discord.interact(payload)
    run.dispatched = count
    return tokens


async def _drain(r: Rig, tokens: dict[str, int], deadline: float) -> bool:
    """Wait until every interaction was answered and every paid job delivered (or the deadline passed)."""
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        answered = r.answered() >= len(tokens)
        if answered and in_flight(r) == 0 and _all_fal_done(r):
            return True
        await asyncio.sleep(0.25)
    return False


def _all_fal_done(r: Rig) -> bool:
    return all(job.history and job.history[-1][0] == "COMPLETED" for job in r.fal.jobs.values())


def _score(r: Rig, run: Run, tokens: dict[str, int]) -> None:
    by_token = r.discord.interactions.by_token
    dispatched_at = {token: by_token[token].dispatched_at or 0.0 for token in tokens}
    for rec in r.discord.callbacks():
        match = _CALLBACK.fullmatch(rec.path)
        if match is None or match["token"] not in dispatched_at:
            continue
        if rec.status == 404:
            run.expired += 1
            continue
        run.acks.append(rec.time - dispatched_at[match["token"]])
        data = (rec.json or {}).get("data") or {}
        if data.get("flags", 0) & 64:
            run.shed += "busy" in str(data.get("content"))
            run.refused_other += "busy" not in str(data.get("content"))
    run.expired += len(tokens) - len([r_ for r_ in r.discord.callbacks() if _CALLBACK.fullmatch(r_.path)])
    _count_deliveries(r, run)
    _count_requests(r, run)
    _read_bot_output(r, run)


def _count_requests(r: Rig, run: Run) -> None:
    for rec in r.discord.requests:
        run.discord_requests[_kind(rec.method, rec.path)] += 1
    for fal_rec in r.fal.requests:
        run.fal_requests[fal_rec.kind] += 1


def _kind(method: str, path: str) -> str:
    if path.endswith("/callback"):
        return "interaction answer"
    if path.startswith("/webhooks/"):
        return "status edit (token)" if method == "PATCH" else f"webhook {method}"
    if "/threads" in path:
        return "thread"
    if path.startswith("/channels/") and "/messages" in path:
        return {"POST": "channel post", "PATCH": "channel edit"}.get(method, f"channel {method}")
    return f"other {method}"


def _count_deliveries(r: Rig, run: Run) -> None:
    texts = [message_text(m) for m in r.discord.messages.values()]  # result cards show their text in components
    results = Counter(_prompt_line(text) for text in texts if is_result(text))
    prompts = [str(job.input.get("prompt")) for job in r.fal.jobs.values()]
    run.paid, run.delivered = len(prompts), sum(min(results[p], 1) for p in prompts)
    run.lost = sum(1 for p in prompts if results[p] == 0)
    run.duplicated = sum(results[p] - 1 for p in prompts if results[p] > 1)
    lost = [job for job in r.fal.jobs.values() if results[str(job.input.get("prompt"))] == 0]
    run.lost_examples = [f"{job.request_id}: {job.history[-1][0] if job.history else '-'}" for job in lost[:5]]


def _prompt_line(content: str) -> str:
    quoted = [line[2:] for line in content.splitlines() if line.startswith("> ")]
    return quoted[0] if quoted else ""


def _read_bot_output(r: Rig, run: Run) -> None:
    """Counts the warnings; keeps each ERROR line and the exception that ends each traceback.
    `BENCH_BOT_LOG=<file>` keeps everything the bot printed."""
    lines = [line for bot in r.bots for line in bot.lines]
    if log_file := os.environ.get("BENCH_BOT_LOG"):
        Path(log_file).write_text("\n".join(lines) + "\n")
    in_traceback = False
    for line in lines:
        for warning in WARNINGS:
            if warning in line:
                run.bot_warnings[warning] += 1
        ends_traceback = in_traceback and line and not line.startswith(" ")  # the exception, after the frames
        if " ERROR " in line or ends_traceback:
            run.bot_errors.append(line[:300])
        in_traceback = line.startswith("Traceback") or (in_traceback and line.startswith(" "))


# --- the searches and the report ---------------------------------------------------------------------


async def sustained(rates: list[float], seconds: float) -> tuple[float, list[Run]]:
    """Step up the rate until a run no longer holds; the last rate that held."""
    held, runs = 0.0, []
    for rate in rates:
        run = await load(f"s{int(rate)}", rate, seconds)
        runs.append(run)
        progress(f"{rate:g}/s: ack p99 {run.ack(99) * 1000:.0f} ms, expired {run.expired}, shed {run.shed}, "
                 f"lost {run.lost}, cpu {run.cpu_ms_per_job:.1f} ms/job")  # fmt: skip
        if not run.holds:
            break
        held = rate
    return held, runs


def progress(message: str) -> None:
    print(f"[{wall()}] {message}", file=sys.stderr, flush=True)


def describe(run: Run) -> dict[str, object]:
    return {
        "name": run.name, "rate_per_s": run.rate, "seconds": run.seconds, "dispatched": run.dispatched,
        "ack_p50_ms": round(run.ack(50) * 1000), "ack_p95_ms": round(run.ack(95) * 1000),
        "ack_p99_ms": round(run.ack(99) * 1000), "ack_max_ms": round(max(run.acks, default=0) * 1000),
        "expired": run.expired, "shed": run.shed, "refused_other": run.refused_other, "paid_jobs": run.paid,
        "delivered": run.delivered, "lost": run.lost, "duplicated": run.duplicated, "drained": run.drained,
        "bot_cpu_ms_per_job": round(run.cpu_ms_per_job, 2),
        "bot_cpu_system_share": round(run.cpu_system / run.cpu_seconds, 2) if run.cpu_seconds else 0.0,
        "peak_jobs_in_flight": run.peak_in_flight,
        "fakes_cpu_share": round(run.fakes_cpu_share, 2),
        "rss_start_mib": round(run.rss_start_kib / 1024, 1), "rss_peak_mib": round(run.rss_peak_kib / 1024, 1),
        "rss_end_mib": round(run.rss_end_kib / 1024, 1), "rss_per_1000_jobs_mib": round(run.rss_per_1000_kib / 1024, 1),
        "discord_requests_per_job": _per_job(run.discord_requests, run.delivered),
        "fal_requests_per_job": _per_job(run.fal_requests, run.delivered),
        "bot_warnings": dict(run.bot_warnings), "bot_errors": run.bot_errors[:10],
        "lost_examples": run.lost_examples,
    }  # fmt: skip


def _per_job(counts: Counter[str], jobs: int) -> dict[str, float]:
    per_job = {kind: round(n / jobs, 2) for kind, n in counts.most_common()} if jobs else {}
    return {"total": round(sum(counts.values()) / jobs, 2) if jobs else 0.0, **per_job}


def header() -> str:
    versions = ", ".join(f"{name} {version(name)}" for name in ("discord.py", "aiohttp"))
    return (f"kontext-bot load bench: python -m bot against FakeDiscord + FakeFal (driver process); "
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; Python {platform.python_version()}; {versions}; "
            f"{len(os.sched_getaffinity(0))} CPU(s); {platform.machine()}")  # fmt: skip


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    figures: dict[str, object] = {"header": header()}
    if args.only in (None, "load"):
        progress(f"load: {args.rate:g}/s for {args.seconds:g} s")
        figures["load"] = describe(await load("load", args.rate, args.seconds))
    if args.only in (None, "sustained", "overload", "soak"):
        rate = args.sustained or 0.0
        if not rate:
            rate, runs = await sustained(args.steps, args.step_seconds)
            figures["sustained_search"] = [describe(run) for run in runs]
        figures["sustained_rate_per_s"] = rate
        if args.only in (None, "overload") and rate:
            progress(f"overload: {3 * rate:g}/s for {args.overload_seconds:g} s")
            figures["overload_3x"] = describe(await load("over", 3 * rate, args.overload_seconds))
        if args.only in (None, "soak") and rate and args.soak_minutes:
            progress(f"soak: {rate / 2:g}/s for {args.soak_minutes:g} min")
            soak = await load("soak", rate / 2, args.soak_minutes * 60)
            figures["soak"] = {**describe(soak), "rss_growth_pct": _growth(soak)}
    return figures


def _growth(run: Run) -> float:
    """RSS growth from the end of the first minute to the end of the run (in flight by then: steady)."""
    series = run.rss_series
    if len(series) < 4:
        return float("nan")
    start = series[0][0]
    first = next((kib for t, kib, _ in series if t - start >= 60), series[len(series) // 10][1])
    last = max(kib for t, kib, _ in series if t - start <= run.seconds)
    return round(100 * (last - first) / first, 1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["load", "sustained", "overload", "soak"], default=None)
    parser.add_argument("--rate", type=float, default=100.0, help="/kontext per second of the load run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the load run")
    parser.add_argument("--steps", type=lambda s: [float(x) for x in s.split(",")],
                        default=[20, 40, 60, 80, 100, 120, 140, 160, 200], help="rates tried, in order")  # fmt: skip
    parser.add_argument("--step-seconds", type=float, default=20.0, help="length of each sustained step")
    parser.add_argument("--sustained", type=float, default=None, help="skip the search: use this rate")
    parser.add_argument("--overload-seconds", type=float, default=30.0)
    parser.add_argument("--soak-minutes", type=float, default=10.0)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    figures = asyncio.run(main_async(args))
    text = json.dumps(figures, indent=2, default=str)
    print(text)
    if args.json is not None:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
