"""The simulator's report is the truth: read the topic back and judge every message."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer

from lmnh.events import RatingEvent, Rejection
from lmnh.kafka_admin import client_config
from lmnh.museum import KIOSK_REFERENCE
from lmnh.validation import validate
from simulator.traffic import report_counts
from tests.integration.support import HISTORY_UNTIL, Target

pytestmark = pytest.mark.integration


def read_topic(target: Target, expected: int) -> list[bytes | None]:
    consumer = Consumer(
        {
            **client_config(target.settings.kafka),
            "group.id": f"{target.topic}-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([target.topic])
    values: list[bytes | None] = []
    idle = 0
    try:
        while len(values) < expected and idle < 20:
            batch = consumer.consume(10_000, 0.5)
            idle = 0 if batch else idle + 1
            for message in batch:
                assert message.error() is None, message.error()
                assert message.key() is None
                values.append(message.value())
        assert consumer.consume(1000, 1.0) == [], "the topic holds more than was reported"
    finally:
        consumer.close()
    return values


def test_the_topic_holds_exactly_what_the_report_says(target: Target) -> None:
    report = target.simulate(
        "--count", "20000", "--seed", "11", "--backfill", "14", "--until", HISTORY_UNTIL
    )
    assert report["failed"] == 0
    values = read_topic(target, report["sent"])
    assert len(values) == report["sent"] == 20_000

    ratings: Counter[tuple[str, int]] = Counter()
    requests: Counter[tuple[str, int]] = Counter()
    rejected: Counter[str] = Counter()
    now = datetime.now(UTC)
    for value in values:
        outcome = validate(value, KIOSK_REFERENCE, now)
        if isinstance(outcome, Rejection):
            rejected[outcome.code.value] += 1
        elif isinstance(outcome, RatingEvent):
            ratings[(outcome.exhibition_public_id, outcome.rating_value)] += 1
        else:
            requests[(outcome.exhibition_public_id, outcome.request_value)] += 1
    judged = {"ratings": dict(ratings), "requests": dict(requests), "rejected": dict(rejected)}
    assert judged == report_counts(report)
    assert sum(rejected.values()) / len(values) == pytest.approx(0.17, abs=0.01)


def test_the_invalid_share_follows_the_setting(target: Target) -> None:
    report = target.simulate(
        "--count", "10000", "--seed", "12", "--backfill", "7", "--invalid-share", "0.4"
    )
    assert sum(report["rejected"].values()) / report["sent"] == pytest.approx(0.4, abs=0.02)
