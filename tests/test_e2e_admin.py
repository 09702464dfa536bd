"""/kontext-admin end to end: each server setting with its visible effect, the operator's ceilings, the change
log, and who may change them (the real bot against the fake Discord and the fake fal, on SQLite and PostgreSQL
where the store matters)."""

from __future__ import annotations

import discord
import pytest

from bot.community import GuildSettings
from tests.community import CHANNEL, ROLE, admin, command, delivered, refused_job, result_messages, submits
from tests.conftest import StartBot
from tests.fakes.discord_wire import EVERYONE_PERMS
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_fal import JobScript, Outcome
from tests.harness import Harness, custom_ids, gallery_items, message_text
from tests.postgres import Cluster


@pytest.fixture(params=["sqlite", "postgres"])
async def store_settings(request: pytest.FixtureRequest) -> dict[str, str]:
    """Bot settings for either store."""
    if request.param == "sqlite":
        return {}
    cluster: Cluster = request.getfixturevalue("postgres_cluster")
    return {"database_url": await cluster.new_database()}


def uploads(harness: Harness) -> list[list[str]]:
    return [[f.filename for f in r.files] for r in harness.discord.requests if r.files and r.method == "POST"]


async def test_a_channel_not_allowed_is_refused_with_no_fal_call_even_after_a_restart(
    start_bot: StartBot, fake_discord: FakeDiscord, store_settings: dict[str, str]
):
    async with start_bot(**store_settings) as harness:
        saved = await admin(harness, "channels", action="add", channel=(CHANNEL, fake_discord.channel_id))
        assert "Saved" in saved and f"<#{fake_discord.channel_id}>" in saved
    async with start_bot(**store_settings) as harness:  # the settings are read back at start
        refusal = await refused_job(harness, channel_id=fake_discord.nsfw_channel_id)

        assert "I don't work in this channel" in refusal and f"<#{fake_discord.channel_id}>" in refusal
        assert "Manage Server" in refusal
        assert harness.fal.requests == []
        await delivered(harness)  # the channel on the list works
        assert len(submits(harness)) == 1


async def test_a_server_daily_limit_below_the_operators_is_enforced(
    start_bot: StartBot, store_settings: dict[str, str]
):
    async with start_bot(daily_images_per_guild=200, **store_settings) as harness:
        await admin(harness, "limits", daily_server=2)
        await delivered(harness, num_images=2)

        refusal = await refused_job(harness)

        assert "This server has used 2 of 2 images today" in refusal
        assert len(submits(harness)) == 1


async def test_a_server_cannot_raise_a_limit_above_the_operators(start_bot: StartBot):
    async with start_bot(daily_images_per_guild=50, daily_images_per_user=5) as harness:
        above = await admin(harness, "limits", daily_server=500)
        member = await admin(harness, "limits", daily_member=6)
        shown = await admin(harness, "show")

        assert "can be at most 50 here: that is the bot operator's limit" in above
        assert "can be at most 5 here" in member
        assert await harness.store.all_guild_settings() == {}
        assert "**Images per day for the whole server**: 50 · the operator's default" in shown


async def test_a_member_limit_counts_this_server_only(start_bot: StartBot):
    async with start_bot() as harness:
        await admin(harness, "limits", daily_member=1)
        await delivered(harness)

        refusal = await refused_job(harness)

        assert "You have used 1 of the 1 images this server allows each member per day" in refusal
        assert len(submits(harness)) == 1


async def test_a_spent_budget_refuses_jobs_with_the_reason(start_bot: StartBot, store_settings: dict[str, str]):
    async with start_bot(**store_settings) as harness:
        await admin(harness, "budget", usd=0.1)
        await delivered(harness)  # est. $0.08

        refusal = await refused_job(harness)

        assert "monthly budget of $0.10 is used up: $0.08 spent this month" in refusal
        assert "this job would cost about $0.08" in refusal and "Manage Server" in refusal
        assert len(submits(harness)) == 1


async def test_a_budget_above_the_operators_is_refused(start_bot: StartBot):
    async with start_bot(monthly_budget_per_guild_usd="20") as harness:
        refusal = await admin(harness, "budget", usd=25.0)

        assert "**Monthly budget** can be at most $20.00 here" in refusal


async def test_flagged_results_are_withheld_in_an_nsfw_channel_when_the_server_says_so(
    start_bot: StartBot, fake_discord: FakeDiscord
):
    async with start_bot() as harness:
        await admin(harness, "nsfw", policy="withhold")
        harness.fal.add_script(JobScript(outcome=Outcome(nsfw=(True, False))))

        await delivered(harness, num_images=2, channel_id=fake_discord.nsfw_channel_id)

        [files] = uploads(harness)
        [message] = result_messages(harness)
        text = message_text(message)
        assert len(files) == 1 and [item["spoiler"] for item in gallery_items(message)] == [False]
        assert "1 image withheld" in text and "withhold flagged images everywhere" in text


async def test_flagged_results_are_posted_plainly_where_the_operator_allows_it(
    start_bot: StartBot, fake_discord: FakeDiscord
):
    async with start_bot(nsfw_policy="allow") as harness:
        await admin(harness, "nsfw", policy="allow")
        harness.fal.add_script(JobScript(outcome=Outcome(nsfw=(True, False))))

        await delivered(harness, num_images=2, channel_id=fake_discord.nsfw_channel_id)

        [files] = uploads(harness)
        [message] = result_messages(harness)
        assert len(files) == 2 and [item["spoiler"] for item in gallery_items(message)] == [False, False]


async def test_a_server_cannot_loosen_the_operators_nsfw_policy(start_bot: StartBot):
    async with start_bot() as harness:  # the operator's default: spoilers in NSFW channels
        refusal = await admin(harness, "nsfw", policy="allow")

        assert "a server can only choose a stricter policy" in refusal
        assert await harness.store.all_guild_settings() == {}


async def test_only_members_with_one_of_the_servers_roles_may_use_the_bot(
    start_bot: StartBot, fake_discord: FakeDiscord
):
    async with start_bot() as harness:
        await admin(harness, "roles", action="add", role=(ROLE, fake_discord.mod_role_id))

        refusal = await refused_job(harness)  # the owner is not a Mod
        await delivered(harness, user_id=fake_discord.mod_user_id)

        assert f"one of these roles use me: <@&{fake_discord.mod_role_id}>" in refusal
        assert len(submits(harness)) == 1


async def test_the_highest_safety_tolerance_is_refused_above_and_sent_below_fals_default(start_bot: StartBot):
    async with start_bot() as harness:
        await admin(harness, "safety", max_tolerance=1)

        refusal = await refused_job(harness, safety_tolerance="3")
        await delivered(harness)

        assert "safety_tolerance can be at most 1 here" in refusal
        [sent] = submits(harness)
        assert sent["safety_tolerance"] == "1"


async def test_the_models_a_server_allows(start_bot: StartBot):
    async with start_bot() as harness:
        await admin(harness, "models", action="remove", model="kontext-max-multi")

        refusal = await refused_job(harness, model="kontext-max-multi")
        await delivered(harness)  # no model named: the server's first allowed one

        assert "This server allows only these models: FLUX.1 Kontext [pro] multi" in refusal
        assert [r.path for r in harness.fal.requests if r.kind == "submit"] == ["/fal-ai/flux-pro/kontext/multi"]


async def test_the_reaction_trigger_takes_the_servers_emoji_and_can_be_turned_off(
    start_bot: StartBot, fake_discord: FakeDiscord
):
    async with start_bot() as harness:
        await admin(harness, "reaction", emoji="🖌️")
        target = fake_discord.add_message(
            fake_discord.channel_id, content="make it night", attachments=[harness.image()]
        )

        await harness.event("MESSAGE_REACTION_ADD", fake_discord.reaction_add(target, "🎨"))
        assert harness.fal.requests == []
        await harness.event("MESSAGE_REACTION_ADD", fake_discord.reaction_add(target, "🖌"))  # without U+FE0F
        await fake_discord.wait_until(lambda: len(submits(harness)) == 1)
        await harness.bot.runner.wait_idle()

        await admin(harness, "reaction", enabled=False)
        await harness.event(
            "MESSAGE_REACTION_ADD", fake_discord.reaction_add(target, "🖌️", user_id=fake_discord.mod_user_id)
        )
        assert len(submits(harness)) == 1


async def test_every_change_is_logged_with_who_when_and_old_and_new(start_bot: StartBot, fake_discord: FakeDiscord):
    async with start_bot() as harness:
        await admin(harness, "limits", daily_member=5)
        await admin(harness, "limits", daily_member=3, cooldown_seconds=30)
        await admin(harness, "reset", setting="daily_member_images")

        log = await admin(harness, "changes")

        owner = f"<@{fake_discord.owner_id}>"
        lines = log.splitlines()[1:]
        assert [line.split("> ", 2)[-1] for line in lines] == [
            "**Images per day for each member**: 3 → (the operator's default)",
            "**Cooldown between a member's jobs**: (the operator's default) → 30 s",
            "**Images per day for each member**: 5 → 3",
            "**Images per day for each member**: (the operator's default) → 5",
        ]
        assert all(owner in line and "<t:" in line for line in lines)


async def test_show_lists_each_setting_in_force_and_where_it_comes_from(start_bot: StartBot):
    async with start_bot(cooldown_seconds=10) as harness:
        await admin(harness, "limits", cooldown_seconds=60)
        await admin(harness, "budget", usd=5.0)
        await delivered(harness)

        shown = await admin(harness, "show")

        assert (
            "**Cooldown between a member's jobs**: 60 s · set by this server · the operator requires at least 10 s"
            in shown
        )
        assert "**Monthly budget**: $5.00 · set by this server" in shown and "$0.08 spent this month" in shown
        assert "**Channels where I work**: every channel · the operator's default" in shown
        assert "**Last changes**" in shown and "→ $5.00" in shown


async def test_a_member_without_manage_server_cannot_change_settings_even_with_a_crafted_interaction(
    start_bot: StartBot, fake_discord: FakeDiscord
):
    """Discord hides the command from them by default, but a client can send it anyway (and a server's admins can
    show it to anyone): the bot checks the permissions Discord computed for the member, whatever the client."""
    async with start_bot() as harness:
        member, elsewhere = fake_discord.other_user_id, (CHANNEL, fake_discord.nsfw_channel_id)
        refusals = [await admin(harness, "limits", user_id=member, daily_server=1),
                    await admin(harness, "channels", user_id=member, action="add", channel=elsewhere),
                    await admin(harness, "show", user_id=member)]  # fmt: skip

        assert all("Only members with the **Manage Server** permission" in text for text in refusals)
        assert await harness.store.all_guild_settings() == {}
        assert await harness.store.setting_changes(fake_discord.guild_id) == []
        await delivered(harness, user_id=member, channel_id=fake_discord.nsfw_channel_id)  # nothing changed

        guild = fake_discord.world.guilds[fake_discord.guild_id]
        manage = EVERYONE_PERMS | discord.Permissions(manage_guild=True).value
        fake_discord.world.add_role(guild, 1_000_000_000_000_000_031, "Admins", manage, [member], position=1)
        assert "Saved" in await admin(harness, "limits", user_id=member, daily_server=1)
        assert (await harness.store.all_guild_settings())[fake_discord.guild_id] == GuildSettings(daily_guild_images=1)


async def test_usage_shows_server_managers_the_months_spend_and_top_users(
    start_bot: StartBot, fake_discord: FakeDiscord
):
    async with start_bot() as harness:
        await admin(harness, "budget", usd=10.0)
        await delivered(harness)
        await delivered(harness, num_images=2, user_id=fake_discord.other_user_id)

        manager = await command(harness, "kontext-usage", [])
        member = await command(harness, "kontext-usage", [], user_id=fake_discord.other_user_id)

        assert "This month: 3 images, ≈$0.24 of its $10.00 budget." in manager
        owner, other = fake_discord.owner_id, fake_discord.other_user_id
        assert f"Top users this month: <@{other}> ≈$0.16 (2), <@{owner}> ≈$0.08 (1)" in manager
        assert "This month" not in member and "Top users" not in member


async def test_the_admin_command_is_for_servers_and_shown_to_managers_by_default(harness: Harness):
    [synced] = [c for c in harness.discord.commands[None] if c["name"] == "kontext-admin"]

    assert int(synced["default_member_permissions"]) == discord.Permissions(manage_guild=True).value
    assert synced["contexts"] == [0]  # servers only
    assert {option["name"] for option in synced["options"]} >= {"show", "changes", "channels", "limits", "budget"}


async def test_a_thread_counts_as_its_channel_so_reroll_works_under_a_channel_list(
    start_bot: StartBot, fake_discord: FakeDiscord
):
    async with start_bot() as harness:
        await admin(harness, "channels", action="add", channel=(CHANNEL, fake_discord.channel_id))
        await delivered(harness)
        [message] = result_messages(harness)
        [reroll] = [custom_id for custom_id in custom_ids(message) if "reroll" in custom_id]

        press = fake_discord.button(reroll, message)  # from the result thread, whose parent is on the list
        await fake_discord.interact(press)

        assert "✅ Done" in await harness.final_status(press["token"])
        assert int(message["channel_id"]) != fake_discord.channel_id and len(submits(harness)) == 2
