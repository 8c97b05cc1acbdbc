"""The two ceilings no loader can beat on this machine: PostgreSQL taking the very rows the
pipeline stores by COPY alone, and Kafka handing over the messages to a consumer that does
nothing with them."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer

from bench.local import BenchError
from lmnh.config import DatabaseSettings, KafkaSettings
from lmnh.database import connect
from lmnh.events import KafkaMessage, Outcome, RatingEvent, Rejection, RequestEvent
from lmnh.kafka_admin import client_config
from lmnh.reference import Reference

COPY_CHUNK = 100_000  # messages per transaction of the database ceiling

# The same COPY text format, columns and escapes as lmnh/store.py writes (re-created here
# because the store builds its rows inside its batch transaction; the run checks that both
# databases end up holding identical rows).
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": ""})
_COPY_RATINGS = (
    "COPY rating_interaction (exhibition_id, rating_id, event_at, kafka_topic,"
    " kafka_partition, kafka_offset) FROM STDIN"
)
_COPY_REQUESTS = (
    "COPY request_interaction (exhibition_id, request_id, event_at, kafka_topic,"
    " kafka_partition, kafka_offset) FROM STDIN"
)
_COPY_REJECTED = (
    "COPY rejected_message (raw, reason_code, reason, kafka_timestamp, received_at,"
    " kafka_topic, kafka_partition, kafka_offset) FROM STDIN"
)


@dataclass(frozen=True, slots=True)
class Timing:
    messages: int
    seconds: float


@dataclass(frozen=True, slots=True)
class CopyChunk:
    """One transaction's COPY text for each table, built before any timing."""

    ratings: str
    requests: str
    rejected: str


def copy_row(
    message: KafkaMessage, outcome: Outcome, reference: Reference, received: str
) -> tuple[int, str]:
    """The table (0 ratings, 1 requests, 2 rejected) and the COPY line of one message."""
    coordinates = f"{message.topic}\t{message.partition}\t{message.offset}\n"
    if isinstance(outcome, RatingEvent):
        exhibition = reference.exhibition_ids[outcome.exhibition_public_id]
        rating = reference.rating_ids[outcome.rating_value]
        return 0, f"{exhibition}\t{rating}\t{outcome.at.isoformat()}\t{coordinates}"
    if isinstance(outcome, RequestEvent):
        exhibition = reference.exhibition_ids[outcome.exhibition_public_id]
        request = reference.request_ids[outcome.request_value]
        return 1, f"{exhibition}\t{request}\t{outcome.at.isoformat()}\t{coordinates}"
    return 2, _rejected_row(message, outcome, received, coordinates)


def _rejected_row(
    message: KafkaMessage, rejection: Rejection, received: str, coordinates: str
) -> str:
    raw = "\\N" if message.value is None else "\\\\x" + message.value.hex()
    kafka_time = (
        "\\N"
        if message.timestamp_ms is None
        else datetime.fromtimestamp(message.timestamp_ms / 1000, UTC).isoformat()
    )
    reason = rejection.detail.translate(_COPY_ESCAPES)
    return f"{raw}\t{rejection.code.value}\t{reason}\t{kafka_time}\t{received}\t{coordinates}"


def build_chunks(
    messages: Iterable[KafkaMessage],
    judge: Callable[[KafkaMessage], Outcome],
    reference: Reference,
    received_at: datetime,
    chunk: int = COPY_CHUNK,
) -> list[CopyChunk]:
    """The COPY text of every message, as judged by `judge`, `chunk` messages per
    transaction. Only the text is kept, so a large topic can stream through."""
    received = received_at.isoformat()
    chunks = []
    tables: tuple[list[str], list[str], list[str]] = ([], [], [])
    held = 0
    for message in messages:
        table, line = copy_row(message, judge(message), reference, received)
        tables[table].append(line)
        held += 1
        if held == chunk:
            chunks.append(CopyChunk(*("".join(lines) for lines in tables)))
            tables, held = ([], [], []), 0
    if held:
        chunks.append(CopyChunk(*("".join(lines) for lines in tables)))
    return chunks


def database_ceiling(database: DatabaseSettings, chunks: Iterable[CopyChunk]) -> float:
    """Seconds to COPY every chunk, one transaction each, into the schema with all its
    constraints and indexes."""
    conn = connect(database, application_name="lmnh-bench-copy")
    try:
        started = time.monotonic()
        for chunk in chunks:
            with conn, conn.cursor() as cur:
                for statement, text in (
                    (_COPY_RATINGS, chunk.ratings),
                    (_COPY_REQUESTS, chunk.requests),
                    (_COPY_REJECTED, chunk.rejected),
                ):
                    if text:
                        cur.copy_expert(statement, io.StringIO(text))
        return time.monotonic() - started
    finally:
        conn.close()


def pipeline_consumer_config(kafka: KafkaSettings, group: str) -> dict[str, object]:
    """The consumer settings kafka_pipeline.py uses (lmnh/kafka_source.py), on a fresh group
    that starts at the oldest message."""
    return {
        **client_config(kafka),
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 3000,
        "queued.max.messages.kbytes": 16384,
        "queued.min.messages": 10000,
    }


def kafka_ceiling(kafka: KafkaSettings, topic: str, group: str, count: int) -> Timing:
    """Consume `count` messages and do nothing with them. Timed like the pipeline's own rate:
    from the first batch's arrival to the last message."""
    consumer = Consumer(pipeline_consumer_config(kafka, group))
    consumer.subscribe([topic])
    received = 0
    first: float | None = None
    deadline = time.monotonic() + 600
    try:
        while received < count:
            if time.monotonic() > deadline:
                raise BenchError(f"Kafka ceiling: {received} of {count} messages in 600 s")
            messages = consumer.consume(min(10000, count - received), 1.0)
            if messages and first is None:
                first = time.monotonic()
            for message in messages:
                if message.error() is not None:
                    raise BenchError(f"Kafka ceiling: {message.error()}")
            received += len(messages)
        last = time.monotonic()
    finally:
        consumer.close()
    return Timing(received, last - (first or last))
