"""The promise of tests/conftest.py: tests and parameter cases marked `slow` are deselected
(pytest says "N deselected") unless --full is given. Checked by running pytest itself on a
tiny suite, with the project's configuration and its conftest as a plugin."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUITE = """
import pytest


def test_quick():
    pass


@pytest.mark.slow
def test_long():
    pass


@pytest.mark.parametrize("size", [1, pytest.param(1000, marks=pytest.mark.slow)])
def test_sized(size):
    pass
"""


def collect(tmp_path: Path, *args: str) -> tuple[list[str], str]:
    """The test ids pytest collects from SUITE with `args`, and its summary line."""
    suite = tmp_path / "test_suite.py"
    suite.write_text(SUITE)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.conftest",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(tmp_path),
            "--collect-only",
            "-q",
            str(suite),
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    ids = [line.split("::", 1)[1] for line in lines if "::" in line]
    return ids, lines[-1]


def test_slow_tests_and_cases_are_deselected_by_default(tmp_path: Path) -> None:
    ids, summary = collect(tmp_path)
    assert ids == ["test_quick", "test_sized[1]"]
    assert re.match(r"2/4 tests collected \(2 deselected\)", summary), summary


def test_full_runs_the_slow_ones_too(tmp_path: Path) -> None:
    ids, summary = collect(tmp_path, "--full")
    assert ids == ["test_quick", "test_long", "test_sized[1]", "test_sized[1000]"]
    assert "deselected" not in summary, summary


def test_only_the_slow_ones_with_full_and_m_slow(tmp_path: Path) -> None:
    ids, _ = collect(tmp_path, "--full", "-m", "slow")
    assert ids == ["test_long", "test_sized[1000]"]
