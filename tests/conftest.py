"""Options shared by every test tier."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        help="run the long versions of the fault tests (more faults, more messages)",
    )


@pytest.fixture
def full(request: pytest.FixtureRequest) -> bool:
    """True under --full: fault tests scale up their faults and volumes."""
    return bool(request.config.getoption("--full"))
