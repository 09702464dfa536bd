"""Settings from the environment, `python -m bot` without configuration, and secret redaction in logs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from bot.config import ConfigError, Settings, load_settings
from bot.fal import PerImage
from bot.log import QUIET_LOGGERS, RedactingFormatter, setup_logging

REPO = Path(__file__).resolve().parents[1]
DISCORD_TOKEN = "MTIz.discord-TOKEN-value.Zy9"
FAL_KEY = "kid-4711:s3cr3t-Xq9vLpZt"
SECRETS = (DISCORD_TOKEN, FAL_KEY, FAL_KEY.split(":")[1])


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting leaks in from the developer's environment or a `.env` in the working directory."""
    fields = set(Settings.model_fields)
    for name in list(os.environ):
        if name.lower() in fields:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", DISCORD_TOKEN)
    monkeypatch.setenv("FAL_KEY", FAL_KEY)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def config_error(**overrides: object) -> str:
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None, **overrides)
    text = str(err.value)
    assert text.startswith("Invalid configuration:")
    assert_no_secret(text)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no pydantic dump with values attached
    return text


# -- required secrets ------------------------------------------------------------------------


def test_missing_secrets_are_both_named() -> None:
    text = config_error()
    lines = text.splitlines()
    assert "  DISCORD_TOKEN: missing (set it in the environment or .env)" in lines
    assert "  FAL_KEY: missing (set it in the environment or .env)" in lines
    assert len(lines) == 3  # nothing else is wrong with the defaults


def test_empty_secret_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "")
    monkeypatch.setenv("FAL_KEY", FAL_KEY)
    text = config_error()
    assert "DISCORD_TOKEN" in text and "FAL_KEY" not in text


@pytest.mark.usefixtures("secrets_env")
def test_defaults_with_only_the_secrets() -> None:
    settings = load_settings(_env_file=None)
    assert settings.discord_token.get_secret_value() == DISCORD_TOKEN
    assert settings.fal_key.get_secret_value() == FAL_KEY
    assert settings.fal_queue_url == "https://queue.fal.run"
    assert settings.fal_auth_scheme == "Key"
    assert settings.default_model == "kontext-max-multi" and settings.fal_endpoint is None
    assert settings.enabled_models == ("kontext-max-multi", "kontext-pro-multi", "flux-2-pro-edit", "seedream-v4-edit")
    assert settings.fal_result_hosts == ("fal.media",)  # and its subdomains: v3.fal.media, v3b.fal.media, ...
    assert settings.fal_result_allow_http is False
    assert settings.price_per_image_usd is None
    assert settings.model("kontext-max-multi").pricing == PerImage(Decimal("0.08"))
    assert (settings.allowed_guild_ids, settings.allowed_role_ids) == ((), ())
    assert (settings.log_level, settings.log_format) == ("INFO", "text")


def test_env_file_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / "custom.env"
    env_file.write_text(f"DISCORD_TOKEN={DISCORD_TOKEN}\nFAL_KEY={FAL_KEY}\nFAL_AUTH_SCHEME=Bearer\n", encoding="utf-8")
    settings = load_settings(_env_file=env_file)
    assert settings.fal_key.get_secret_value() == FAL_KEY and settings.fal_auth_scheme == "Bearer"
    (tmp_path / ".env").write_text(env_file.read_text(encoding="utf-8"), encoding="utf-8")
    assert load_settings().fal_auth_scheme == "Bearer"  # `.env` in the working directory by default


def test_env_example_loads_with_the_defaults(tmp_path: Path) -> None:
    example = REPO / ".env.example"
    if not example.exists():
        pytest.skip(".env.example not present")
    text = example.read_text(encoding="utf-8")
    text = text.replace("\nDISCORD_TOKEN=\n", f"\nDISCORD_TOKEN={DISCORD_TOKEN}\n")
    text = text.replace("\nFAL_KEY=\n", f"\nFAL_KEY={FAL_KEY}\n")
    env_file = tmp_path / ".env"
    env_file.write_text(text, encoding="utf-8")
    from_example = load_settings(_env_file=env_file).model_dump()
    defaults = load_settings(_env_file=None, discord_token=DISCORD_TOKEN, fal_key=FAL_KEY).model_dump()
    differing = {name for name in defaults if from_example[name] != defaults[name]}
    assert differing <= {"heartbeat_path"}  # the example turns the heartbeat on


# -- invalid values name the variable, never the value ---------------------------------------


@pytest.mark.usefixtures("secrets_env")
@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        ("FAL_AUTH_SCHEME", "Basic", "'Key' or 'Bearer'"),
        ("FAL_AUTH_SCHEME", "key", "'Key' or 'Bearer'"),
        ("FAL_QUEUE_URL", "queue.fal.run", "must start with http:// or https://"),
        ("DISCORD_API_URL", "ftp://discord.com", "must start with http:// or https://"),
        ("DISCORD_GATEWAY_URL", "https://gateway.discord.gg", "must start with ws:// or wss://"),
        ("FAL_ENDPOINT", "flux-pro", "owner/alias"),
        ("FAL_ENDPOINT", "fal-ai/../x", "owner/alias"),
        ("FAL_ENDPOINT", "fal-ai/flux?x=1", "owner/alias"),
        ("FAL_ENDPOINT", "fal-ai/flux-pro/kontext/multi", "replaced by DEFAULT_MODEL"),
        ("ENABLED_MODELS", "kontext-max-multi,dall-e-9", "not a registered model; use one of kontext-max-multi"),
        ("ENABLED_MODELS", "[]", "name at least one model"),
        ("DEFAULT_MODEL", "midjourney-v9", "not a registered model"),
        ("FAL_RESULT_HOSTS", '["https://fal.media"]', "host or host:port"),
        ("FAL_RESULT_HOSTS", "fal.media/files", "host or host:port"),
        ("FAL_RESULT_ALLOW_HTTP", "perhaps", "valid boolean"),
        ("FAL_START_TIMEOUT_SECONDS", "1", "greater than 1"),
        ("POLL_INTERVAL_SECONDS", "0", "greater than 0"),
        ("MAX_IMAGES", "11", "less than or equal to 10"),
        ("LOG_LEVEL", "TRACE", "'DEBUG'"),
        ("LOG_FORMAT", "logfmt", "'text' or 'json'"),
        ("ALLOWED_GUILD_IDS", '["abc"]', "valid integer"),
        ("USE_STATUS_STREAM", "perhaps", "valid boolean"),
    ],
)
def test_invalid_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(variable, value)
    text = config_error()
    (line,) = [line for line in text.splitlines() if line.startswith(f"  {variable}")]
    assert problem in line
    if len(value) > 4:
        assert value not in text  # values are never echoed (they might be secrets)


def test_several_problems_are_reported_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_KEY", FAL_KEY)
    monkeypatch.setenv("FAL_AUTH_SCHEME", "Token")
    monkeypatch.setenv("FAL_QUEUE_URL", "queue.fal.run")
    text = config_error()
    named = {line.split(":")[0].strip() for line in text.splitlines()[1:]}
    assert named == {"DISCORD_TOKEN", "FAL_AUTH_SCHEME", "FAL_QUEUE_URL"}


@pytest.mark.usefixtures("secrets_env")
def test_url_and_endpoint_are_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAL_QUEUE_URL", "https://reseller.example/fal/")
    monkeypatch.setenv("FAL_ENDPOINT", "/fal-ai/flux-pro/kontext/max/multi/")  # before ENABLED_MODELS; agrees
    monkeypatch.setenv("DISCORD_GATEWAY_URL", "ws://127.0.0.1:9999")
    settings = load_settings(_env_file=None)
    assert settings.fal_queue_url == "https://reseller.example/fal"
    assert settings.fal_endpoint == "fal-ai/flux-pro/kontext/max/multi"
    assert settings.discord_gateway_url == "ws://127.0.0.1:9999"


@pytest.mark.usefixtures("secrets_env")
def test_env_parsing_of_lists_and_scalars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_GUILD_IDS", "[1,2]")
    monkeypatch.setenv("ALLOWED_ROLE_IDS", "[]")
    monkeypatch.setenv("FAL_RESULT_HOSTS", '["127.0.0.1", "CDN.example:8443"]')
    monkeypatch.setenv("USE_STATUS_STREAM", "false")
    monkeypatch.setenv("DEV_GUILD_ID", "")  # empty lines of .env.example mean "unset"
    monkeypatch.setenv("PRICE_PER_IMAGE_USD", "0.10")
    monkeypatch.setenv("DATABASE_PATH", "/data/x.sqlite3")
    settings = load_settings(_env_file=None)
    assert settings.allowed_guild_ids == (1, 2)
    assert settings.allowed_role_ids == ()
    assert settings.fal_result_hosts == ("127.0.0.1", "cdn.example:8443")
    assert settings.use_status_stream is False
    assert settings.dev_guild_id is None
    assert settings.price_per_image_usd == Decimal("0.10")
    assert settings.model("kontext-max-multi").pricing == PerImage(Decimal("0.10"))  # the model it always priced
    assert settings.model("kontext-pro-multi").pricing == PerImage(Decimal("0.04"))
    assert settings.database_path == Path("/data/x.sqlite3")


@pytest.mark.usefixtures("secrets_env")
def test_lists_may_be_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOWED_GUILD_IDS", "1,2")
    monkeypatch.setenv("ALLOWED_ROLE_IDS", " 3 , 4 ,")
    monkeypatch.setenv("FAL_RESULT_HOSTS", "127.0.0.1, cdn.example")
    settings = load_settings(_env_file=None)
    assert (settings.allowed_guild_ids, settings.allowed_role_ids) == ((1, 2), (3, 4))
    assert settings.fal_result_hosts == ("127.0.0.1", "cdn.example")


@pytest.mark.usefixtures("secrets_env")
@pytest.mark.parametrize("value", ["[1,", "1,two", '{"a": 1}'])
def test_undecodable_list_is_a_config_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """Regression: a list that pydantic-settings could not decode escaped load_settings as a raw SettingsError,
    so `python -m bot` died with a traceback (exit 1) instead of a clean message (exit 2)."""
    monkeypatch.setenv("ALLOWED_GUILD_IDS", value)
    text = config_error()
    assert "ALLOWED_GUILD_IDS" in text


def test_python_m_bot_bad_list_exits_2(tmp_path: Path) -> None:
    done = run_bot(tmp_path, DISCORD_TOKEN=DISCORD_TOKEN, FAL_KEY=FAL_KEY, ALLOWED_GUILD_IDS="[1,")
    assert done.returncode == 2, done.stderr
    assert "ALLOWED_GUILD_IDS" in done.stderr and "Traceback" not in done.stderr
    assert_no_secret(done.stderr + done.stdout)


# -- shards and the database ---------------------------------------------------------------------


@pytest.mark.usefixtures("secrets_env")
def test_one_process_runs_every_shard_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings(_env_file=None)
    assert (settings.shard_count, settings.shard_ids, settings.shards) == (1, None, None)
    assert settings.database_url is None  # SQLite at DATABASE_PATH
    monkeypatch.setenv("SHARD_COUNT", "4")
    assert load_settings(_env_file=None).shards is None  # all four shards in this process


@pytest.mark.usefixtures("secrets_env")
@pytest.mark.parametrize(
    ("value", "ids"), [("0,1", (0, 1)), ("2-5", (2, 3, 4, 5)), ("[7]", (7,)), (" 1, 3-4 ,6", (1, 3, 4, 6))]
)
def test_shard_ids_are_a_list_or_ranges(monkeypatch: pytest.MonkeyPatch, value: str, ids: tuple[int, ...]) -> None:
    monkeypatch.setenv("SHARD_COUNT", "8")
    monkeypatch.setenv("SHARD_IDS", value)
    settings = load_settings(_env_file=None)
    assert settings.shard_ids == ids
    assert settings.shards is not None and settings.shards.ids == frozenset(ids) and settings.shards.count == 8


@pytest.mark.usefixtures("secrets_env")
@pytest.mark.parametrize(
    ("count", "value", "problem"),
    [("2", "2", "from 0 to SHARD_COUNT - 1 (1)"), (None, "1", "(0)"), ("4", "a-b", "like 0,1 or a range"),
     ("4", "3-1", "must go up"), ("0", "0", None)],
)  # fmt: skip
def test_impossible_shards_are_refused(
    monkeypatch: pytest.MonkeyPatch, count: str | None, value: str, problem: str | None
) -> None:
    if count is not None:
        monkeypatch.setenv("SHARD_COUNT", count)
    monkeypatch.setenv("SHARD_IDS", value)
    text = config_error()
    variable = "SHARD_COUNT" if problem is None else "SHARD_IDS"
    (line,) = [line for line in text.splitlines() if line.startswith(f"  {variable}")]
    assert problem is None or problem in line


@pytest.mark.usefixtures("secrets_env")
def test_database_url_is_a_secret_and_must_be_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://kontext:pg-Pa55word@db.internal:5432/kontext"
    monkeypatch.setenv("DATABASE_URL", url)
    settings = load_settings(_env_file=None)
    assert settings.database_url is not None and settings.database_url.get_secret_value() == url
    assert "pg-Pa55word" not in repr(settings) + str(settings.model_dump())

    monkeypatch.setenv("DATABASE_URL", "mysql://kontext:pg-Pa55word@db.internal/kontext")
    text = config_error()
    assert "DATABASE_URL: Value error, must start with postgresql://" in text and "pg-Pa55word" not in text
    for broken in ("postgresql://kontext:pg-Pa55word@db.internal:99999/k", "postgresql://kontext:pg-Pa55word@[db/k"):
        monkeypatch.setenv("DATABASE_URL", broken)
        text = config_error()
        assert "DATABASE_URL: Value error, is not a valid URL" in text and "pg-Pa55word" not in text


# -- secrets stay secret ---------------------------------------------------------------------


@pytest.mark.usefixtures("secrets_env")
def test_settings_never_print_secrets() -> None:
    settings = load_settings(_env_file=None)
    for text in (repr(settings), str(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert_no_secret(text)
    assert "**********" in repr(settings)
    with pytest.raises(Exception, match="frozen"):
        settings.fal_queue_url = "https://elsewhere.example"  # type: ignore[misc]


def test_invalid_secret_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", DISCORD_TOKEN)
    text = config_error(fal_key=12345)  # wrong type: pydantic would normally quote the input
    assert "FAL_KEY" in text and "12345" not in text


# -- python -m bot ---------------------------------------------------------------------------


def run_bot(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m bot` in an empty directory (no .env) with an otherwise empty environment.
    PYTHONPATH points at the checkout because the package is not installed into the venv."""
    base = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_python_m_bot_without_configuration_exits_2(tmp_path: Path) -> None:
    done = run_bot(tmp_path)
    assert done.returncode == 2, done.stderr
    assert "DISCORD_TOKEN" in done.stderr and "FAL_KEY" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def test_python_m_bot_invalid_value_exits_2_without_secrets(tmp_path: Path) -> None:
    done = run_bot(tmp_path, DISCORD_TOKEN=DISCORD_TOKEN, FAL_KEY=FAL_KEY, FAL_AUTH_SCHEME="Basic")
    assert done.returncode == 2, done.stderr
    assert "FAL_AUTH_SCHEME" in done.stderr and "DISCORD_TOKEN" not in done.stderr
    assert "Traceback" not in done.stderr
    assert_no_secret(done.stderr + done.stdout)


# -- RedactingFormatter ----------------------------------------------------------------------


def make_record(message: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("bot.fal", logging.WARNING, __file__, 1, message, args, exc_info)


def test_redacts_secrets_in_messages() -> None:
    formatter = RedactingFormatter("%(levelname)s %(name)s: %(message)s", [DISCORD_TOKEN, FAL_KEY])
    line = formatter.format(make_record("headers=%s token=%s", {"Authorization": f"Key {FAL_KEY}"}, DISCORD_TOKEN))
    assert line == "WARNING bot.fal: headers={'Authorization': 'Key [redacted]'} token=[redacted]"


def test_redacts_secrets_in_tracebacks() -> None:
    formatter = RedactingFormatter("%(message)s", [FAL_KEY])
    try:
        raise RuntimeError(f"request with Authorization: Key {FAL_KEY} failed")
    except RuntimeError as exc:
        line = formatter.format(make_record("fal call failed", exc=exc))
    assert "Traceback (most recent call last)" in line
    assert "RuntimeError: request with Authorization: Key [redacted] failed" in line
    assert FAL_KEY not in line


def test_redaction_ignores_empty_and_tiny_secrets() -> None:
    formatter = RedactingFormatter("%(message)s", ["", "abc", FAL_KEY])
    assert formatter.format(make_record("abc and a cab, key %s", FAL_KEY)) == "abc and a cab, key [redacted]"


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    excepthook = sys.excepthook
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, quiet_level in quiet.items():
            logging.getLogger(name).setLevel(quiet_level)
        sys.excepthook = excepthook
        logging.captureWarnings(False)


@pytest.mark.usefixtures("restore_root_logger")
def test_setup_logging_redacts_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO", [DISCORD_TOKEN, FAL_KEY])
    root = logging.getLogger()
    (handler,) = root.handlers
    assert isinstance(handler.formatter, RedactingFormatter)
    assert root.level == logging.INFO
    assert all(logging.getLogger(name).level == logging.WARNING for name in QUIET_LOGGERS)
    logging.getLogger("aiohttp.client").info("sending Authorization: Key %s", FAL_KEY)
    logging.getLogger("bot").debug("not shown at INFO %s", DISCORD_TOKEN)
    out = capsys.readouterr().out
    assert "aiohttp.client: sending Authorization: Key [redacted]" in out
    assert "not shown" not in out
    assert_no_secret(out)
