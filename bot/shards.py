"""Which gateway shards a process runs, and which shard a guild belongs to (Discord's rule).

A guild's events (and its interactions) reach the shard `(guild_id >> 22) % shard_count`; events without
a guild, such as DMs, reach shard 0. A job belongs to the shard of its guild, so the process that runs
that shard is the one that resumes it after a restart.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ("ShardSet", "parse_shard_ids", "shard_of")


def shard_of(guild_id: int | None, shard_count: int) -> int:
    """The shard that receives a guild's events; DMs (no guild) belong to shard 0."""
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


@dataclass(frozen=True, slots=True)
class ShardSet:
    """Some of the `count` shards: the ones one process runs."""

    ids: frozenset[int]
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not self.ids or not all(0 <= i < self.count for i in self.ids):
            raise ValueError(f"shard ids must be between 0 and {self.count - 1}")

    def owns(self, guild_id: int | None) -> bool:
        return shard_of(guild_id, self.count) in self.ids

    def __str__(self) -> str:
        return f"{','.join(map(str, sorted(self.ids)))} of {self.count}"


def parse_shard_ids(text: str) -> tuple[int, ...]:
    """`0,1`, `4-7`, `0,2-3` or `[0, 1]` → the ids, sorted; raises ValueError for anything else."""
    ids: set[int] = set()
    for part in text.strip().strip("[]").split(","):
        low, dash, high = part.strip().partition("-")
        if not low.strip().isdigit() or (dash and not high.strip().isdigit()):
            raise ValueError("must be shard ids like 0,1 or a range like 0-3")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError("a range must go up, like 0-3")
        ids.update(range(first, last + 1))
    return tuple(sorted(ids))
