"""Community settings: what a server's admins chose (`/kontext-admin`), a user's personal defaults
(`/kontext-settings`), and the values in force.

The operator's settings (the environment) are every server's defaults and hard ceilings: a server can only
tighten them, and what it chose is capped again when it is used, so an operator who lowers a ceiling later
lowers it everywhere at once. No Discord imports: the cogs show all of this.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from bot.config import NsfwPolicy, Settings
from bot.quota import Limits
from bot.shards import ShardSet

if TYPE_CHECKING:
    from bot.store.base import Store

__all__ = (
    "FAL_DEFAULT_SAFETY_TOLERANCE",
    "MAX_COOLDOWN_SECONDS",
    "Effective",
    "GuildSettings",
    "GuildSettingsCache",
    "GuildUsage",
    "NsfwPolicy",
    "SettingChange",
    "Spender",
    "UserSettings",
    "UserSettingsCache",
    "bounds",
    "effective",
)

# fal's own default for the models that take the option (Kontext, FLUX.2): a cap below it must be sent.
FAL_DEFAULT_SAFETY_TOLERANCE = 2
MAX_COOLDOWN_SECONDS = 86_400


class GuildSettings(BaseModel):
    """What a server's admins set; None (or an empty list) keeps the operator's value. Stored as JSON: a field
    a newer bot added is ignored by an older one."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    channel_ids: tuple[int, ...] = ()  # where the bot works; () everywhere
    role_ids: tuple[int, ...] = ()  # who may use it: members with one of these roles; () everyone
    daily_guild_images: int | None = None
    daily_member_images: int | None = None  # per member, counted in this server
    cooldown_seconds: int | None = None
    max_safety_tolerance: int | None = None
    nsfw_policy: NsfwPolicy | None = None
    reaction_trigger: bool | None = None
    trigger_emoji: str | None = None
    monthly_budget_usd: Decimal | None = None
    model_ids: tuple[str, ...] = ()  # the models allowed; () all the operator enabled

    def value(self, name: str) -> Any:
        """One setting as a JSON value (what the change log records)."""
        return self.model_dump(mode="json")[name]

    def with_value(self, name: str, value: Any) -> GuildSettings:
        return self.model_validate({**self.model_dump(), name: value})


SETTING_NAMES: tuple[str, ...] = tuple(GuildSettings.model_fields)


class UserSettings(BaseModel):
    """A user's personal defaults, used where a command does not say otherwise (and the model takes them)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    aspect_ratio: str | None = None
    output_format: str | None = None
    num_images: int | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class SettingChange:
    """One change of one server setting: who, when, the old and the new value (JSON values, None: unset)."""

    guild_id: int
    user_id: int
    setting: str
    old: Any
    new: Any
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class Spender:
    user_id: int
    images: int
    spend: Decimal


@dataclass(frozen=True, slots=True)
class GuildUsage:
    """A server's billable jobs since a moment: images, estimated spend, and the users who spent most."""

    images: int
    spend: Decimal
    top: tuple[Spender, ...]


@dataclass(frozen=True, slots=True)
class Effective:
    """The settings in force in one server; `own` names those the server set itself (the rest: the operator's)."""

    channel_ids: tuple[int, ...]
    role_ids: tuple[int, ...]
    daily_guild_images: int
    daily_member_images: int | None
    cooldown_seconds: float
    max_safety_tolerance: int
    nsfw_policy: NsfwPolicy
    reaction_trigger: bool
    trigger_emoji: str
    monthly_budget_usd: Decimal | None
    model_ids: tuple[str, ...]
    own: frozenset[str]

    def limits(self, operator: Limits) -> Limits:
        return Limits(
            max_concurrent=operator.max_concurrent,
            daily_user_images=operator.daily_user_images,
            daily_guild_images=self.daily_guild_images,
            cooldown=timedelta(seconds=self.cooldown_seconds),
            daily_member_images=self.daily_member_images,
            monthly_budget_usd=self.monthly_budget_usd,
        )


def effective(settings: Settings, guild: GuildSettings) -> Effective:
    """The operator's values, tightened by the server's (and the server's capped by the operator's)."""
    models = tuple(m for m in settings.enabled_models if m in guild.model_ids) or settings.enabled_models
    return Effective(
        channel_ids=guild.channel_ids,
        role_ids=guild.role_ids,
        daily_guild_images=_lowest(settings.daily_images_per_guild, guild.daily_guild_images),
        daily_member_images=_capped(guild.daily_member_images, settings.daily_images_per_user),
        cooldown_seconds=max(settings.cooldown_seconds, guild.cooldown_seconds or 0),
        max_safety_tolerance=_lowest(settings.max_safety_tolerance, guild.max_safety_tolerance),
        nsfw_policy=max(settings.nsfw_policy, guild.nsfw_policy or settings.nsfw_policy, key=_strictness),
        reaction_trigger=guild.reaction_trigger is not False,
        trigger_emoji=guild.trigger_emoji or settings.trigger_emoji,
        monthly_budget_usd=_budget(settings.monthly_budget_per_guild_usd, guild.monthly_budget_usd),
        model_ids=models,
        own=frozenset(name for name, value in guild.model_dump().items() if value not in (None, ())),
    )


def bounds(settings: Settings, name: str) -> tuple[Decimal, Decimal | None]:
    """The values a server may choose for a number setting: from the low to the high end (None: no ceiling)."""
    ceilings: dict[str, tuple[Decimal, Decimal | None]] = {
        "daily_guild_images": (Decimal(0), Decimal(settings.daily_images_per_guild)),
        "daily_member_images": (Decimal(0), Decimal(settings.daily_images_per_user)),
        "cooldown_seconds": (_up(settings.cooldown_seconds), Decimal(MAX_COOLDOWN_SECONDS)),
        "max_safety_tolerance": (Decimal(1), Decimal(settings.max_safety_tolerance)),
        "monthly_budget_usd": (Decimal(0), settings.monthly_budget_per_guild_usd),
    }
    return ceilings[name]


def _strictness(policy: NsfwPolicy) -> int:
    return policy.strictness


def _lowest(operator: int, server: int | None) -> int:
    return operator if server is None else min(operator, server)


def _capped(server: int | None, ceiling: int) -> int | None:
    return None if server is None else min(server, ceiling)


def _budget(operator: Decimal | None, server: Decimal | None) -> Decimal | None:
    chosen = [value for value in (operator, server) if value is not None]
    return min(chosen) if chosen else None


def _up(seconds: float) -> Decimal:
    return Decimal(int(seconds) + (0 if seconds == int(seconds) else 1))


class GuildSettingsCache:
    """Every server's settings that this process needs, in memory, so they can be read before an interaction
    is answered. Loaded at start for the shards this process runs, and changed only by `/kontext-admin` in this
    same process: Discord sends all of a server's events and interactions to its one shard, and each shard runs
    in exactly one process, so no other process ever changes (or reads) the settings of this process's servers.
    Resharding changes SHARD_COUNT, which means restarting every process, and each one loads anew."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._guilds: dict[int, GuildSettings] = {}
        self._effective: dict[int, Effective] = {}
        self._operator = effective(settings, _UNSET)

    def get(self, guild_id: int | None) -> GuildSettings:
        return self._guilds.get(guild_id, _UNSET) if guild_id is not None else _UNSET

    def effective(self, guild_id: int | None) -> Effective:
        """The settings in force in the server (the operator's alone in DMs and unconfigured servers)."""
        if guild_id is None or guild_id not in self._guilds:
            return self._operator
        found = self._effective.get(guild_id)
        if found is None:
            found = self._effective[guild_id] = effective(self._settings, self._guilds[guild_id])
        return found

    def put(self, guild_id: int, settings: GuildSettings) -> None:
        self._guilds[guild_id] = settings
        self._effective.pop(guild_id, None)

    async def load(self, store: Store, shards: ShardSet | None) -> int:
        """Read the settings of every server on `shards` (all: None); returns how many servers have some."""
        stored = await store.all_guild_settings()
        self._guilds = {gid: s for gid, s in stored.items() if shards is None or shards.owns(gid)}
        self._effective.clear()
        return len(self._guilds)


_UNSET = GuildSettings()


class UserSettingsCache:
    """Every user's personal defaults (of the users who set any), in memory, so a launch can use them before its
    interaction is answered. A user's interactions reach the processes of all their servers, and any of them may
    change the defaults: each process reads what changed since its last look every `REFRESH_SECONDS` (and again
    what changed in the `OVERLAP` before, for a transaction that committed late or a clock a little behind), so a
    change made in another process shows here within seconds; one made here shows at once."""

    REFRESH_SECONDS = 5.0
    OVERLAP = timedelta(minutes=1)

    def __init__(self) -> None:
        self._users: dict[int, UserSettings] = {}
        self._looked: datetime | None = None

    def get(self, user_id: int) -> UserSettings:
        return self._users.get(user_id, _NO_DEFAULTS)

    def put(self, user_id: int, settings: UserSettings) -> None:
        self._users[user_id] = settings

    async def refresh(self, store: Store, now: datetime) -> int:
        """Read the defaults changed since the last look (all of them the first time); returns how many."""
        since = None if self._looked is None else self._looked - self.OVERLAP
        changed = await store.user_settings_since(since)
        self._users.update(changed)
        self._looked = now
        return len(changed)


_NO_DEFAULTS = UserSettings()
