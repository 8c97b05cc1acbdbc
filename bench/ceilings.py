"""The two ceilings no loader can beat on this machine: PostgreSQL taking the very rows the
pipeline stores by COPY alone, and Kafka handing over the messages to a consumer that does
nothing with them."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from confluent_kafka import Consumer
from psycopg2.extensions import connection as Connection

from bench.local import BenchError
from lmnh.config import DatabaseSettings, KafkaSettings
from lmnh.database import connect
from lmnh.events import KafkaMessage, Outcome
from lmnh.kafka_admin import client_config
from lmnh.museum import Reference
from lmnh.store import COPY_STATEMENTS, copy_row

COPY_CHUNK = 100_000  # messages per transaction of the database ceiling


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


def database_ceiling(
    database: DatabaseSettings, chunks: Sequence[CopyChunk], connections: int = 1
) -> float:
    """Seconds to COPY every chunk, one transaction each, into the schema with all its
    constraints, indexes and triggers, over `connections` connections at once (chunk i on
    connection i mod `connections`): the ceiling for a loader writing over as many."""
    conns = [connect(database, application_name="lmnh-bench-copy") for _ in range(connections)]
    errors: list[BaseException] = []

    def copy(conn: Connection, mine: Sequence[CopyChunk]) -> None:
        try:
            for chunk in mine:
                with conn, conn.cursor() as cur:
                    texts = (chunk.ratings, chunk.requests, chunk.rejected)
                    for statement, text in zip(COPY_STATEMENTS, texts, strict=True):
                        if text:
                            cur.copy_expert(statement, io.StringIO(text))
        except BaseException as error:  # reported by the waiting thread
            errors.append(error)

    threads = [
        threading.Thread(target=copy, args=(conn, chunks[i::connections]), daemon=True)
        for i, conn in enumerate(conns)
    ]
    try:
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - started
    finally:
        for conn in conns:
            conn.close()
    if errors:
        raise BenchError(f"database ceiling: {errors[0]}")
    return seconds


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
