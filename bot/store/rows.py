"""A job as the column values both stores write, and back; the SQL both stores share."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from bot.community import GuildUsage, SettingChange, Spender
from bot.fal import EditRequest, KontextOutput
from bot.jobs.model import ACTIVE_STATES, BILLABLE_STATES, Job, JobState, ReplyToken

__all__ = (
    "ACTIVE", "BILLABLE", "COLUMNS", "change_from", "change_values", "dollars", "guild_usage_of", "job_from",
    "job_values",
)  # fmt: skip
MICRO = Decimal("0.000001")

COLUMNS = (
    "id", "state", "source", "user_id", "guild_id", "channel_id", "endpoint", "request_json", "num_images",
    "request_id", "queue_position", "origin_message_id", "status_message_id", "thread_id", "result_json",
    "result_message_ids", "delivery_attempts", "error", "cost_usd", "cancel_requested", "locale", "created_at",
    "updated_at", "reply_token", "reply_ephemeral",
)  # fmt: skip


def _states(states: frozenset[JobState]) -> str:
    return ", ".join(f"'{state.value}'" for state in sorted(states))


# SQL lists of states (constants, never user input).
ACTIVE = _states(ACTIVE_STATES)
BILLABLE = _states(BILLABLE_STATES)


def job_values(job: Job) -> tuple[Any, ...]:
    """The job's column values in `COLUMNS` order, as Python values; each store adapts the types it lacks."""
    return (
        job.id, job.state.value, job.source, job.user_id, job.guild_id, job.channel_id, job.endpoint,
        job.request.model_dump_json(), job.request.num_images, job.request_id, job.queue_position,
        job.origin_message_id, job.status_message_id, job.thread_id,
        job.result.model_dump_json() if job.result else None, list(job.result_message_ids),
        job.delivery_attempts, job.error, job.cost_usd, job.cancel_requested, job.locale,
        job.created_at, job.updated_at,
        job.reply.token if job.reply and not job.state.finished else None,  # an ended job needs it no more
        bool(job.reply and job.reply.ephemeral),
    )  # fmt: skip


def job_from(row: Mapping[str, Any]) -> Job:
    """A job from its columns (timestamps already aware datetimes, message ids a sequence)."""
    return Job(
        id=row["id"],
        state=JobState(row["state"]),
        source=row["source"],
        user_id=row["user_id"],
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        endpoint=row["endpoint"],
        request=EditRequest.from_json(row["request_json"]),  # also Kontext's own body, in rows from before
        request_id=row["request_id"],
        queue_position=row["queue_position"],
        origin_message_id=row["origin_message_id"],
        status_message_id=row["status_message_id"],
        thread_id=row["thread_id"],
        result=KontextOutput.model_validate_json(row["result_json"]) if row["result_json"] else None,
        result_message_ids=tuple(row["result_message_ids"]),
        delivery_attempts=row["delivery_attempts"],
        error=row["error"],
        cost_usd=Decimal(row["cost_usd"]),
        cancel_requested=bool(row["cancel_requested"]),
        locale=row["locale"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        reply=ReplyToken(row["reply_token"], bool(row["reply_ephemeral"])) if row["reply_token"] else None,
    )


def dollars(value: Any) -> Decimal:
    """A sum of estimated costs as an exact amount: PostgreSQL sums `numeric` exactly; SQLite sums the stored text
    as floating point, whose error on a sum of prices of at most three decimals is far below a millionth."""
    if value is None:
        return Decimal(0)
    amount = value if isinstance(value, Decimal) else Decimal(f"{float(value):.6f}")
    return amount.quantize(MICRO)


def guild_usage_of(spenders: Sequence[Spender], top: int) -> GuildUsage:
    """A server's usage from its users' sums (biggest spenders first)."""
    images = sum(spender.images for spender in spenders)
    spend = sum((spender.spend for spender in spenders), Decimal(0))
    return GuildUsage(images, spend, tuple(spenders[:top]))


def change_values(change: SettingChange) -> tuple[Any, ...]:
    """guild_id, user_id, setting, old_json, new_json, changed_at."""
    old, new = json.dumps(change.old), json.dumps(change.new)
    return (change.guild_id, change.user_id, change.setting, old, new, change.changed_at)


def change_from(row: Mapping[str, Any]) -> SettingChange:
    return SettingChange(
        guild_id=row["guild_id"], user_id=row["user_id"], setting=row["setting"], old=json.loads(row["old_json"]),
        new=json.loads(row["new_json"]), changed_at=row["changed_at"],
    )  # fmt: skip
