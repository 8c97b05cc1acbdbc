"""Hostile input at volume: fuzzed bytes, mutations of valid messages, oversized payloads,
deep nesting, huge numbers, bad encodings and SQL, mixed into a valid stream. Nothing may
crash, and every message must land where the validator says, once. (Throughput is the
benchmark's business: `python -m bench`.)"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from confluent_kafka import Consumer

from lmnh.events import Rejection
from lmnh.kafka_admin import client_config
from lmnh.museum import KIOSK_REFERENCE, LONDON
from lmnh.validation import validate
from simulator.traffic import TrafficMix, backfill
from tests.integration.support import Target, consumed

pytestmark = pytest.mark.integration

VALID = b'{"at": "2026-11-20T12:29:17.958630+00:00", "site": "5", "val": 3}'
SQL = [
    b"'); DROP TABLE rating_interaction; --",
    b'{"at": "2026-11-20T12:00:00+00:00", "site": "1; DELETE FROM exhibition", "val": 3}',
    b'{"at": "2026-11-20T12:00:00+00:00\'); TRUNCATE kafka_offset; --", "site": "1", "val": 3}',
    b"\\.\n\\copy rejected_message from '/etc/passwd'\t\\N",
]
# The broker's default limit is about 1 MB a record; stay just under it.
OVERSIZED_BYTES = 900_000


def hostile(rng: random.Random) -> bytes:
    return rng.choice(_KINDS)(rng)


def _fuzz(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(0, 300))


def _mutate(rng: random.Random) -> bytes:
    data = bytearray(VALID)
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(len(data))
        match rng.randrange(3):
            case 0:
                data[at] = rng.randrange(256)
            case 1:
                del data[at]
            case _:
                data.insert(at, rng.randrange(256))
    return bytes(data)


def _truncate(rng: random.Random) -> bytes:
    return VALID[: rng.randrange(len(VALID))]


def _oversized(rng: random.Random) -> bytes:
    return json.dumps({"at": "x" * (OVERSIZED_BYTES - rng.randrange(1000)), "site": "1"}).encode()


def _deep(rng: random.Random, depth: int | None = None) -> bytes:
    depth = depth or rng.choice([100, 1_000, 5_000])
    return b"[" * depth + b"]" * depth


def _huge_number(rng: random.Random) -> bytes:
    digits = rng.choice([20, 400, 4_000, 5_000])  # Python refuses more than 4,300
    return b'{"at": "2026-11-20T12:00:00Z", "site": "1", "val": ' + b"9" * digits + b"}"


def _bad_encoding(rng: random.Random) -> bytes:
    text = VALID.decode()
    return rng.choice(
        [
            b"\xef\xbb\xbf" + VALID,
            text.encode("utf-16"),
            text.encode("utf-16-be"),
            text.encode("utf-32"),
            VALID.replace(b"5", b"\xc0\xb5"),
            VALID + b"\xff",
        ]
    )


def _sql(rng: random.Random) -> bytes:
    return rng.choice(SQL)


_KINDS: list[Callable[[random.Random], bytes]] = [
    _fuzz,
    _fuzz,
    _mutate,
    _mutate,
    _mutate,
    _truncate,
    _deep,
    _huge_number,
    _bad_encoding,
    _sql,
]


def simulated_invalid(count: int) -> Iterator[bytes]:
    """Every invalid category the live feed carries, from the simulator's own model."""
    end = datetime(2026, 11, 20, 18, tzinfo=LONDON)
    mix = TrafficMix(invalid_share=0.99)
    for message in backfill(31, end - timedelta(days=30), end, end, count, mix):
        yield message.value


def read_back(target: Target, topic: str, expected: int) -> dict[tuple[int, int], bytes | None]:
    consumer = Consumer(
        {
            **client_config(target.settings.kafka),
            "group.id": f"{topic}-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    values: dict[tuple[int, int], bytes | None] = {}
    deadline = time.monotonic() + 120
    try:
        while len(values) < expected and time.monotonic() < deadline:
            for message in consumer.consume(10_000, 1.0):
                values[(message.partition() or 0, message.offset() or 0)] = message.value()
    finally:
        consumer.close()
    return values


@pytest.mark.parametrize(
    "count",
    [
        pytest.param(50_000, id="50k-hostile"),
        pytest.param(300_000, id="300k-hostile", marks=pytest.mark.slow),
    ],
)
def test_hostile_input_at_volume_is_rejected_with_reasons_and_nothing_lost_or_doubled(
    target: Target, count: int
) -> None:
    rng = random.Random(32)
    hostile_values = [hostile(rng) for _ in range(count - count // 10 - 40)]
    hostile_values += simulated_invalid(count // 10)
    # A few of the largest: payloads near the broker's record limit, and very deep nesting.
    hostile_values += [_oversized(rng) for _ in range(20)]
    hostile_values += [_deep(rng, 100_000) for _ in range(20)]
    end = datetime(2026, 11, 20, 18, tzinfo=LONDON)
    clean = [
        m.value
        for m in backfill(
            33, end - timedelta(days=30), end, end, count, TrafficMix(invalid_share=0)
        )
    ]
    mixed = clean + hostile_values
    rng.shuffle(mixed)

    target.produce(mixed)
    mixed_run = target.pipeline("--limit", str(len(mixed)))
    sent = read_back(target, target.topic, len(mixed))
    assert len(sent) == len(mixed), "the broker did not give back every message sent"
    assert consumed(mixed_run.stdout) == len(mixed)

    # Every message of the mixed stream is where the validator, run here, says it belongs.
    now = datetime.now(UTC)
    expected_rejections = {}
    expected_facts = set()
    for coordinates, value in sent.items():
        outcome = validate(value, KIOSK_REFERENCE, now)
        if isinstance(outcome, Rejection):
            expected_rejections[coordinates] = (value, outcome.code.value)
        else:
            expected_facts.add(coordinates)
    rows = target.query(
        "SELECT kafka_partition, kafka_offset, raw, reason_code FROM rejected_message"
        " WHERE kafka_topic = %s",
        (target.topic,),
    )
    stored_rejections = {(p, o): (bytes(raw), code) for p, o, raw, code in rows}
    assert len(rows) == len(stored_rejections), "a message was rejected twice"
    assert stored_rejections == expected_rejections
    facts = target.query(
        "SELECT kafka_partition, kafka_offset FROM rating_interaction WHERE kafka_topic = %s"
        " UNION ALL SELECT kafka_partition, kafka_offset FROM request_interaction"
        " WHERE kafka_topic = %s",
        (target.topic, target.topic),
    )
    assert sorted(facts) == sorted(expected_facts)
    assert len(expected_rejections) >= len(hostile_values) * 0.97  # a mutation may stay valid

    # The schema is intact after the SQL-looking payloads: stored verbatim, never executed.
    assert target.query("SELECT count(*) FROM exhibition") == [(6,)]
    assert {raw for raw, _ in stored_rejections.values()} >= set(SQL)
