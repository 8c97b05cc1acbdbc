"""Odd Kafka metadata never stops the loop: record keys (text, binary, invalid UTF-8, empty,
large), headers (several, binary and null values, duplicated names, a thousand of them) and
record timestamps from the smallest to the largest 64-bit number, on valid messages, invalid
ones, null values and values near the broker's record limit. The pipeline reads only the value
and the coordinates; it must end with exit 0 with every message stored exactly once, and a
rejected message's kafka_timestamp must be the record's time or NULL where no timestamp can
hold it."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

# Not re-exported for mypy, as in lmnh.kafka_admin.
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._resource import ResourceType

from lmnh.events import RatingEvent, Rejection, RequestEvent
from lmnh.kafka_admin import client_config
from lmnh.museum import KIOSK_REFERENCE
from lmnh.validation import validate
from tests.integration.support import (
    Delivered,
    Target,
    consumed,
    high_watermarks,
    produce_records,
)
from tests.integration.test_hostile import OVERSIZED_BYTES
from tests.integration.test_poison import (
    UNSTORABLE,
    fact_rows,
    reason_problem,
    run_pipeline,
    traceback_in,
)

pytestmark = pytest.mark.integration

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# Record timestamps in milliseconds since 1970. Python's datetime ends with year 9999,
# PostgreSQL's timestamptz with year 294276; a 64-bit millisecond count reaches year 292278994.
TIMESTAMPS = {
    "the last millisecond of year 9999": 253_402_300_799_999,
    "the first millisecond of year 10000": 253_402_300_800_000,
    "year 294277, past PostgreSQL's range": 9_224_318_016_000_000,
    "the largest int64": INT64_MAX,
    "1 ms after the epoch": 1,
    # librdkafka sends the current time instead of 0: a zero timestamp cannot be produced.
    "0 (the client's current time)": 0,
    "-1 (Kafka's 'no timestamp')": -1,
    "-2": -2,
    "one second before the epoch": -1000,
    "the smallest int64 + 1": INT64_MIN + 1,
    "the smallest int64": INT64_MIN,
}
KEYS = {
    "a text key": b"5",
    "a binary key": bytes(range(256)),
    "an invalid UTF-8 key": b"\xff\xc0\xaf\xed\xa0\x80\x00",
    "an empty key": b"",
    "a 100 kB key": b"\x00\xff" * 50_000,
}
HEADERS: dict[str, list[tuple[str, bytes | None]]] = {
    "several headers": [("source", b"kiosk-5"), ("trace-id", b"4bf92f3577b34da6")],
    "binary header values": [("bin", bytes(range(256))), ("bad-utf8", b"\xed\xa0\x80\xff\x00")],
    "duplicated header names": [("dup", b"1"), ("dup", b"2"), ("dup", b""), ("dup", None)],
    "odd header names": [("", b"empty name"), ("é\U0001f600", b"non-ASCII name")],
    "1,000 headers": [(f"h{n % 10}", bytes([n % 256])) for n in range(1000)],
}
VALUES: dict[str, bytes | None] = {
    "a valid rating": b'{"at": "2026-11-20T12:29:17.958630+00:00", "site": "5", "val": 3}',
    "a valid request": b'{"at": "2026-11-20T15:02:44.000001Z", "site": "0", "val": -1, "type": 1}',
    "an invalid message": b'{"site": "5", "val": 3}',
    "a null value": None,
}


def records(partitions: int) -> list[tuple[str, dict[str, Any]]]:
    """Every odd key, header set and timestamp on every kind of value, over all partitions,
    then all of them at once on values near the broker's record limit."""
    metadata: list[tuple[str, dict[str, Any]]] = [
        *((name, {"key": key}) for name, key in KEYS.items()),
        *((name, {"headers": headers}) for name, headers in HEADERS.items()),
        *((f"timestamp {name}", {"timestamp": ms}) for name, ms in TIMESTAMPS.items()),
    ]
    made = [
        (f"{kind} with {name}", {"value": value, **extra})
        for name, extra in metadata
        for kind, value in VALUES.items()
    ]
    large = json.dumps({"at": "x" * OVERSIZED_BYTES, "site": "1", "val": 3}).encode()
    made += [
        (
            f"a ~1 MB value with a key, headers and timestamp {name}",
            {
                "value": large,
                "key": b"\xff",
                "headers": HEADERS["several headers"],
                "timestamp": ms,
            },
        )
        for name, ms in TIMESTAMPS.items()
        if name.startswith(("the largest", "the smallest int64 +", "1 ms"))
    ]
    return [
        (label, {**record, "partition": n % partitions}) for n, (label, record) in enumerate(made)
    ]


def allow_any_timestamp(target: Target) -> list[tuple[str, Delivered]]:
    """Let the test's topic take any record timestamp, as a cluster may be configured to: this
    broker's defaults refuse (INVALID_TIMESTAMP) those more than an hour ahead of its clock
    and the smallest int64. Kafka applies the change shortly after acknowledging it, so probe
    with a record at each extreme until one is accepted (a refused record is not stored); the
    accepted probes are part of the test's messages."""
    admin = AdminClient(client_config(target.settings.kafka))
    resource = ConfigResource(
        ResourceType.TOPIC,
        target.topic,
        incremental_configs=[
            ConfigEntry(name, str(INT64_MAX), incremental_operation=AlterConfigOpType.SET)
            for name in ("message.timestamp.after.max.ms", "message.timestamp.before.max.ms")
        ],
    )
    for future in admin.incremental_alter_configs([resource]).values():
        future.result()

    producer = Producer({**client_config(target.settings.kafka), "acks": "all"})
    reports: list[tuple[KafkaError | None, Message]] = []
    probes = []
    for label, timestamp in (("largest", INT64_MAX), ("smallest", INT64_MIN)):
        deadline = time.monotonic() + 30
        while True:
            reports.clear()
            producer.produce(
                target.topic,
                None,
                timestamp=timestamp,
                partition=0,
                on_delivery=lambda error, message: reports.append((error, message)),
            )
            assert producer.flush(30) == 0, "the probe was not acknowledged within 30 s"
            error, message = reports[0]
            if error is None:
                delivered = Delivered(
                    message.partition() or 0, message.offset() or 0, message.timestamp()
                )
                probes.append((f"a null value with the {label} int64 timestamp", delivered))
                break
            assert error.code() == KafkaError.INVALID_TIMESTAMP, error.str()
            assert time.monotonic() < deadline, f"the topic still refuses: {error.str()}"
    return probes


def test_odd_kafka_metadata_never_crashes_the_loop_nor_loses_or_doubles_a_message(
    target: Target,
) -> None:
    partitions = target.settings.topic_partitions
    sent: dict[tuple[int, int], tuple[str, bytes | None, tuple[int, int]]] = {}
    for label, delivered in allow_any_timestamp(target):
        sent[(delivered.partition, delivered.offset)] = (label, None, delivered.timestamp)
    made = records(partitions)
    for (label, record), delivered in zip(
        made, produce_records(target, [record for _, record in made]), strict=True
    ):
        sent[(delivered.partition, delivered.offset)] = (
            label,
            record["value"],
            delivered.timestamp,
        )
    assert len(sent) == len(made) + 2
    # The broker kept the extremes as sent (otherwise this test would not test them).
    kept_times = {ms for _, _, (kind, ms) in sent.values() if kind != 0}
    assert {INT64_MAX, INT64_MIN, 9_224_318_016_000_000, -1000} <= kept_times

    result = run_pipeline(target, "--limit", str(len(sent)))
    said = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, said
    assert consumed(result.stdout) == len(sent), said

    # Every message in exactly one table.
    topic = (target.topic,)
    ratings, requests = fact_rows(target)
    rejected = target.query(
        "SELECT kafka_partition, kafka_offset, raw, reason_code, convert_to(reason, 'UTF8'),"
        " extract(epoch FROM kafka_timestamp) * 1000"
        " FROM rejected_message WHERE kafka_topic = %s",
        topic,
    )
    stored = Counter((p, o) for p, o, *_ in ratings + requests + rejected)
    doubled = {sent.get(c, ("not sent",))[0]: n for c, n in stored.items() if n > 1}
    assert not doubled, f"stored more than once: {doubled}"
    lost = sorted(label for c, (label, *_) in sent.items() if c not in stored)
    assert not lost, f"{len(lost)} of {len(sent)} messages stored nowhere: {lost}"
    assert set(stored) == set(sent), "rows for messages that were never sent"

    # The metadata changes nothing about where a message belongs.
    facts: dict[tuple[int, int], RatingEvent | RequestEvent] = {}
    facts |= {(p, o): RatingEvent(x, v, at) for p, o, x, v, at in ratings}
    facts |= {(p, o): RequestEvent(x, v, at) for p, o, x, v, at in requests}
    kept = {(p, o): row for p, o, *row in rejected}
    now = datetime.now(UTC)
    wrong = []
    for coordinates, (label, value, (kind, ms)) in sorted(sent.items()):
        expected = validate(value, KIOSK_REFERENCE, now)
        if not isinstance(expected, Rejection):
            if facts.get(coordinates) != expected:
                wrong.append(f"{label}: expected {expected}, stored {facts.get(coordinates)}")
            continue
        if coordinates not in kept:
            wrong.append(f"{label}: expected rejected ({expected.code}), stored as a fact")
            continue
        raw, code, reason, stored_ms = kept[coordinates]
        if (None if raw is None else bytes(raw)) != value:
            wrong.append(f"{label}: raw bytes differ")
        if code not in (expected.code.value, UNSTORABLE):
            wrong.append(f"{label}: reason code {code}, expected {expected.code} or unstorable")
        if problem := reason_problem(bytes(reason)):
            wrong.append(f"{label}: reason {problem}")
        # The record's time, or NULL where it cannot be held; never another time.
        record_time = Decimal(ms) if kind != 0 else None
        if stored_ms is not None and stored_ms != record_time:
            wrong.append(f"{label}: kafka_timestamp {stored_ms} ms, the record's is {record_time}")
    assert not wrong, "\n".join(wrong)

    # Nothing left behind, and nothing went wrong on the way.
    assert target.database_offsets() == high_watermarks(target, partitions)
    failure = traceback_in(result.stderr)
    assert not failure, failure
