"""Options shared by every test tier."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        help="also run the tests marked slow (the large cases of the fault tests: more faults,"
        " more messages); without it they are deselected",
    )
    parser.addoption(
        "--screenshots-to",
        metavar="DIR",
        type=Path,
        help="the browser test saves its screenshots into DIR (default: a temporary folder);"
        " `--screenshots-to dashboard` refreshes the README's pictures",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests (or parameter cases) marked slow are deselected unless --full is given: the
    default run keeps a modest case of every fault test, --full adds the large ones."""
    if config.getoption("--full"):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]
