"""Partition maintenance's pure side: its settings, and the procedure's report read and said."""

from __future__ import annotations

from typing import Any

import pytest

from lmnh.config import RetentionSettings, load_config
from lmnh.errors import ConfigError
from lmnh.retention import Step, describe, parse_report, summary


def test_retention_defaults_and_settings() -> None:
    assert load_config({}).retention == RetentionSettings(90, 35, 3)
    settings = load_config(
        {
            "RETENTION_REJECTED_DAYS": "30",
            "RETENTION_LOAD_MINUTE_DAYS": "7",
            "PARTITION_MONTHS_AHEAD": "0",
        }
    )
    assert settings.retention == RetentionSettings(30, 7, 0)


def test_every_bad_retention_setting_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(
            {
                "RETENTION_REJECTED_DAYS": "0",
                "RETENTION_LOAD_MINUTE_DAYS": "-3",
                "PARTITION_MONTHS_AHEAD": "three",
            }
        )
    assert [problem.split("=")[0] for problem in raised.value.problems] == [
        "RETENTION_REJECTED_DAYS",
        "RETENTION_LOAD_MINUTE_DAYS",
        "PARTITION_MONTHS_AHEAD",
    ]


REPORT = [
    {"step": "made", "table": "load_minute", "partition": "load_minute_p2027_01", "rows": 0},
    {
        "step": "moved",
        "table": "rating_interaction",
        "partition": "rating_interaction_p2025_03",
        "rows": 1200,
    },
    {
        "step": "dropped",
        "table": "rejected_message",
        "partition": "rejected_message_p2026_06",
        "rows": 15000,
    },
    {"step": "skipped", "table": "load_minute", "partition": "load_minute_p2026_09", "rows": 0},
]


def test_the_report_is_read_into_steps_and_said_with_counts() -> None:
    steps = parse_report(REPORT)
    assert steps[1] == Step("moved", "rating_interaction", "rating_interaction_p2025_03", 1200)
    assert [describe(step) for step in steps] == [
        "made load_minute_p2027_01",
        "made rating_interaction_p2025_03: moved 1,200 rows into it from"
        " rating_interaction_default",
        "dropped rejected_message_p2026_06: 15,000 rows, their counts kept in rejected_daily",
        "skipped load_minute_p2026_09: its lock was not granted in time (the next run does it)",
    ]
    assert summary(steps) == "maintenance: 1 made, 1 moved, 1 dropped, 1 skipped"
    assert summary(()) == "maintenance: nothing to do"


@pytest.mark.parametrize(
    "entry",
    [
        {"step": "truncated", "table": "t", "partition": "t_p2026_01", "rows": 0},
        {"step": "made", "table": 1, "partition": "t_p2026_01", "rows": 0},
        {"step": "made", "table": "t", "partition": "t_p2026_01", "rows": -1},
        {"step": "made", "table": "t", "partition": "t_p2026_01", "rows": True},
        "made",
    ],
)
def test_a_report_of_another_shape_is_refused(entry: Any) -> None:
    with pytest.raises(ValueError, match="not a maintenance step"):
        parse_report([entry])


def test_one_row_is_said_as_one() -> None:
    assert describe(Step("moved", "load_minute", "load_minute_p2026_05", 1)) == (
        "made load_minute_p2026_05: moved 1 row into it from load_minute_default"
    )
