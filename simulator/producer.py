"""The producing side of Kafka: a message counts as sent only once the broker has acked it.

Each message travels with a label of the caller's choosing that comes back in its delivery
report, so whatever the caller tallies from `on_ack` is exactly what the broker acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any, Generic, TypeVar

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from lmnh.config import KafkaSettings
from lmnh.errors import ExitCode, FatalError
from lmnh.kafka_admin import client_config

log = logging.getLogger(__name__)
# librdkafka's own lines (every failed reconnect, for one) go here, for the application to
# show or not; what matters reaches callers as delivery failures and errors.
client_log = logging.getLogger(f"{__name__}.librdkafka")

Label = TypeVar("Label")

# Throughput over latency: up to 20 ms to fill batches of up to 1 MB, compressed, with room
# for a million queued messages. Every message is still acked by all in-sync replicas and
# written once, in order per partition (idempotence).
THROUGHPUT_SETTINGS: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 20,
    "batch.size": 1_000_000,
    "batch.num.messages": 10_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 1_000_000,
    # A dead broker fails messages within a minute instead of librdkafka's five.
    "delivery.timeout.ms": 60_000,
}
_FULL_QUEUE_WAIT_S = 0.1
_PURGE_REPORTS_WAIT_S = 5.0
_AUTH_ERRORS = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
_NO_TOPIC_ERRORS = {KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART}


class AckedProducer(Generic[Label]):
    """Produces keyless messages to one topic; `on_ack(label)` runs once per acked message,
    and `failed` counts the messages that will never be acked."""

    def __init__(self, kafka: KafkaSettings, topic: str, on_ack: Callable[[Label], None]) -> None:
        self.topic = topic
        self.failed = 0
        self.first_failure: str | None = None
        self._on_ack = on_ack
        self._fatal: FatalError | None = None
        settings = {**client_config(kafka), **THROUGHPUT_SETTINGS, "logger": client_log}
        try:
            self._producer = Producer({**settings, "error_cb": self._on_error})
        except KafkaException as error:
            raise FatalError(
                f"invalid Kafka producer settings: {error.args[0].str()}", ExitCode.CONFIG
            ) from None

    def connect(self, timeout_s: float) -> None:
        """Reach the topic's leader and learn its partitions now, not with the first message:
        a live feed's first messages are then sent when they are stamped."""
        try:
            self._producer.list_topics(self.topic, timeout=timeout_s)
        except KafkaException as error:
            raise _produce_error(self.topic, error.args[0]) from None

    def send(self, value: bytes, label: Label) -> None:
        """Queue one message, waiting (and serving delivery reports) while the queue is full."""
        report = partial(self._delivered, label)
        while True:
            try:
                self._producer.produce(self.topic, value, on_delivery=report)
                break
            except BufferError:
                self._producer.poll(_FULL_QUEUE_WAIT_S)
            except KafkaException as error:
                raise _produce_error(self.topic, error.args[0]) from None
        self._producer.poll(0)
        self._raise_if_fatal()

    def poll(self, timeout_s: float) -> None:
        """Serve delivery reports for up to `timeout_s`."""
        self._producer.poll(timeout_s)
        self._raise_if_fatal()

    def finish(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for every delivery report, then give up on the rest: each
        message sent ends acked or failed. A message purged in flight may still have been
        written, but only an ack counts."""
        if self._producer.flush(timeout_s) > 0:
            self._producer.purge()
            self._producer.flush(_PURGE_REPORTS_WAIT_S)

    def _delivered(self, label: Label, error: KafkaError | None, _message: Message) -> None:
        if error is None:
            self._on_ack(label)
            return
        self.failed += 1
        if self.first_failure is None:
            self.first_failure = error.str()
            log.warning("delivery to %s failed: %s", self.topic, error.str())

    def _on_error(self, error: KafkaError) -> None:
        if error.code() in _AUTH_ERRORS:
            self._fatal = FatalError(
                f"Kafka authentication failed ({error.str()}): check SASL_MECHANISM,"
                " SASL_USERNAME and SASL_PASSWORD",
                ExitCode.AUTHENTICATION,
            )
        elif error.fatal():
            self._fatal = FatalError(f"Kafka producer failed: {error.str()}", ExitCode.UNEXPECTED)
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("Kafka brokers unreachable (%s); retrying", error.str())
        else:
            log.debug("Kafka: %s", error.str())

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise self._fatal


def _produce_error(topic: str, error: KafkaError) -> FatalError:
    if error.code() in _NO_TOPIC_ERRORS:
        return FatalError(f"topic {topic!r} is gone: {error.str()}", ExitCode.TOPIC_MISSING)
    return FatalError(f"cannot produce to {topic!r}: {error.str()}", ExitCode.UNEXPECTED)
