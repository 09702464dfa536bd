"""The rules behind the community settings, without Discord: the values in force (the operator's tightened by the
server's, the server's capped by the operator's), the bounds a server may choose from, and the decision on a
server's per-member limit and monthly budget."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from bot.community import GuildSettings, GuildSettingsCache, bounds, effective
from bot.config import NsfwPolicy, Settings
from bot.quota import DenialKind, Limits, UsageSnapshot, decide, next_month
from bot.shards import ShardSet
from bot.store import SqliteJobStore
from tests.conftest import SettingsFactory

NOW = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)


def operator(make_settings: SettingsFactory) -> Settings:
    return make_settings(daily_images_per_guild=100, daily_images_per_user=10, cooldown_seconds=5.0,
                         max_safety_tolerance=4, monthly_budget_per_guild_usd="50")  # fmt: skip


def test_a_server_tightens_and_is_capped_by_the_operator(make_settings: SettingsFactory):
    settings = operator(make_settings)
    # As if the operator lowered the ceilings after the server chose: every value is capped again when used.
    chosen = GuildSettings(daily_guild_images=500, daily_member_images=20, cooldown_seconds=2, max_safety_tolerance=6,
                           monthly_budget_usd=Decimal(80), nsfw_policy=NsfwPolicy.ALLOW,
                           model_ids=("seedream-v4-edit", "not-a-model"))  # fmt: skip

    rules = effective(settings, chosen)

    assert (rules.daily_guild_images, rules.daily_member_images, rules.cooldown_seconds) == (100, 10, 5.0)
    assert (rules.max_safety_tolerance, rules.monthly_budget_usd, rules.nsfw_policy) == (
        4,
        Decimal(50),
        NsfwPolicy.SPOILER,
    )
    assert rules.model_ids == ("seedream-v4-edit",)
    assert "daily_member_images" in rules.own and "channel_ids" not in rules.own


def test_without_settings_the_operators_values_are_in_force(make_settings: SettingsFactory):
    rules = effective(operator(make_settings), GuildSettings())

    assert rules.daily_member_images is None and rules.reaction_trigger and rules.trigger_emoji == "🎨"
    assert rules.limits(Limits(2, 10, 100, timedelta(seconds=5))) == Limits(
        2, 10, 100, timedelta(seconds=5), daily_member_images=None, monthly_budget_usd=Decimal(50)
    )
    assert rules.own == frozenset()


def test_the_bounds_a_server_chooses_from(make_settings: SettingsFactory):
    settings = operator(make_settings)

    assert bounds(settings, "daily_member_images") == (Decimal(0), Decimal(10))
    assert bounds(settings, "cooldown_seconds") == (Decimal(5), Decimal(86_400))
    assert bounds(make_settings(cooldown_seconds=2.5), "cooldown_seconds")[0] == 3  # whole seconds, never below
    assert bounds(make_settings(), "monthly_budget_usd") == (Decimal(0), None)


def test_the_member_limit_and_the_budget_are_the_servers_own():
    limits = Limits(5, 20, 200, timedelta(0), daily_member_images=3, monthly_budget_usd=Decimal("1.00"))

    def verdict(cost: str, **usage: object):
        snapshot = UsageSnapshot(**{"active_jobs": 0, "user_images": 0, "guild_images": 0, "last_created": None,
                                    **usage})  # type: ignore[arg-type]  # fmt: skip
        return decide(snapshot, limits, 1, NOW, in_guild=True, cost=Decimal(cost))

    member = verdict("0.08", member_images=3)
    spent = verdict("0.08", guild_spend=Decimal("0.96"))
    assert member is not None and (member.kind, member.limit, member.used) == (DenialKind.MEMBER_DAILY, 3, 3)
    assert spent is not None and spent.kind is DenialKind.BUDGET and spent.retry_at == next_month(NOW)
    assert (spent.limit, spent.used, spent.cost) == (Decimal("1.00"), Decimal("0.96"), Decimal("0.08"))
    assert verdict("0.04", guild_spend=Decimal("0.96")) is None  # exactly reaching the budget is allowed
    assert next_month(NOW) == datetime(2027, 1, 1, tzinfo=UTC)
    assert decide(UsageSnapshot(0, 0, 0, None, 3, Decimal(5)), limits, 1, NOW, in_guild=False) is None  # DMs


async def test_each_process_loads_the_settings_of_its_own_servers_only(make_settings: SettingsFactory, tmp_path: Path):
    on_shard = {shard: ((1_000 + shard) << 22) for shard in (0, 1)}  # (id >> 22) % 2 == shard
    async with SqliteJobStore(tmp_path / "s.sqlite3") as store:
        for shard, guild_id in on_shard.items():
            await store.save_guild_settings(guild_id, GuildSettings(daily_guild_images=shard + 1), [], NOW)
        cache = GuildSettingsCache(make_settings())

        assert await cache.load(store, ShardSet(frozenset({1}), 2)) == 1

    assert cache.get(on_shard[1]).daily_guild_images == 2
    assert cache.get(on_shard[0]) == GuildSettings() and cache.effective(on_shard[0]).daily_guild_images == 200
