"""The texts of /kontext-admin: each setting's name, its value as members see it, where it comes from, and the
operator's ceiling on it. Pure functions of the settings (and the current locale)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from bot.community import SETTING_NAMES, Effective, SettingChange
from bot.config import NsfwPolicy, Settings
from bot.i18n import N_, t
from cogs.render import money

__all__ = ("LABELS", "NSFW_LABELS", "change_lines", "label", "setting_names", "show_lines", "value_text")

LABELS = {
    "channel_ids": N_("Channels where I work"),
    "role_ids": N_("Roles that may use me"),
    "daily_guild_images": N_("Images per day for the whole server"),
    "daily_member_images": N_("Images per day for each member"),
    "cooldown_seconds": N_("Cooldown between a member's jobs"),
    "max_safety_tolerance": N_("Highest safety_tolerance"),
    "nsfw_policy": N_("Results the safety filter flags as NSFW"),
    "reaction_trigger": N_("Reaction trigger"),
    "trigger_emoji": N_("Reaction emoji"),
    "monthly_budget_usd": N_("Monthly budget"),
    "model_ids": N_("Models allowed"),
}
NSFW_LABELS = {
    NsfwPolicy.SPOILER: N_("spoilered in NSFW channels, withheld elsewhere"),
    NsfwPolicy.ALLOW: N_("posted as they are in NSFW channels, withheld elsewhere"),
    NsfwPolicy.WITHHOLD: N_("withheld everywhere"),
}


def label(name: str) -> str:
    return t(LABELS[name])


def setting_names(settings: Settings) -> tuple[str, ...]:
    """The settings a server has here: the model list only where the operator offers a choice."""
    return tuple(name for name in SETTING_NAMES if name != "model_ids" or len(settings.enabled_models) > 1)


def value_text(name: str, value: Any, settings: Settings) -> str:
    """A setting's value (as stored, or in force) as members read it."""
    if value is None:
        return t("(the operator's default)")
    texts = {
        "channel_ids": lambda: " ".join(f"<#{c}>" for c in value) or t("every channel"),
        "role_ids": lambda: " ".join(f"<@&{r}>" for r in value) or t("everyone"),
        "cooldown_seconds": lambda: t("{seconds} s", seconds=_number(value)),
        "nsfw_policy": lambda: t(NSFW_LABELS[NsfwPolicy(value)]),
        "reaction_trigger": lambda: t("on") if value else t("off"),
        "monthly_budget_usd": lambda: money(Decimal(str(value))),
        "model_ids": lambda: ", ".join(settings.model(m).name for m in value) or t("every model the bot offers"),
    }
    text = texts.get(name)
    return text() if text is not None else str(value)


def show_lines(settings: Settings, rules: Effective, spent: Decimal) -> list[str]:
    """`/kontext-admin show`: every setting in force, where it comes from, and the operator's bound on it."""
    lines = [t("**Settings in force in this server**")]
    for name in setting_names(settings):
        lines.append(_setting_line(settings, rules, name))
        if name == "monthly_budget_usd":
            lines.append(t("  {spent} spent this month (estimated).", spent=money(spent)))
    lines.append(t("Members with **Manage Server** change these with `/kontext-admin`; they can only tighten what "
                   "the bot's operator allows. Members see refusals that name the setting."))  # fmt: skip
    return lines


def _setting_line(settings: Settings, rules: Effective, name: str) -> str:
    value = getattr(rules, name)
    if name == "daily_member_images" and value is None:
        shown = t("only each user's {limit} per day in all servers", limit=settings.daily_images_per_user)
    elif name == "monthly_budget_usd" and value is None:
        shown = t("none")
    else:
        shown = value_text(name, value, settings)
    source = t("set by this server") if name in rules.own else t("the operator's default")
    line = t("- **{label}**: {value} · {source}", label=label(name), value=shown, source=source)
    bound = _bound(settings, name)
    return f"{line} · {bound}" if bound else line


def _bound(settings: Settings, name: str) -> str:
    bounds = {
        "daily_guild_images": lambda: t("the operator allows at most {limit}", limit=settings.daily_images_per_guild),
        "daily_member_images": lambda: t("the operator allows at most {limit}", limit=settings.daily_images_per_user),
        "cooldown_seconds": lambda: _cooldown_bound(settings.cooldown_seconds),
        "max_safety_tolerance": lambda: t("the operator allows at most {limit}", limit=settings.max_safety_tolerance),
        "nsfw_policy": lambda: t("the operator's: {policy}", policy=t(NSFW_LABELS[settings.nsfw_policy])),
        "monthly_budget_usd": lambda: _budget_bound(settings.monthly_budget_per_guild_usd),
    }
    bound = bounds.get(name)
    return bound() if bound is not None else ""


def _cooldown_bound(seconds: float) -> str:
    return t("the operator requires at least {seconds} s", seconds=_number(seconds))


def _budget_bound(ceiling: Decimal | None) -> str:
    return "" if ceiling is None else t("the operator allows at most {amount}", amount=money(ceiling))


def change_lines(changes: Sequence[SettingChange], settings: Settings) -> list[str]:
    """The change log: when, who, which setting, old → new."""
    if not changes:
        return [t("No setting has been changed here yet.")]
    return [
        t("- <t:{time}:f> <@{user}> **{label}**: {old} → {new}", time=int(change.changed_at.timestamp()),
          user=change.user_id, label=label(change.setting), old=_logged(change.setting, change.old, settings),
          new=_logged(change.setting, change.new, settings))
        for change in changes if change.setting in LABELS
    ]  # fmt: skip


def _logged(name: str, value: Any, settings: Settings) -> str:
    return t("(the operator's default)") if value in (None, []) else value_text(name, value, settings)


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"
