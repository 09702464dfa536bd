"""CI runs every test: with KONTEXT_NO_SKIPS set (by .ci/run), a skipped test fails the run, and the
PostgreSQL fixtures fail instead of skipping. Checked on a throwaway test run with our conftest's hooks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = """
import pytest
from tests.conftest import skip_or_fail

def test_runs():
    pass

def test_cannot_run_here():
    {body}
"""


def run_pytest(tmp_path: Path, body: str, *, no_skips: bool) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_sessionfinish  # noqa: F401\n")
    (tmp_path / "test_sample.py").write_text(TESTS.format(body=body))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("KONTEXT_NO_SKIPS", None)
    if no_skips:
        env["KONTEXT_NO_SKIPS"] = "1"
    return subprocess.run(  # noqa: S603  # our own interpreter and arguments
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("body", "strictly"),
    [
        ("pytest.skip('no server here')", "1 test(s) skipped while KONTEXT_NO_SKIPS is set: failing the run"),
        ("skip_or_fail('no server here')", "no server here (KONTEXT_NO_SKIPS is set: this test must run here)"),
    ],
)
def test_a_skip_fails_the_run_only_where_every_test_must_run(tmp_path: Path, body: str, strictly: str):
    relaxed = run_pytest(tmp_path, body, no_skips=False)
    strict = run_pytest(tmp_path, body, no_skips=True)

    assert relaxed.returncode == 0 and "1 passed, 1 skipped" in relaxed.stdout
    assert strict.returncode == 1 and strictly in strict.stdout, strict.stdout


def test_ci_sets_it():
    assert "export KONTEXT_NO_SKIPS=1" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
