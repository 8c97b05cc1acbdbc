"""The loop: batch -> validate -> store -> commit offsets, until the limit, idleness or a stop.

Offsets are committed to Kafka only after the database transaction holding the batch has
committed, and the database itself records each partition's next offset, so a crash at any
point loses nothing and doubles nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypeVar

from lmnh.database import is_transient
from lmnh.events import KafkaMessage, Outcome, Reason, Rejection
from lmnh.reference import Reference
from lmnh.store import Store, WriteResult
from lmnh.validation import validate

log = logging.getLogger(__name__)

# Codes that may only mean "the reference data has grown since we loaded it".
_UNKNOWN_KEY_CODES = {Reason.INVALID_SITE, Reason.INVALID_VAL, Reason.INVALID_TYPE}
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 30.0
_HOLD_CHECK_S = 1.0  # how often a wait for the writer also serves the consumer group
T = TypeVar("T")


class Stopped(Exception):
    """A stop was requested while waiting for the database."""


class MessageSource(Protocol):
    # When the group last gave or took partitions; None until it first has.
    rebalanced_at: float | None

    def next_batch(
        self, max_messages: int, max_wait_s: float, stop: threading.Event
    ) -> list[KafkaMessage]: ...
    def commit(self, messages: Sequence[KafkaMessage]) -> None: ...
    def hold(self) -> None: ...
    def release(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RunOptions:
    limit: int | None  # stop after this many messages; None: no limit
    batch_size: int = 10_000
    batch_timeout_s: float = 0.5
    idle_timeout_s: float | None = 10.0  # stop when nothing arrives for this long; None: never
    progress_interval_s: float = 10.0
    reference_refresh_s: float = 5.0  # at most one reload of the reference data this often


@dataclass(slots=True)
class RunStats:
    consumed: int = 0
    ratings: int = 0
    requests: int = 0
    already_stored: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    # From the first batch's arrival to the last one's commit: the rate excludes idle waiting.
    first_batch_at: float | None = None
    last_commit_at: float | None = None

    def add(self, result: WriteResult, consumed: int, arrived_at: float) -> None:
        self.consumed += consumed
        self.ratings += result.ratings
        self.requests += result.requests
        self.already_stored += result.already_stored
        self.rejected.update(result.rejected)
        if self.first_batch_at is None:
            self.first_batch_at = arrived_at
        self.last_commit_at = time.monotonic()

    def summary(self) -> str:
        seconds = time.monotonic() - self.started
        busy = (self.last_commit_at or 0.0) - (self.first_batch_at or 0.0)
        rate = self.consumed / busy if busy > 0 else 0.0
        rejected = ", ".join(f"{code} {n}" for code, n in self.rejected.most_common() if n)
        replayed = f", already stored {self.already_stored}" if self.already_stored else ""
        return (
            f"consumed {self.consumed}, stored {self.ratings + self.requests}"
            f" (ratings {self.ratings}, requests {self.requests}),"
            f" rejected {sum(self.rejected.values())}{' (' + rejected + ')' if rejected else ''}"
            f"{replayed}, {seconds:.1f} s, {rate:.0f} msg/s while loading"
        )


@dataclass(frozen=True, slots=True)
class _Write:
    """A batch handed to the writer thread, and what to do once it is stored."""

    result: Future[WriteResult]
    messages: list[KafkaMessage]
    outcomes: list[Outcome]
    arrived_at: float

    @property
    def size(self) -> int:
        return len(self.messages)


class Pipeline:
    """Moves kiosk messages from a source into the store, one transaction per batch."""

    def __init__(
        self,
        store: Store,
        options: RunOptions,
        on_rejected: Callable[[list[tuple[KafkaMessage, Rejection]]], None],
        stop: threading.Event,
    ) -> None:
        self._stop = stop
        self._store = store
        self._options = options
        self._on_rejected = on_rejected
        self._reference: Reference | None = None
        self._reference_loaded = 0.0
        self._in_flight: _Write | None = None
        self._source: MessageSource
        self._stats = RunStats()

    def start_offsets(self, topic: str, partitions: list[int]) -> Mapping[int, int]:
        """Where each partition resumes: the database's record of how far it has loaded."""
        return self._retry(lambda: self._store.stored_offsets(topic, partitions))

    def run(self, source: MessageSource) -> RunStats:
        """Load until the limit, idleness or a stop; a stop finishes the batch in hand."""
        self._source = source
        self._stats = RunStats()
        try:
            self._loop(source)
        except Stopped:
            log.warning(
                "stopped while the database was unavailable: the batch in hand was"
                " not stored and its offsets not committed"
            )
        return self._stats

    def drain(self) -> None:
        """Store and commit the batch in flight now. Called before partitions are taken away,
        so that their next owner starts after it instead of reading it again."""
        if self._in_flight is not None:
            write, self._in_flight = self._in_flight, None
            self._finish(write, may_hold=False)  # inside a rebalance callback: no polling

    def _loop(self, source: MessageSource) -> None:
        """Fetch and validate batch N+1 while a writer thread stores batch N.

        Kafka offsets of a batch are committed only once its transaction has committed, and
        every consumer call stays on this thread (rebalance callbacks run inside them).
        """
        options = self._options
        stats = self._stats
        # Idleness counts from the last message or the last stored batch: a wait for a slow
        # database is not idleness.
        last_activity = last_progress = time.monotonic()
        with ThreadPoolExecutor(1, thread_name_prefix="lmnh-writer") as writer:
            try:
                while not self._stop.is_set():
                    wanted = options.batch_size
                    if options.limit is not None:
                        held = self._in_flight.size if self._in_flight else 0
                        wanted = min(wanted, options.limit - stats.consumed - held)
                        if wanted <= 0:
                            break
                    messages = source.next_batch(wanted, options.batch_timeout_s, self._stop)
                    now = time.monotonic()
                    # A stop during the fetch still stores what was fetched: never half a batch.
                    if messages:
                        last_activity = now
                        outcomes = self._validate(messages, datetime.now(UTC))
                    if self._in_flight is not None:
                        write, self._in_flight = self._in_flight, None
                        self._finish(write)
                        last_activity = max(last_activity, time.monotonic())
                    if messages:
                        self._in_flight = self._submit(writer, messages, outcomes, now)
                    elif self._idle(source, last_activity, now):
                        log.info("no message for %.0f s: caught up", options.idle_timeout_s)
                        break
                    if now - last_progress >= options.progress_interval_s:
                        last_progress = now
                        log.info("progress: %s", stats.summary())
            finally:
                self.drain()  # finish it even on a stop or an error: it is whole

    def _idle(self, source: MessageSource, last_activity: float, now: float) -> bool:
        """Idle: nothing for `idle_timeout_s` since the last activity or rebalance. Joining the
        group does not count: it may wait out a crashed member's session."""
        timeout = self._options.idle_timeout_s
        if timeout is None or source.rebalanced_at is None:
            return False
        return now - max(last_activity, source.rebalanced_at) >= timeout

    def _submit(
        self,
        writer: ThreadPoolExecutor,
        messages: list[KafkaMessage],
        outcomes: list[Outcome],
        arrived_at: float,
    ) -> _Write:
        """Hand a validated batch to the writer thread: one transaction, retried while the
        database is unavailable."""
        reference = self._current_reference()
        received_at = datetime.now(UTC)
        result = writer.submit(
            self._retry,
            lambda: self._store.write_batch(messages, outcomes, reference, received_at),
        )
        return _Write(result, messages, outcomes, arrived_at)

    def _finish(self, write: _Write, *, may_hold: bool = True) -> None:
        """Wait for a batch's transaction, then commit its offsets to Kafka and log rejects."""
        source = self._source
        held = False
        while True:
            try:
                result = write.result.result(timeout=_HOLD_CHECK_S if may_hold else None)
                break
            except TimeoutError:  # the database is slow or away: stay in the group meanwhile
                source.hold()
                held = True
        if held:
            source.release()
        source.commit(write.messages)
        self._stats.add(result, write.size, write.arrived_at)
        rejected = [
            (message, outcome)
            for message, outcome in zip(write.messages, write.outcomes, strict=True)
            if isinstance(outcome, Rejection)
        ]
        if rejected:
            self._on_rejected(rejected)

    def _validate(self, messages: list[KafkaMessage], now: datetime) -> list[Outcome]:
        reference = self._current_reference()
        outcomes = [validate(m.value, reference, now) for m in messages]
        unknown = any(isinstance(o, Rejection) and o.code in _UNKNOWN_KEY_CODES for o in outcomes)
        if (
            unknown
            and time.monotonic() - self._reference_loaded >= self._options.reference_refresh_s
        ):
            reloaded = self._current_reference(reload=True)
            if reloaded != reference:
                log.info("reference data changed: %d exhibitions", len(reloaded.exhibition_ids))
                outcomes = [validate(m.value, reloaded, now) for m in messages]
        return outcomes

    def _current_reference(self, *, reload: bool = False) -> Reference:
        if self._reference is None or reload:
            self._reference = self._retry(self._store.load_reference)
            self._reference_loaded = time.monotonic()
        return self._reference

    def _retry(self, action: Callable[[], T]) -> T:
        """Run `action`, waiting out transient database failures with bounded backoff.

        Nothing is committed to Kafka meanwhile; a stop during the wait raises `Stopped`.
        """
        delay = _RETRY_FIRST_S
        while True:
            try:
                return action()
            except Exception as error:
                if not is_transient(error):
                    raise
                self._store.reset_connection()
                log.warning(
                    "database unavailable (%s); retrying in %.1f s",
                    str(error).strip().splitlines()[0],
                    delay,
                )
            if self._stop.wait(delay):
                raise Stopped
            delay = min(delay * 2, _RETRY_MAX_S)
