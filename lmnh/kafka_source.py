"""The consumer side of Kafka: bounded batches in, offsets committed only when told.

The pipeline decides where each partition starts (the database knows how far it has loaded)
and when offsets are committed (after the database commit); this module does the client work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from lmnh.config import KafkaSettings
from lmnh.errors import ExitCode, FatalError
from lmnh.events import KafkaMessage
from lmnh.kafka_admin import client_config, wait_until_ready

log = logging.getLogger(__name__)

# The slice of one consume() call: confluent-kafka >= 2.13 returns as soon as a 200 ms slice
# yields anything, so batches are accumulated here until full or out of time.
_CONSUME_SLICE_S = 0.2
_CLOSE_TIMEOUT_S = 10.0
_AUTH_ERRORS = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
_GONE_ERRORS = {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC}

# partition -> next offset to read, for the partitions whose progress is known.
StartOffsets = Callable[[str, list[int]], Mapping[int, int]]


class KafkaSource:
    """A consumer-group member reading one topic in bounded batches."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        group_id: str,
        *,
        from_beginning: bool,
        start_offsets: StartOffsets,
        before_revoke: Callable[[], None],
        queue_kbytes: int = 16384,
    ) -> None:
        self.topic = topic
        self._kafka = kafka
        self._start_offsets = start_offsets
        self._before_revoke = before_revoke
        self._fatal: FatalError | None = None
        self._revoked: set[int] = set()
        self._carry: list[KafkaMessage] = []  # fetched while holding, not yet in a batch
        self.rebalanced_at: float | None = None  # monotonic time of the last assign or revoke
        self._lock = threading.Lock()
        self._consumer = Consumer(
            {
                **client_config(kafka),
                "group.id": group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest" if from_beginning else "latest",
                "enable.partition.eof": False,
                # A crashed member holds its partitions until its session expires: 10 s, not 45.
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": 3000,
                "max.poll.interval.ms": kafka.max_poll_interval_ms,
                # Bounds librdkafka's prefetch queue, and so the process's memory.
                "queued.max.messages.kbytes": queue_kbytes,
                "queued.min.messages": 10000,
                "error_cb": self._on_error,
                "logger": log,  # librdkafka's own lines, through logging rather than raw stderr
            }
        )

    def check(self, timeout_s: float = 15.0) -> None:
        """Fail fast when the broker cannot be reached, refuses us, or lacks the topic."""
        wait_until_ready(self._kafka, timeout_s)
        try:
            metadata = self._consumer.list_topics(self.topic, timeout=timeout_s)
        except KafkaException as error:
            raise FatalError(
                f"Kafka broker unreachable at {self._kafka.bootstrap_servers}"
                f" ({error.args[0].str()})",
                ExitCode.BROKER_UNREACHABLE,
            ) from None
        topic = metadata.topics.get(self.topic)
        if topic is None or topic.error is not None:
            raise FatalError(
                f"topic {self.topic!r} does not exist on {self._kafka.bootstrap_servers}:"
                " create it (the local stack's `python -m stack up` creates lmnh)",
                ExitCode.TOPIC_MISSING,
            )

    def subscribe(self) -> None:
        self._consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def next_batch(
        self, max_messages: int, max_wait_s: float, stop: threading.Event
    ) -> list[KafkaMessage]:
        """Up to `max_messages` messages, returned when full, when `max_wait_s` has passed
        since the first one arrived, or when `stop` is set."""
        batch, self._carry = self._carry[:max_messages], self._carry[max_messages:]
        deadline = time.monotonic() + max_wait_s if batch else None
        while len(batch) < max_messages and not stop.is_set():
            remaining = _CONSUME_SLICE_S if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                break
            polled = self._consumer.consume(
                max_messages - len(batch), min(remaining, _CONSUME_SLICE_S)
            )
            batch = self._keep(batch, polled)
            if deadline is None:
                if batch:
                    deadline = time.monotonic() + max_wait_s
                elif not polled:
                    break  # an idle slice: let the caller look at the clock and the stop flag
        return batch

    def hold(self) -> None:
        """Stay in the group without taking more messages, while the database is slow or away.

        Pausing the assignment stops fetching; consuming then serves heartbeats, rebalance
        callbacks and the poll deadline (`max.poll.interval.ms`), which would otherwise expel
        us. Anything still returned is kept for the next batch.
        """
        self._consumer.pause(self._consumer.assignment())
        self._carry = self._keep(self._carry, self._consumer.consume(100, 0))

    def release(self) -> None:
        """Fetch again after `hold`, from where the application stopped reading."""
        self._consumer.resume(self._consumer.assignment())

    def commit(self, messages: Iterable[KafkaMessage]) -> None:
        """Commit, after the database has, the offset following each partition's last message.

        A failure here loses nothing: the database holds the true position and the next
        owner of the partition starts from it.
        """
        highest: dict[int, int] = {}
        for message in messages:
            highest[message.partition] = max(highest.get(message.partition, -1), message.offset)
        if not highest:
            return
        offsets = [TopicPartition(self.topic, p, o + 1) for p, o in highest.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            log.warning(
                "Kafka offset commit failed (%s); the database keeps the position",
                error.args[0].str(),
            )

    def close(self) -> None:
        """Leave the group; bounded, because close() can hang when the broker is unhealthy."""
        closer = threading.Thread(target=self._consumer.close, daemon=True)
        closer.start()
        closer.join(_CLOSE_TIMEOUT_S)
        if closer.is_alive():
            log.warning("Kafka consumer did not close within %.0f s", _CLOSE_TIMEOUT_S)

    def _keep(self, kept: list[KafkaMessage], polled: list[Message]) -> list[KafkaMessage]:
        """Add polled messages to `kept`, dropping those of partitions revoked meanwhile
        (their new owner reads them)."""
        self._raise_if_fatal()
        with self._lock:
            if self._revoked:
                kept = [m for m in kept if m.partition not in self._revoked]
                self._revoked.clear()
        for message in polled:
            error = message.error()
            if error is not None:
                self._message_error(error)
                continue
            kept.append(
                KafkaMessage(
                    self.topic,
                    message.partition() or 0,  # always set on a consumed message
                    message.offset() or 0,
                    message.value(),
                    _timestamp_ms(message.timestamp()),
                )
            )
        return kept

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        known = self._start_offsets(self.topic, [tp.partition for tp in partitions])
        for tp in partitions:
            if tp.partition not in known:
                continue
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            if known[tp.partition] > high:
                # The topic restarted below what was loaded: it was deleted and recreated.
                self._fatal = FatalError(
                    f"{self.topic}[{tp.partition}] ends at offset {high} but offset"
                    f" {known[tp.partition]} was already loaded: the topic was recreated."
                    " Reset the database (`python -m stack schema --reset`) or use a new topic",
                    ExitCode.TOPIC_MISSING,
                )
                known = {}
                break
        for tp in partitions:
            tp.offset = known.get(tp.partition, tp.offset)
        log.info("assigned %s", _describe(partitions, known))
        consumer.assign(partitions)
        self.rebalanced_at = time.monotonic()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._before_revoke()
        with self._lock:
            self._revoked.update(tp.partition for tp in partitions)
        self.rebalanced_at = time.monotonic()
        log.info("revoked %s", ", ".join(f"{self.topic}[{tp.partition}]" for tp in partitions))

    def _on_error(self, error: KafkaError) -> None:
        if error.code() in _AUTH_ERRORS:
            self._fatal = FatalError(
                f"Kafka authentication failed at {self._kafka.bootstrap_servers}"
                f" ({error.str()}): check SASL_MECHANISM, SASL_USERNAME and SASL_PASSWORD",
                ExitCode.AUTHENTICATION,
            )
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("Kafka brokers unreachable (%s); retrying", error.str())
        elif error.fatal():
            self._fatal = FatalError(f"Kafka client failed: {error.str()}", ExitCode.UNEXPECTED)
        else:
            log.debug("Kafka client: %s", error.str())

    def _message_error(self, error: KafkaError) -> None:
        if error.code() in _GONE_ERRORS:
            raise FatalError(f"topic {self.topic!r} is gone: {error.str()}", ExitCode.TOPIC_MISSING)
        log.warning("Kafka: %s", error.str())

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal


def _timestamp_ms(timestamp: tuple[int, int]) -> int | None:
    kind, milliseconds = timestamp
    return milliseconds if kind != 0 and milliseconds >= 0 else None  # 0: TIMESTAMP_NOT_AVAILABLE


def _describe(partitions: list[TopicPartition], known: Mapping[int, int]) -> str:
    parts = []
    for tp in partitions:
        start = f"@{known[tp.partition]} (database)" if tp.partition in known else ""
        parts.append(f"{tp.topic}[{tp.partition}]{start}")
    return ", ".join(parts) or "nothing"
