"""The local stack's promises: `up` is idempotent, and `down` then `up` keeps the data. Both
services must be the local ones (they are stopped): skipped when the environment names an
external one."""

from __future__ import annotations

import pytest

from lmnh.errors import ExitCode
from stack.topics import topic_message_count
from tests.integration.support import Target, stack

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("local_kafka", "local_postgres")]


def test_up_twice_is_fine_and_says_so() -> None:
    for _ in range(2):
        code, output = stack("up")
        assert code == ExitCode.OK, output
    assert "already running" in output
    assert stack("status")[0] == ExitCode.OK


def test_down_then_up_keeps_the_topic_and_the_database(target: Target) -> None:
    report = target.simulate("--count", "200", "--seed", "9", "--backfill", "2")
    target.pipeline()
    rows_before = target.query("SELECT count(*) FROM rating_interaction")
    try:
        for service in ("kafka", "postgres"):
            code, output = stack("down", service)
            assert code == ExitCode.OK, output
            assert stack("status", service)[0] != ExitCode.OK
    finally:
        code, output = stack("up")
        assert code == ExitCode.OK, output
    assert target.query("SELECT count(*) FROM rating_interaction") == rows_before
    assert topic_message_count(target.settings.kafka, target.topic) == report["sent"]
