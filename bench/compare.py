"""`python -m bench.compare --base <checkout>`: this bot against another checkout of it, under the same load run.

The runs alternate (base, ours, base, ours, ...) so that a change in the machine's load hits both alike; the
figures are medians over the rounds, and the ratios are base / ours. The other checkout needs its own venv
(`--base-python`, by default `<checkout>/.venv/bin/python`); `git worktree add ../kontext-base <commit>` and its
`sh scripts/test.sh --collect-only -q` make both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from pathlib import Path

from bench.load import describe, load, progress

FIGURES = ("bot_cpu_ms_per_job", "ack_p50_ms", "ack_p99_ms", "expired", "shed", "lost", "duplicated")


async def rounds(args: argparse.Namespace) -> dict[str, list[dict[str, object]]]:
    base_env = {"BENCH_BOT_ROOT": str(args.base), "BENCH_BOT_PYTHON": str(args.base_python)}
    runs: dict[str, list[dict[str, object]]] = {"base": [], "ours": []}
    for number in range(args.rounds):
        for name, env in (("base", base_env), ("ours", None)):
            progress(f"round {number + 1}/{args.rounds}: {name}, {args.rate:g}/s for {args.seconds:g} s")
            runs[name].append(describe(await load(name, args.rate, args.seconds, env=env)))
    return runs


def summary(runs: list[dict[str, object]]) -> dict[str, object]:
    figures: dict[str, object] = {name: statistics.median(float(run[name]) for run in runs) for name in FIGURES}  # type: ignore[arg-type]
    for kind in ("discord_requests_per_job", "fal_requests_per_job"):
        figures[kind] = statistics.median(float(run[kind]["total"]) for run in runs)  # type: ignore[index]
    figures["cpu_ms_per_job_each_round"] = [run["bot_cpu_ms_per_job"] for run in runs]
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the other checkout (its repository root)")
    parser.add_argument("--base-python", type=Path, default=None, help="its venv's python")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    args.base_python = args.base_python or args.base / ".venv" / "bin" / "python"
    runs = asyncio.run(rounds(args))
    base, ours = summary(runs["base"]), summary(runs["ours"])
    ratios = {
        name: round(float(base[name]) / float(ours[name]), 2)  # type: ignore[arg-type]
        for name in ("bot_cpu_ms_per_job", "ack_p99_ms", "discord_requests_per_job", "fal_requests_per_job")
        if float(ours[name])  # type: ignore[arg-type]
    }
    print(json.dumps({"base": base, "ours": ours, "base_over_ours": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
