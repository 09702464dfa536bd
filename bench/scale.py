"""`python -m bench.scale`: two shard processes against one, on the same load, in the same run.

Both configurations use one PostgreSQL server (a throwaway cluster, as the tests start it) and the same fakes:
two guilds, one on each shard of 2, and the interactions alternate between them. "One process" runs both
shards; "two processes" run one each. The offered load is above what one process takes, so the load guard
sheds part of it: the figure is how many jobs each configuration accepted and delivered per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bench.load import SCRIPT, Run, _measure, describe, progress
from bench.rig import Rig, add_users, bots, fakes
from tests.fakes.images import make_png
from tests.postgres import start_cluster


@asynccontextmanager
async def sharded(processes: int, jobs: int, database: str) -> AsyncIterator[Rig]:
    """Fakes with a guild on each of 2 shards, and `processes` bot processes sharing the two shards."""
    async with fakes(SCRIPT, jobs=jobs, jitter=1.0) as (discord, fal):
        other = discord.add_guild("Shard zero", shard=0, shard_count=2)  # the main guild is on shard 1
        envs = [{"SHARD_COUNT": "2"}] if processes == 1 else [{"SHARD_COUNT": "2", "SHARD_IDS": str(i)} for i in (0, 1)]
        async with bots(discord, fal, envs, database=database) as started:
            users = add_users(discord, jobs, guild_ids=[discord.guild_id, other.id])
            image = discord.add_attachment("in.png", make_png(32, 32))
            yield Rig(discord, fal, started, users, [other.text_channel_id, discord.channel_id], image)


async def throughput(processes: int, rate: float, seconds: float, database: str) -> Run:
    async with sharded(processes, round(rate * seconds), database) as rig:
        await asyncio.sleep(1.0)
        return await _measure(rig, Run(f"p{processes}", rate, seconds))


def accepted_per_second(run: Run) -> float:
    return run.paid / run.seconds


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    cluster = await asyncio.to_thread(start_cluster)
    try:
        runs = {}
        for processes in (1, 2):
            progress(f"{processes} process(es): {args.rate:g}/s for {args.seconds:g} s")
            runs[processes] = await throughput(processes, args.rate, args.seconds, await cluster.new_database())
    finally:
        await asyncio.to_thread(cluster.stop)
    one, two = runs[1], runs[2]
    return {
        "offered_per_s": args.rate,
        "one_process": {**describe(one), "accepted_per_s": round(accepted_per_second(one), 1)},
        "two_processes": {**describe(two), "accepted_per_s": round(accepted_per_second(two), 1)},
        "ratio_two_to_one": round(accepted_per_second(two) / accepted_per_second(one), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="/kontext per second offered to both setups")
    parser.add_argument("--seconds", type=float, default=20.0)
    figures = asyncio.run(main_async(parser.parse_args(argv)))
    print(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
