"""The lock files and the venv made from them, checked offline.

`requirements.lock` (runtime) and `requirements-test.lock` (runtime + test tools) are made by `sh scripts/lock.sh`
from the ranges in pyproject.toml. Here: every package is pinned exactly with hashes, the pins satisfy
pyproject.toml, the tests run the runtime pins, and the venv these tests run in holds exactly its lock.
`scripts/venv.sh` reuses .venv while its lock is unchanged and rebuilds it when the lock changes (run here on a
wheel made on the spot, with pip's index switched off).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_LOCK = ROOT / "requirements.lock"
TEST_LOCK = ROOT / "requirements-test.lock"
UPDATE_COMMAND = "sh scripts/lock.sh"
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


@dataclass(frozen=True)
class Lock:
    pins: dict[str, str]  # normalized name → version
    hashes: dict[str, frozenset[str]]
    header: str


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> Lock:
    """A lock as uv writes it: `name==version \\` then `--hash=sha256:…` lines, and comments."""
    text = path.read_text(encoding="utf-8")
    pins: dict[str, str] = {}
    hashes: dict[str, frozenset[str]] = {}
    for line in text.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement, *options = line.split()
        match = PIN.fullmatch(requirement)
        assert match, f"{path.name}: not an exact pin: {line[:100]}"
        assert options and all(o.startswith("--hash=sha256:") for o in options), f"{path.name}: {requirement}"
        name = normalize(match[1])
        assert name not in pins, f"{path.name}: {name} twice"
        pins[name] = match[2]
        hashes[name] = frozenset(o.removeprefix("--hash=sha256:") for o in options)
    header = "".join(f"{line}\n" for line in itertools.takewhile(lambda line: line.startswith("#"), text.splitlines()))
    return Lock(pins, hashes, header)


def pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def requirements(*, test: bool) -> list[Requirement]:
    data = pyproject()
    project, build = data["project"], data["build-system"]
    assert isinstance(project, dict) and isinstance(build, dict)
    names = [*project["dependencies"], *build["requires"]]
    if test:
        names += project["optional-dependencies"]["test"]
    return [Requirement(name) for name in names]


@pytest.mark.parametrize("path", [RUNTIME_LOCK, TEST_LOCK], ids=lambda p: p.name)
def test_every_package_is_pinned_exactly_with_hashes(path: Path):
    lock = read_lock(path)

    assert len(lock.pins) >= 10 and all(lock.hashes.values())
    assert UPDATE_COMMAND in lock.header  # the file says how to update it


@pytest.mark.parametrize(("path", "test"), [(RUNTIME_LOCK, False), (TEST_LOCK, True)], ids=["runtime", "test"])
def test_the_pins_satisfy_the_ranges_in_pyproject(path: Path, test: bool):
    lock = read_lock(path)

    for requirement in requirements(test=test):
        name = normalize(requirement.name)
        assert name in lock.pins, f"{name} is missing from {path.name}: run {UPDATE_COMMAND}"
        assert requirement.specifier.contains(lock.pins[name], prereleases=True), (requirement, lock.pins[name])


def test_the_tests_run_exactly_the_runtime_pins():
    runtime, test = read_lock(RUNTIME_LOCK), read_lock(TEST_LOCK)

    for name, version in runtime.pins.items():
        assert test.pins.get(name) == version, name
        assert test.hashes[name] == runtime.hashes[name], name
    assert {"hypothesis", "pytest", "mypy"} <= test.pins.keys() and "pytest" not in runtime.pins


def test_the_new_dependencies_are_locked():
    runtime = read_lock(RUNTIME_LOCK)

    assert {"asyncpg", "prometheus-client", "babel", "setuptools"} <= runtime.pins.keys()  # setuptools: the build


def test_this_venv_holds_exactly_its_lock():
    stamp = Path(sys.prefix) / "lock.sha256"
    if not stamp.is_file():
        pytest.skip("not running in a .venv made by scripts/venv.sh")
    name, digest = stamp.read_text(encoding="utf-8").split()
    lock_path = ROOT / name
    assert digest == hashlib.sha256(lock_path.read_bytes()).hexdigest(), "the venv is older than its lock"
    installed = {normalize(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}
    installed.pop("pip")
    project = pyproject()["project"]
    assert isinstance(project, dict)
    assert installed == {**read_lock(lock_path).pins, project["name"]: project["version"]}


# --------------------------------------------------------------------------------------------------
# scripts/venv.sh
# --------------------------------------------------------------------------------------------------

TINY_PROJECT = """\
[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "tiny-app"
version = "1"

[tool.setuptools]
py-modules = []
"""


SETUPTOOLS_VERSION = "import setuptools; print(setuptools.__version__)"


def repack(name: str, directory: Path) -> Path:
    """An installed distribution zipped back into a wheel (its dist-info keeps WHEEL and RECORD)."""
    dist = importlib.metadata.distribution(name)
    wheel = directory / f"{name}-{dist.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for file in dist.files or ():
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                archive.write(path, file.as_posix())
    return wheel


class Checkout:
    """scripts/venv.sh, a tiny project, and a lock of the build backend only: this venv's setuptools, by path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "scripts").mkdir(parents=True)
        shutil.copy2(ROOT / "scripts" / "venv.sh", root / "scripts" / "venv.sh")
        (root / "pyproject.toml").write_text(TINY_PROJECT, encoding="utf-8")
        wheel = repack("setuptools", root)
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        (root / "app.lock").write_text(f"./{wheel.name} --hash=sha256:{digest}\n", encoding="utf-8")
        (root / "other.lock").write_text("# another lock\n", encoding="utf-8")

    def ensure(self, *locks: str, ok: bool = True) -> bool:
        """Runs `ensure_venv LOCKS` (without `set -e`: it must fail by itself); True when it (re)built the venv."""
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env.update(PYTHON=sys.executable, PIP_NO_INDEX="1")  # offline: only the wheel next to the lock
        done = subprocess.run(  # noqa: S603
            ["sh", "-c", 'set -u; . scripts/venv.sh && ensure_venv "$@"', "sh", *locks],  # noqa: S607
            cwd=self.root, env=env, capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip
        assert (done.returncode == 0) == ok, done.stdout + done.stderr
        return "installing" in done.stderr

    def python(self, code: str) -> str:
        done = subprocess.run(  # noqa: S603
            [str(self.root / ".venv" / "bin" / "python"), "-c", code],
            cwd=self.root, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        return done.stdout.strip()


@pytest.mark.timeout(300)
def test_the_venv_is_reused_until_its_lock_changes(tmp_path: Path):
    checkout = Checkout(tmp_path / "checkout")
    marker = checkout.root / ".venv" / "marker"

    assert checkout.ensure("app.lock")  # first run: built
    assert checkout.python(SETUPTOOLS_VERSION) == importlib.metadata.version("setuptools")  # the lock's, not venv's
    assert checkout.python("import importlib.metadata as m; print(m.version('tiny-app'))") == "1"
    marker.touch()

    assert not checkout.ensure("app.lock")  # unchanged: reused as it is
    assert not checkout.ensure("other.lock", "app.lock")  # run.sh: a venv of the other (superset) lock is fine too
    pyproject = checkout.root / "pyproject.toml"
    pyproject.write_text(TINY_PROJECT.replace('version = "1"', 'version = "2"'), encoding="utf-8")
    assert not checkout.ensure("app.lock")  # pyproject.toml changed: only the project is reinstalled
    assert checkout.python("import importlib.metadata as m; print(m.version('tiny-app'))") == "2"
    assert marker.exists()

    with (checkout.root / "app.lock").open("a", encoding="utf-8") as lock:
        lock.write("# changed\n")
    assert checkout.ensure("app.lock")  # the lock changed: rebuilt from scratch
    assert not marker.exists()
    assert checkout.python(SETUPTOOLS_VERSION) == importlib.metadata.version("setuptools")


def test_a_failed_install_is_not_taken_for_a_good_venv(tmp_path: Path):
    checkout = Checkout(tmp_path / "checkout")
    lock = checkout.root / "app.lock"
    lock.write_text(re.sub(r"sha256:\w+", "sha256:" + "0" * 64, lock.read_text(encoding="utf-8")), encoding="utf-8")

    assert checkout.ensure("app.lock", ok=False)  # pip refuses the wheel: its hash is not the locked one
    assert not (checkout.root / ".venv" / "lock.sha256").exists()  # so the next run tries again
