"""`python -m bench.run [--jobs N] [--quick] [--json PATH]`: benchmark the real bot against the fakes.

Runs, in one process on 127.0.0.1: a load run (N concurrent /kontext), a bot run with the SSE status
stream and one with polling (requests per job, status latency, completion → files), fal's official
client against the same fake, and a cold start with discord.py's default guild_ready_timeout. Prints
one table per section and a summary; see bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.metrics import LogCounter, listen_overflows
from bench.report import Table
from bench.scenarios import OfficialResult, PhaseResult, PhaseSpec, measure_start, run_official, run_phase
from bench.sections import (
    Figures,
    delivery_section,
    load_section,
    log_table,
    requests_section,
    startup_section,
    status_section,
    summary_section,
)
from bench.world import Startup
from tests.fakes.fake_fal import JobScript

QUEUE_POSITIONS = (3, 2, 1, 0)
PROGRESS_STEPS = 2
OFFICIAL_INTERVALS = [0.1, 1.0]  # fal_client's default, and our production poll interval


@dataclass(frozen=True)
class Options:
    jobs: int
    latency_jobs: int
    official_jobs: int
    step: float
    jitter: float
    load_step: float
    dispatch_rate: float
    fal_connections: int | None
    edit_rate: tuple[int, float]
    json_path: Path | None
    strict: bool
    quick: bool


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=None, help="jobs in the load run (default 1000; 100 with --quick)")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (~1 min)")
    parser.add_argument("--latency-jobs", type=int, default=None, help="jobs per bot mode for sections 1-3 (50)")
    parser.add_argument("--step", type=float, default=2.1, help="mean s between fal state changes, sections 1-3")
    parser.add_argument("--load-step", type=float, default=2.0, help="mean s between fal state changes, load run")
    parser.add_argument("--jitter", type=float, default=1.0, help="each job's step is mean ± jitter/2 (uniform)")
    parser.add_argument("--dispatch-rate", type=float, default=100.0, help="/kontext per second in the load run")
    parser.add_argument(
        "--fal-connections", type=int, default=None,
        help="fal connection pool of the bot's session (default: production's, MAX_STATUS_STREAMS + 100; 0 = no limit)",
    )  # fmt: skip
    parser.add_argument("--discord-rate", default="5,5.0", help="FakeDiscord edits per window: LIMIT,SECONDS")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON to this file")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a summary check fails")
    args = parser.parse_args(argv)
    limit, per = args.discord_rate.split(",")
    return Options(
        jobs=args.jobs or (100 if args.quick else 1000),
        latency_jobs=args.latency_jobs or (5 if args.quick else 50),
        official_jobs=3 if args.quick else 20,
        step=args.step,
        jitter=args.jitter,
        load_step=args.load_step,
        dispatch_rate=args.dispatch_rate,
        fal_connections=args.fal_connections,
        edit_rate=(int(limit), float(per)),
        json_path=args.json,
        strict=args.strict,
        quick=args.quick,
    )


def install_logging() -> LogCounter:
    """WARNING and up are counted (and listed at the end), not printed as they happen."""
    counter = LogCounter()
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    root.addHandler(counter)
    return counter


def script(step: float) -> JobScript:
    return JobScript(queue_positions=QUEUE_POSITIONS, progress_steps=PROGRESS_STEPS, step_seconds=step)


def phase(name: str, opts: Options, **changes: Any) -> PhaseSpec:
    values: dict[str, Any] = {
        "name": name,
        "jobs": opts.latency_jobs,
        "script": script(opts.step),
        "dispatch_rate": opts.latency_jobs / opts.step,  # spread the starts over one step
        "jitter": opts.jitter,
        "edit_rate": opts.edit_rate,
        "fal_connections": opts.fal_connections,
    }
    values.update(changes)
    return PhaseSpec(**values)


@dataclass
class Runs:
    load: PhaseResult
    overflows: int
    sse: PhaseResult
    poll: PhaseResult
    official: OfficialResult
    default_start: Startup


async def run_all(opts: Options) -> Runs:
    progress(f"load run: {opts.jobs} jobs at {opts.dispatch_rate:g}/s")
    before = listen_overflows()
    load = await run_phase(phase("load", opts, jobs=opts.jobs, script=script(opts.load_step),
                                 dispatch_rate=opts.dispatch_rate, sample=True))  # fmt: skip
    overflows = listen_overflows() - before
    progress(f"bot with the SSE status stream: {opts.latency_jobs} jobs")
    sse = await run_phase(phase("sse", opts))
    progress(f"bot polling every 1.0 s: {opts.latency_jobs} jobs")
    poll = await run_phase(phase("poll", opts, use_stream=False))
    progress(f"fal_client.subscribe: {opts.official_jobs} jobs each at intervals {OFFICIAL_INTERVALS}")
    official = await run_official(
        OFFICIAL_INTERVALS, opts.official_jobs, script(opts.step), stagger=opts.step, jitter=opts.jitter
    )
    progress("cold start with discord.py's default guild_ready_timeout (2 s)")
    default_start = await measure_start(2.0)
    return Runs(load, overflows, sse, poll, official, default_start)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message} ...", file=sys.stderr, flush=True)


def build_report(runs: Runs, log: LogCounter) -> tuple[list[Table], Figures]:
    tables: list[Table] = []
    figures: Figures = {}
    starts = [("sse run", runs.sse.startup), ("poll run", runs.poll.startup), ("load run", runs.load.startup)]
    starts.append(("default", runs.default_start))
    for key, (table, data) in {
        "requests": requests_section(runs.sse, runs.poll, runs.official),
        "status": status_section([runs.sse, runs.poll]),
        "completion_to_files": delivery_section([runs.sse, runs.poll]),
        "startup": startup_section(starts),
        "load": load_section(runs.load, log, runs.overflows),
    }.items():
        tables.append(table)
        figures[key] = data
    figures["logs"] = {"counts": dict(log.counts), "errors": log.errors}
    tables += [log_table(log), summary_section(figures, log)]
    return tables, figures


def header(opts: Options) -> str:
    versions = ", ".join(f"{name} {version(name)}" for name in ("discord.py", "aiohttp", "fal-client", "httpx"))
    return "\n".join([
        "kontext-bot benchmark: the real KontextBot against FakeDiscord + FakeFal on 127.0.0.1, all in one process",
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; Python {platform.python_version()}; {versions}; "
        f"{len(os.sched_getaffinity(0))} CPU(s)",
        f"mode: {'quick' if opts.quick else 'full'}; command: python -m bench.run {' '.join(sys.argv[1:])}".rstrip(),
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    log = install_logging()
    started = time.perf_counter()
    runs = asyncio.run(run_all(opts))
    tables, figures = build_report(runs, log)
    figures["elapsed_seconds"] = time.perf_counter() - started
    print(header(opts))
    for table in tables:
        print()
        print(table.render())
    print(f"\nwhole run: {figures['elapsed_seconds']:.0f} s")
    if opts.json_path is not None:
        opts.json_path.write_text(json.dumps(figures, indent=2, default=str))
        print(f"figures written to {opts.json_path}")
    failed = any(row[-1] == "NO" for row in tables[-1].rows)
    return 1 if opts.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
