"""Settings read from the environment and `.env`; built once in `__main__`, never at import."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from bot.fal import DEFAULT_MODEL_ID, MODELS, ModelSpec, PerImage, find_model
from bot.log import LogFormat
from bot.shards import ShardSet, parse_shard_ids

__all__ = ("ConfigError", "NsfwPolicy", "Settings", "load_settings")

DISCORD_API_V10 = "https://discord.com/api/v10"
_ENDPOINT = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)+")


class NsfwPolicy(StrEnum):
    """What happens to result images fal flags as NSFW. Every policy withholds them outside NSFW channels."""

    SPOILER = "spoiler"  # posted as spoilers in NSFW channels
    ALLOW = "allow"  # posted as they are in NSFW channels
    WITHHOLD = "withhold"  # withheld everywhere

    @property
    def strictness(self) -> int:
        return {NsfwPolicy.ALLOW: 0, NsfwPolicy.SPOILER: 1, NsfwPolicy.WITHHOLD: 2}[self]


class ConfigError(Exception):
    """Configuration is missing or invalid; the message names the variables and never their values."""


class Settings(BaseSettings):
    """Every knob of the bot. Environment names are the upper-case field names."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", env_ignore_empty=True, extra="ignore", frozen=True
    )

    # Secrets.
    discord_token: SecretStr = Field(min_length=1)
    fal_key: SecretStr = Field(min_length=1)

    # fal queue.
    fal_queue_url: str = "https://queue.fal.run"
    fal_auth_scheme: Literal["Key", "Bearer"] = "Key"
    # Where result images may be downloaded from: `host` or `host:port`; a name also covers its subdomains
    # (v3.fal.media, v3b.fal.media, ...); without a port only the scheme's default port is allowed.
    fal_result_hosts: Annotated[tuple[str, ...], NoDecode] = ("fal.media",)
    fal_result_allow_http: bool = False  # plain-http result files; meant for tests against a local fake
    fal_start_timeout_seconds: float = Field(default=900.0, gt=1)
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    poll_max_interval_seconds: float = Field(default=10.0, gt=0)
    use_status_stream: bool = True
    max_status_streams: int = Field(default=5000, ge=0)  # each open stream holds a connection; the rest poll
    request_timeout_seconds: float = Field(default=30.0, gt=0)
    submit_timeout_seconds: float = Field(default=60.0, gt=0)
    job_timeout_seconds: float = Field(default=1800.0, gt=0)
    # First wait before a failed step of a job (posting, reading the result) is tried again; doubles each time.
    retry_base_seconds: float = Field(default=2.0, gt=0)
    # Shedding load: new requests are refused ("busy, try again in about N s") past either bound.
    max_admitting: int = Field(default=100, ge=1)
    max_loop_lag_seconds: float = Field(default=0.25, gt=0)

    # Discord.
    discord_api_url: str = DISCORD_API_V10
    discord_gateway_url: str | None = None  # only for proxies and tests; None = Discord's own gateway
    message_content_intent: bool = True  # privileged; lets the reaction trigger read the message's text
    dev_guild_id: int | None = None
    trigger_emoji: str = "🎨"
    status_edit_interval_seconds: float = Field(default=1.5, ge=0)
    # All status messages together make at most this many edits per second; under load each is edited less often.
    status_edits_per_second: float = Field(default=40.0, gt=0)
    # Connections to Discord's REST API at once (discord.py's own pool has no bound); the gateway's come on top.
    discord_max_connections: int = Field(default=100, ge=1)

    # Input limits.
    max_images: int = Field(default=4, ge=1, le=10)
    max_prompt_length: int = Field(default=1500, ge=1, le=4000)
    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    max_result_bytes: int = Field(default=50 * 1024 * 1024, ge=1)

    # Models (bot/fal/registry.py), by id or endpoint id; /kontext offers the enabled ones.
    enabled_models: Annotated[tuple[str, ...], NoDecode] = tuple(model.id for model in MODELS)
    default_model: str = DEFAULT_MODEL_ID  # must be enabled
    # Before ENABLED_MODELS: the endpoint of the one model. Still accepted where it names DEFAULT_MODEL.
    fal_endpoint: str | None = None

    # Cost and abuse control.
    # Before the registry priced each model: the price of a FLUX.1 Kontext [max] multi image (a reseller's, say).
    price_per_image_usd: Decimal | None = Field(default=None, ge=0)
    max_concurrent_jobs_per_user: int = Field(default=2, ge=1)
    daily_images_per_user: int = Field(default=20, ge=0)
    daily_images_per_guild: int = Field(default=200, ge=0)
    cooldown_seconds: float = Field(default=10.0, ge=0)
    allowed_guild_ids: Annotated[tuple[int, ...], NoDecode] = ()
    allowed_role_ids: Annotated[tuple[int, ...], NoDecode] = ()
    # Defaults and ceilings of what a server's admins may set with /kontext-admin (they can only tighten them).
    max_safety_tolerance: int = Field(default=6, ge=1, le=6)  # the highest safety_tolerance a job may ask for
    nsfw_policy: NsfwPolicy = NsfwPolicy.SPOILER  # servers may choose a stricter one (withhold)
    monthly_budget_per_guild_usd: Decimal | None = Field(default=None, ge=0)  # None: no budget

    # Sharding: this process runs SHARD_IDS (default: all) of SHARD_COUNT gateway shards.
    shard_count: int = Field(default=1, ge=1)
    shard_ids: Annotated[tuple[int, ...] | None, NoDecode] = None

    # Storage and logs.
    database_path: Path = Path("data/kontext.sqlite3")
    # postgresql://user:password@host:port/db: a PostgreSQL store several processes can share (else SQLite).
    database_url: SecretStr | None = None
    database_pool_size: int = Field(default=10, ge=1)  # connections per process (PostgreSQL only)
    heartbeat_path: Path | None = Path("data/heartbeat")  # touched while connected; read by `python -m bot.health`
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: LogFormat = "text"  # json: one object per line, for log collectors

    # Metrics: a Prometheus endpoint (/metrics) and /healthz on this port; None = off, 0 = any free port.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"  # the Docker image sets 0.0.0.0: inside a container loopback is unreachable

    @field_validator("fal_result_hosts", "allowed_guild_ids", "allowed_role_ids", "enabled_models", mode="before")
    @classmethod
    def _list_from_env(cls, value: Any) -> Any:
        """Lists in the environment may be JSON (`[1, 2]`) or comma separated (`1,2`)."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]

    @field_validator("shard_ids", mode="before")
    @classmethod
    def _shard_ids_from_env(cls, value: Any) -> Any:
        """`0,1`, a range `0-3`, or a JSON list."""
        return parse_shard_ids(value) if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        url = value.get_secret_value()
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("must start with postgresql:// (the value is not shown: it may hold a password)")
        try:
            urlsplit(url).port  # noqa: B018  # parsing it is the check
        except ValueError:
            raise ValueError("is not a valid URL: check the host and the port") from None
        return value

    @field_validator("shard_ids")
    @classmethod
    def _shards_exist(cls, value: tuple[int, ...] | None, info: ValidationInfo) -> tuple[int, ...] | None:
        count = info.data.get("shard_count", 1)
        if value is not None and (not value or min(value) < 0 or max(value) >= count):
            raise ValueError(f"must be shard ids from 0 to SHARD_COUNT - 1 ({count - 1})")
        return value

    @property
    def shards(self) -> ShardSet | None:
        """The shards this process runs, or None when it runs them all."""
        if self.shard_ids is None or len(set(self.shard_ids)) == self.shard_count:
            return None
        return ShardSet(frozenset(self.shard_ids), self.shard_count)

    @property
    def own_shards(self) -> ShardSet:
        """The shards this process runs, all of them listed when it runs them all."""
        return self.shards or ShardSet(frozenset(range(self.shard_count)), self.shard_count)

    @field_validator("fal_result_hosts")
    @classmethod
    def _plain_hosts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        hosts = tuple(host.strip().lower() for host in value)
        if any(not host or any(c in host for c in "/@?# ") for host in hosts):
            raise ValueError("entries must be host or host:port, without scheme or path")
        return hosts

    @field_validator("fal_queue_url", "discord_api_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("discord_gateway_url")
    @classmethod
    def _websocket_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("ws://", "wss://")):
            raise ValueError("must start with ws:// or wss://")
        return value

    @field_validator("enabled_models")
    @classmethod
    def _registered_models(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        ids = tuple(dict.fromkeys(_model_id(name) for name in value))
        if not ids:
            raise ValueError(f"name at least one model: {_REGISTERED}")
        return ids

    @field_validator("default_model")
    @classmethod
    def _enabled_default(cls, value: str, info: ValidationInfo) -> str:
        model_id = _model_id(value)
        enabled = info.data.get("enabled_models")
        if enabled is not None and model_id not in enabled:
            raise ValueError(f"must be one of ENABLED_MODELS ({', '.join(enabled)})")
        return model_id

    @field_validator("fal_endpoint")
    @classmethod
    def _endpoint_of_the_default(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        value = value.strip("/")
        if not _ENDPOINT.fullmatch(value) or any(part.strip(".") == "" for part in value.split("/")):
            raise ValueError("must look like owner/alias[/path] of letters, digits, '.', '_' and '-'")
        model, default = find_model(value), info.data.get("default_model")
        if default is not None and (model is None or model.id != default):
            raise ValueError("replaced by DEFAULT_MODEL (a model id, see ENABLED_MODELS); remove it or make them agree")
        return value

    # --- the models, as the bot uses them -----------------------------------------------------------

    def model(self, model_id: str) -> ModelSpec:
        """A registered model by id, with PRICE_PER_IMAGE_USD applied to Kontext [max] multi if set."""
        model = find_model(model_id)
        if model is None:
            raise LookupError(f"no registered model {model_id!r}")
        if self.price_per_image_usd is not None and model.id == LEGACY_PRICED:
            return replace(model, pricing=PerImage(self.price_per_image_usd))
        return model

    @property
    def models(self) -> tuple[ModelSpec, ...]:
        """The enabled models, in ENABLED_MODELS order."""
        return tuple(self.model(model_id) for model_id in self.enabled_models)


_REGISTERED = ", ".join(model.id for model in MODELS)
LEGACY_PRICED = DEFAULT_MODEL_ID  # the one model PRICE_PER_IMAGE_USD priced before the registry


def _model_id(name: str) -> str:
    model = find_model(name.strip())
    if model is None:  # the value is not echoed: every message here avoids it
        raise ValueError(f"not a registered model; use one of {_REGISTERED}")
    return model.id


def load_settings(**overrides: object) -> Settings:
    """Build `Settings`, turning validation errors into one readable `ConfigError`."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # values come from env; overrides are for tests
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except (SettingsError, ValueError) as exc:  # a value pydantic-settings could not even decode
        raise ConfigError(f"Invalid configuration: {exc}") from None


def _describe(exc: ValidationError) -> str:
    lines = ["Invalid configuration:"]
    for error in exc.errors(include_input=False, include_url=False):
        name = "_".join(str(part) for part in error["loc"]).upper() or "settings"
        problem = "missing (set it in the environment or .env)" if error["type"] == "missing" else error["msg"]
        lines.append(f"  {name}: {problem}")
    return "\n".join(lines)
