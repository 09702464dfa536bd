"""Imports point one way: cogs → bot → bot.fal. Checked on the source, so a stray import fails CI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules_in(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def offending(paths: list[Path], forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for path in paths:
        bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in forbidden or m.startswith(forbidden))
        if bad:
            found[str(path.relative_to(ROOT))] = bad
    return found


@pytest.mark.parametrize(
    ("paths", "forbidden"),
    [
        pytest.param(
            modules_in("bot/fal"), ("discord", "sqlite3", "asyncpg", "cogs", "bot"), id="fal-client-stands-alone"
        ),
        pytest.param(modules_in("bot"), ("cogs", "tests"), id="bot-never-imports-cogs"),
        pytest.param(
            [*modules_in("bot/jobs"), *modules_in("bot/store")]
            + [
                ROOT / "bot" / name
                for name in ("shards.py", "quota.py", "messages.py", "config.py", "i18n.py", "community.py")
            ],
            ("discord",),
            id="core-has-no-discord",
        ),
        pytest.param(modules_in("cogs"), ("tests", "bench"), id="cogs-never-import-tests"),
    ],
)
def test_imports_point_one_way(paths: list[Path], forbidden: tuple[str, ...]):
    assert paths, "no modules found"
    assert offending(paths, forbidden) == {}


def test_the_checker_sees_a_forbidden_import(tmp_path: Path):
    module = tmp_path / "m.py"
    module.write_text("import discord.ext\nfrom cogs.views import x\nfrom . import y\n", encoding="utf-8")

    assert imported_modules(module) == {"discord.ext", "cogs.views"}
