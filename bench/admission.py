"""`python -m bench.admission`: what one admission costs as a server's history grows.

An admission counts the user's running jobs, the user's, the member's and the server's images today and the
server's spend this month, then decides and inserts, in one transaction. This fills one server with `--history`
jobs spread over the month so far (a busy server), then times admissions of new jobs by its members, on SQLite
and on PostgreSQL (a throwaway cluster, as the tests start it). It prints the median and p95 per admission for
each history size, and the ratio of the largest to the smallest: flat means the cost does not grow with history.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from bot.fal import EditRequest
from bot.jobs import Job, JobState
from bot.quota import Limits, UsageSnapshot, decide
from bot.store import PostgresJobStore, SqliteJobStore, Store
from tests.postgres import start_cluster

GUILD = 1_000
MEMBERS = 500
LIMITS = Limits(max_concurrent=1_000, daily_user_images=10**6, daily_guild_images=10**9, cooldown=timedelta(0),
                daily_member_images=10**6, monthly_budget_usd=Decimal(10**9))  # fmt: skip


def job(user_id: int, created_at: datetime, state: JobState) -> Job:
    request = EditRequest(prompt="p", image_urls=("https://x/a.png",), num_images=1)
    return Job(request=request, user_id=user_id, channel_id=5, guild_id=GUILD, source="slash", state=state,
               created_at=created_at, cost_usd=Decimal("0.08"))  # fmt: skip


def history(count: int, now: datetime) -> list[Job]:
    """`count` finished jobs by the server's members, spread evenly from the start of the month to `now`."""
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    step = (now - start) / max(count, 1)
    return [job(i % MEMBERS, start + step * i, JobState.DELIVERED) for i in range(count)]


def deciding(new: Job, now: datetime) -> Callable[[UsageSnapshot], object]:
    return lambda usage: decide(usage, LIMITS, new.num_images, now, in_guild=True, cost=new.cost_usd)


async def admission_ms(store: Store, admissions: int, now: datetime) -> list[float]:
    times = []
    for i in range(admissions):
        new = job(MEMBERS + i, now, JobState.PENDING)
        started = time.perf_counter()
        denial = await store.admit(new, deciding(new, now))  # type: ignore[arg-type]
        times.append((time.perf_counter() - started) * 1000)
        if denial is not None:
            raise RuntimeError(f"admission refused: {denial}")
    return times


@asynccontextmanager
async def stores(kind: str, cluster_url: Callable[[], object] | None) -> AsyncIterator[Store]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            async with SqliteJobStore(Path(tmp) / "bench.sqlite3") as store:
                yield store
    else:
        assert cluster_url is not None
        async with PostgresJobStore(await cluster_url()) as store:  # type: ignore[misc]
            yield store


async def measure(kind: str, sizes: list[int], admissions: int, cluster_url: Callable[[], object] | None
                  ) -> dict[str, object]:  # fmt: skip
    now = datetime.now(UTC).replace(day=28)  # late in the month: the budget counts four weeks of jobs
    figures: dict[str, object] = {}
    for size in sizes:
        async with stores(kind, cluster_url) as store:
            jobs = history(size, now)
            for chunk in range(0, len(jobs), 1_000):
                await store.save_many(jobs[chunk : chunk + 1_000])
            await admission_ms(store, 20, now)  # warm up
            times = sorted(await admission_ms(store, admissions, now))
        figures[f"{size} jobs this month"] = {
            "median_ms": round(statistics.median(times), 3), "p95_ms": round(times[int(len(times) * 0.95)], 3),
        }  # fmt: skip
        print(f"{kind}: {size} jobs: {figures[f'{size} jobs this month']}", file=sys.stderr)
    first, last = (figures[f"{size} jobs this month"] for size in (sizes[0], sizes[-1]))
    figures["median_ratio_largest_to_smallest"] = round(last["median_ms"] / first["median_ms"], 2)  # type: ignore[index]
    return figures


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    results: dict[str, object] = {"sqlite": await measure("sqlite", args.history, args.admissions, None)}
    if not args.sqlite_only:
        cluster = await asyncio.to_thread(start_cluster)
        try:
            results["postgresql"] = await measure("postgres", args.history, args.admissions, cluster.new_database)
        finally:
            await asyncio.to_thread(cluster.stop)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.admission", description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=lambda s: [int(x) for x in s.split(",")], default=[0, 10_000, 50_000],
                        help="jobs the server made this month, one run per size")  # fmt: skip
    parser.add_argument("--admissions", type=int, default=300, help="admissions timed per run")
    parser.add_argument("--sqlite-only", action="store_true")
    print(json.dumps(asyncio.run(main_async(parser.parse_args(argv))), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
