"""Fuzz-derived input through the real pipeline into the real database.

The inputs: every stored finding of the fuzzer, the golden messages it starts from, and a few
thousand deterministic mutations of them in the fuzzer's manner (tokens of its dictionary
spliced in, bytes inserted, replaced or dropped). Every message must be stored exactly once, in
the table the validator says, with the validator's reason code and reason as it wrote them: a
reason that PostgreSQL cannot take would stop the feed, as a lone surrogate once did.
"""

from __future__ import annotations

import random
import re
import time
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer

from fuzz.__main__ import DICTIONARY, FINDINGS, SEEDS
from lmnh.events import RatingEvent, Rejection, RequestEvent
from lmnh.kafka_admin import client_config
from lmnh.museum import KIOSK_REFERENCE
from lmnh.validation import validate
from tests.integration.support import Target, consumed

pytestmark = pytest.mark.integration

MUTANTS = 3000
SMALL = 300  # bytes: the seeds worth mutating (the rest are deep nesting and huge numbers)
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)")


def dictionary_tokens() -> list[bytes]:
    """The fuzzer's dictionary: one quoted token a line, with \\\\, \\" and \\xNN escapes."""
    return [
        _ESCAPE.sub(_unescape, line.strip()[1:-1])
        for line in DICTIONARY.read_bytes().splitlines()
        if line.startswith(b'"')
    ]


def _unescape(match: re.Match[bytes]) -> bytes:
    escaped = match.group(1)
    return bytes.fromhex(escaped[1:].decode()) if len(escaped) == 3 else escaped


def mutate(rng: random.Random, seed: bytes, tokens: list[bytes]) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(0, len(data))
        match rng.randrange(4):
            case 0:
                data[at:at] = rng.choice(tokens)
            case 1:
                data[at : at + 1] = rng.choice(tokens)
            case 2:
                del data[at : at + rng.randint(1, 4)]
            case _:
                data[at:at] = bytes([rng.randrange(256)])
    return bytes(data)


def fuzz_inputs() -> list[bytes]:
    findings = [path.read_bytes() for path in sorted(FINDINGS.iterdir())]
    seeds = [path.read_bytes() for path in sorted(SEEDS.glob("*.json"))]
    small = [value for value in findings + seeds if len(value) <= SMALL]
    rng = random.Random(20261129)
    tokens = dictionary_tokens()
    mutants = [mutate(rng, rng.choice(small), tokens) for _ in range(MUTANTS)]
    return findings + seeds + mutants


def read_back(target: Target, expected: int) -> dict[tuple[int, int], bytes]:
    """Each message's coordinates and value, as the broker stored them."""
    consumer = Consumer(
        {
            **client_config(target.settings.kafka),
            "group.id": f"{target.topic}-reader",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([target.topic])
    values: dict[tuple[int, int], bytes] = {}
    deadline = time.monotonic() + 120
    try:
        while len(values) < expected and time.monotonic() < deadline:
            for message in consumer.consume(10_000, 1.0):
                values[(message.partition() or 0, message.offset() or 0)] = message.value() or b""
    finally:
        consumer.close()
    assert len(values) == expected
    return values


def test_fuzz_derived_input_lands_where_the_validator_says(target: Target) -> None:
    values = fuzz_inputs()
    assert len(values) > MUTANTS + len(list(SEEDS.glob("*.json")))
    target.produce(values)
    run = target.pipeline("--limit", str(len(values)))
    assert consumed(run.stdout) == len(values)
    sent = read_back(target, len(values))

    now = datetime.now(UTC)
    expected_rejections: dict[tuple[int, int], tuple[bytes, str, str]] = {}
    expected_ratings: dict[tuple[int, int], tuple[str, int, datetime]] = {}
    expected_requests: dict[tuple[int, int], tuple[str, int, datetime]] = {}
    for coordinates, value in sent.items():
        outcome = validate(value, KIOSK_REFERENCE, now)
        if isinstance(outcome, Rejection):
            expected_rejections[coordinates] = (value, outcome.code.value, outcome.detail)
        elif isinstance(outcome, RatingEvent):
            event = (outcome.exhibition_public_id, outcome.rating_value, outcome.at)
            expected_ratings[coordinates] = event
        elif isinstance(outcome, RequestEvent):
            event = (outcome.exhibition_public_id, outcome.request_value, outcome.at)
            expected_requests[coordinates] = event
    assert expected_rejections and expected_ratings and expected_requests  # every path taken

    rejected = target.query(
        "SELECT kafka_partition, kafka_offset, raw, reason_code, reason FROM rejected_message"
    )
    ratings = target.query(
        "SELECT kafka_partition, kafka_offset, e.public_id, r.rating_value, event_at"
        " FROM rating_interaction JOIN exhibition e USING (exhibition_id)"
        " JOIN rating r USING (rating_id)"
    )
    requests = target.query(
        "SELECT kafka_partition, kafka_offset, e.public_id, q.request_value, event_at"
        " FROM request_interaction JOIN exhibition e USING (exhibition_id)"
        " JOIN request q USING (request_id)"
    )
    stored = [(p, o) for p, o, *_ in rejected + ratings + requests]
    assert len(stored) == len(set(stored)), "a message was stored twice"
    assert set(stored) == set(sent), "a message was lost"
    assert {(p, o): (bytes(raw), code, reason) for p, o, raw, code, reason in rejected} == (
        expected_rejections
    )
    assert {(p, o): tuple(row) for p, o, *row in ratings} == expected_ratings
    assert {(p, o): tuple(row) for p, o, *row in requests} == expected_requests


def test_the_dictionary_is_read_as_libfuzzer_reads_it() -> None:
    tokens = dictionary_tokens()
    assert b'"site"' in tokens
    assert b"\\ud800" in tokens  # the JSON escape of a lone surrogate, six bytes
    assert "\u2028".encode() in tokens
    assert all(tokens)
