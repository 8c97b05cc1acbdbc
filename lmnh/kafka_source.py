"""The consumer side of Kafka: bounded batches in, offsets committed only when told.

The pipeline decides where each partition starts (the database knows how far it has loaded)
and when offsets are committed (after the database commit); this module does the client work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from lmnh.config import KafkaSettings
from lmnh.errors import ExitCode, FatalError, TransientError
from lmnh.events import KafkaMessage
from lmnh.health import GroupState
from lmnh.kafka_admin import (
    TopicIdentity,
    admin_client,
    client_config,
    topic_id,
    wait_until_ready,
)

log = logging.getLogger(__name__)

# The longest wait of one consume() call, so that a stop is seen within it. confluent-kafka
# >= 2.13 waits in slices of 200 ms and returns at the end of the first that yields anything,
# or once it has all it was asked for.
_CONSUME_SLICE_S = 0.2
# While a batch waits for the writer, how often it checks that the writer is free.
_READY_CHECK_S = 0.002
_CLOSE_TIMEOUT_S = 10.0
_REQUEST_TIMEOUT_S = 5.0  # the partitions' end offsets
# Longest a fetched batch waits in one call for the topic's identity to be confirmed; then it
# is kept for the next call, so that the loop goes on seeing its stop flag and its writer.
_CONFIRM_WAIT_S = 0.5
_POSITION_RETRY_S = 2.0  # how often partitions waiting for the database ask it again
_ASSIGN_WAIT_S = 1.0  # longest a rebalance callback waits for the database's offsets
_LAG_EVERY_S = 1.0  # how often the consumer lag is worked out from the client's cache
_LAG_QUERY_EVERY_S = 5.0  # how often, while held, it is asked of the broker instead
_LAG_QUERY_S = 2.0  # longest such a question may take in all
_AUTH_ERRORS = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
_GONE_ERRORS = {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC}

# (topic, its id, partitions, longest wait in seconds or None) -> the next offset to read, for
# the partitions whose progress the database knows. One attempt: raises TransientError while
# the database is unavailable or does not answer in time.
StartOffsets = Callable[[str, str, list[int], float | None], Mapping[int, int]]


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
        # Where a partition the database has never loaded starts, whatever Kafka holds for the
        # group: the database, not the group's commits, says what is loaded.
        self._first_offset = OFFSET_BEGINNING if from_beginning else OFFSET_END
        self._start_offsets = start_offsets
        self._before_revoke = before_revoke
        self._fatal: FatalError | None = None
        self._revoked: set[int] = set()
        # Assigned but paused until the database says where they resume.
        self._unpositioned: set[int] = set()
        self._position_retry_at = 0.0
        self.topic_id = ""  # Kafka's id of the topic, known after check()
        self._identity: TopicIdentity | None = None  # asks the broker for it, from check()
        self._unconfirmed_since: float | None = None  # a fetched batch waits for it since
        self._carry: list[KafkaMessage] = []  # fetched while holding, not yet in a batch
        self.rebalanced_at: float | None = None  # monotonic time of the last assign or revoke
        self._lock = threading.Lock()
        # For group_state(), read from the metrics server's thread; only this one calls the
        # client, which serves one call at a time (a scrape would wait behind consume()).
        self._member = False  # holds an assignment from the group (possibly empty)
        self._left_at: float | None = None
        self._assigned: tuple[int, ...] = ()
        self._next_to_load: dict[int, int] = {}  # by the database: at assignment, then commits
        # Where this assignment started each partition: the database's offset, else the first
        # message fetched. A rewind goes back there when the database has no row any more.
        self._started_at: dict[int, int] = {}
        self._lag: dict[int, int] = {}  # replaced whole, never changed in place
        # Each partition's high watermark when the lag was last worked out; read by the
        # writer thread, so it too is replaced whole.
        self.high_watermarks: dict[int, int] = {}
        self._behind_since: float | None = None  # lag or unpositioned partitions since then
        self._lag_due = 0.0
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
                "on_commit": self._on_commit,
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
        try:
            self.topic_id = topic_id(admin_client(self._kafka), self.topic, timeout_s)
        except TransientError as error:  # at start, not an outage to wait out: say it is Kafka
            raise FatalError(str(error), ExitCode.BROKER_UNREACHABLE) from None
        self._identity = TopicIdentity(self._kafka, self.topic, self.topic_id)

    def subscribe(self) -> None:
        self._consumer.subscribe(
            [self.topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def next_batch(
        self,
        max_messages: int,
        max_wait_s: float,
        stop: threading.Event,
        ready: Callable[[], bool],
    ) -> list[KafkaMessage]:
        """Up to `max_messages` messages, returned when full, when `stop` is set, or once the
        first has waited `max_wait_s` and `ready()` says the caller can store a batch now.

        With `max_wait_s` 0 this is group commit: a batch goes as soon as the writer is free
        (a quiet feed is stored at once), and grows while it is busy (a busy one still fills
        large batches).

        Messages are returned only once the broker, asked after they were fetched, has
        confirmed that the topic is the one this run started on (`TopicIdentity`, which asks
        on a connection of its own, replaced when silent): one recreated meanwhile could
        otherwise pass as the old one with its first offsets skipped. Until then they are kept
        for the next call.
        """
        identity = self._identity
        if identity is None:
            raise RuntimeError("KafkaSource.check() must be called before next_batch()")
        identity.raise_if_changed()
        self._position()
        batch, self._carry = self._carry[:max_messages], self._carry[max_messages:]
        due = time.monotonic() + max_wait_s if batch else None  # when the batch may go
        while len(batch) < max_messages and not stop.is_set():
            # The first message is asked for alone, so that it is taken the moment it
            # arrives rather than at the end of the slice it arrived in.
            wanted = max_messages - len(batch)
            if due is None:
                wanted, wait = 1, _CONSUME_SLICE_S
            elif (left := due - time.monotonic()) > 0:
                wait = min(left, _CONSUME_SLICE_S)
            elif ready():
                wait = 0.0  # take what is already here, then go
            else:
                wait = _READY_CHECK_S
            polled = self._consumer.consume(wanted, wait)
            batch = self._keep(batch, polled)
            # Also while a batch waits here for a writer that is held up (a locked table).
            if time.monotonic() >= self._lag_due:
                self._measure_lag(fresh=False)
            if wait == 0.0:
                break
            if due is None:
                if batch:
                    due = time.monotonic() + max_wait_s
                elif not polled:
                    break  # an idle slice: let the caller look at the clock and the stop flag
        if batch and not self._confirmed(identity, len(batch)):
            self._carry = batch + self._carry
            return []
        return batch

    def _confirmed(self, identity: TopicIdentity, size: int) -> bool:
        """Whether messages fetched until now are the run's topic's, waiting a little for the
        broker to say; a wait that lasts is logged when it starts and when it ends."""
        fetched_at = time.monotonic()
        if identity.confirmed(fetched_at, _CONFIRM_WAIT_S):
            if self._unconfirmed_since is not None:
                log.info(
                    "topic %r confirmed after %.1f s; its fetched messages go on",
                    self.topic,
                    fetched_at - self._unconfirmed_since,
                )
                self._unconfirmed_since = None
            return True
        if self._unconfirmed_since is None:
            self._unconfirmed_since = fetched_at
            log.warning(
                "%d fetched messages wait for Kafka to confirm which topic %r is",
                size,
                self.topic,
            )
        return False

    def hold(self) -> None:
        """Stay in the group without taking more messages, while the database is slow or away.

        Pausing the assignment stops fetching; consuming then serves heartbeats, rebalance
        callbacks and the poll deadline (`max.poll.interval.ms`), which would otherwise expel
        us. Anything still returned is kept for the next batch.
        """
        self._consumer.pause(self._consumer.assignment())
        self._carry = self._keep(self._carry, self._consumer.consume(100, 0))
        if time.monotonic() >= self._lag_due:
            self._measure_lag(fresh=True)

    def release(self) -> None:
        """Fetch again after `hold`, from where the application stopped reading."""
        self._consumer.resume(
            [tp for tp in self._consumer.assignment() if tp.partition not in self._unpositioned]
        )

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
        self._next_to_load.update((tp.partition, tp.offset) for tp in offsets)
        try:
            # Asynchronous: the loop never waits on the group coordinator's connection, which
            # may be silent while the fetches' is not. The result is logged by _on_commit;
            # close() waits for commits in flight.
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as error:
            self._on_commit(error.args[0], offsets)

    def _on_commit(self, error: KafkaError | None, offsets: list[TopicPartition]) -> None:
        """A commit's outcome, from the client's thread of calls: only failures are said."""
        cause = error or next((tp.error for tp in offsets if tp.error is not None), None)
        if cause is not None:
            log.warning(
                "Kafka offset commit failed (%s); the database keeps the position", cause.str()
            )

    def close(self) -> None:
        """Leave the group; bounded, because close() can hang when the broker is unhealthy."""
        if self._identity is not None:
            self._identity.close()
        closer = threading.Thread(target=self._consumer.close, daemon=True)
        closer.start()
        closer.join(_CLOSE_TIMEOUT_S)
        if closer.is_alive():
            log.warning("Kafka consumer did not close within %.0f s", _CLOSE_TIMEOUT_S)

    def group_state(self) -> GroupState:
        """Membership and consumer lag, for /health and the metrics: safe from any thread, as
        it only reads what this one last recorded (the lag at most a few seconds old)."""
        return GroupState(
            self._member,
            self._left_at,
            self._assigned,
            tuple(sorted(self._unpositioned)),
            self._lag,
            self._behind_since,
        )

    def _measure_lag(self, *, fresh: bool) -> None:
        """Each assigned partition's high watermark minus its next offset to load (the
        consumer's position for one the database has not loaded yet), where both are known.

        The watermarks come from the client's cache, which each fetch refreshes: no broker
        round trip. Held partitions fetch nothing, so then (`fresh`) they are asked of the
        broker, lest a stuck pipeline show a lag that never grows.
        """
        now = time.monotonic()
        self._lag_due = now + (_LAG_QUERY_EVERY_S if fresh else _LAG_EVERY_S)
        deadline = now + _LAG_QUERY_S
        lag = {}
        highs = dict(self.high_watermarks)
        for partition in self._assigned:
            tp = TopicPartition(self.topic, partition)
            try:
                if fresh and (left := deadline - time.monotonic()) > 0:
                    _, high = self._consumer.get_watermark_offsets(tp, timeout=left)
                else:
                    _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                loaded = self._next_to_load.get(partition)
                if loaded is None:
                    [tp] = self._consumer.position([tp])
                    loaded = tp.offset
            except KafkaException:
                continue
            if high >= 0:
                highs[partition] = high
                if loaded >= 0:
                    lag[partition] = high - loaded
        self._lag = lag
        self.high_watermarks = highs
        behind = self._unpositioned or any(n > 0 for n in lag.values())
        self._behind_since = (self._behind_since or now) if behind else None

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
            kafka_message = KafkaMessage(
                self.topic,
                message.partition() or 0,  # always set on a consumed message
                message.offset() or 0,
                message.value(),
                _timestamp_ms(message.timestamp()),
            )
            self._started_at.setdefault(kafka_message.partition, kafka_message.offset)
            kept.append(kafka_message)
        return kept

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Take the partitions where the database says each resumes. A rebalance callback
        must not wait long (the group waits with it), so the database gets a second to say;
        if it cannot, the partitions are taken paused and placed from the loop once it can
        (a seek costs a second before the first message, so only then)."""
        numbers = [tp.partition for tp in partitions]
        self.rebalanced_at = time.monotonic()
        self._member, self._assigned = True, tuple(sorted(numbers))
        try:
            known = self._start_offsets(self.topic, self.topic_id, numbers, _ASSIGN_WAIT_S)
            for partition, offset in known.items():
                self._require_below_end(partition, offset)
        except (TransientError, KafkaException) as error:
            consumer.assign(partitions)
            consumer.pause(partitions)
            self._unpositioned.update(numbers)
            self._position_retry_at = 0.0
            log.warning(
                "assigned %s, paused: no start offsets yet (%s)",
                _describe(self.topic, numbers, {}),
                error,
            )
            return
        for tp in partitions:
            tp.offset = known.get(tp.partition, self._first_offset)
        consumer.assign(partitions)
        self._next_to_load.update(known)
        self._started_at.update(known)
        log.info("assigned %s", _describe(self.topic, numbers, known))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._before_revoke()
        revoked = {tp.partition for tp in partitions}
        with self._lock:
            self._revoked.update(revoked)
        self._unpositioned -= revoked
        self.rebalanced_at = self._left_at = time.monotonic()
        self._member = False
        self._assigned = tuple(p for p in self._assigned if p not in revoked)
        for partition in revoked:
            self._next_to_load.pop(partition, None)
            self._started_at.pop(partition, None)
        self._lag = {p: n for p, n in self._lag.items() if p not in revoked}
        log.info("revoked %s", ", ".join(f"{self.topic}[{tp.partition}]" for tp in partitions))

    def _position(self) -> None:
        """Start the partitions assigned since the last batch at the database's offsets and
        resume them. While the database cannot say, they stay paused and it is asked again
        every few seconds; the rest of the assignment goes on."""
        if not self._unpositioned or time.monotonic() < self._position_retry_at:
            return
        partitions = sorted(self._unpositioned)
        try:
            known = self._start_offsets(self.topic, self.topic_id, partitions, None)
            for partition, offset in known.items():
                self._require_below_end(partition, offset)
            for partition in partitions:
                if partition in known:
                    start = known[partition]
                elif partition in self._started_at:  # a rewind: where this assignment began
                    continue
                else:
                    start = self._first_offset
                self._consumer.seek(TopicPartition(self.topic, partition, start))
        except (TransientError, KafkaException) as error:
            self._position_retry_at = time.monotonic() + _POSITION_RETRY_S
            log.warning(
                "%s wait for their start offsets (%s); asking again in %.0f s",
                ", ".join(f"{self.topic}[{p}]" for p in partitions),
                error,
                _POSITION_RETRY_S,
            )
            return
        self._consumer.resume([TopicPartition(self.topic, p) for p in partitions])
        self._unpositioned.clear()
        self._next_to_load.update(known)
        for partition, offset in known.items():
            self._started_at.setdefault(partition, offset)
        log.info("resuming %s", _describe(self.topic, partitions, known))

    def rewind(self) -> None:
        """Start every assigned partition again from where the database says it is loaded,
        dropping what was fetched past it: the database lost transactions it had acknowledged
        (a failover to a standby that had not received them). A partition it has no row for
        any more starts again where this assignment started it."""
        self._carry = []
        assigned = [TopicPartition(self.topic, p) for p in self._assigned]
        self._consumer.pause(assigned)
        for tp in assigned:
            if tp.partition in self._started_at:
                tp.offset = self._started_at[tp.partition]
                try:
                    self._consumer.seek(tp)
                except KafkaException as error:  # placed by the database's offsets instead
                    log.warning("could not rewind %s[%d]: %s", self.topic, tp.partition, error)
        self._unpositioned.update(self._assigned)
        self._position_retry_at = 0.0

    def _require_below_end(self, partition: int, offset: int) -> None:
        """Offsets recorded before topic ids were: a stored offset past the partition's end
        means the topic was recreated."""
        tp = TopicPartition(self.topic, partition)
        _, high = self._consumer.get_watermark_offsets(tp, timeout=_REQUEST_TIMEOUT_S)
        if offset > high:
            raise FatalError(
                f"{self.topic}[{partition}] ends at offset {high} but offset {offset} was"
                " already loaded: the topic was recreated. Reset the database"
                " (`python -m stack schema --reset`) or use a new topic",
                ExitCode.TOPIC_MISSING,
            )

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


def _describe(topic: str, partitions: list[int], known: Mapping[int, int]) -> str:
    described = (
        f"{topic}[{p}]@{known[p]} (database)" if p in known else f"{topic}[{p}]" for p in partitions
    )
    return ", ".join(described) or "nothing"
