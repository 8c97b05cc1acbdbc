"""The loop: batch -> validate -> store -> commit offsets, until the limit, idleness or a stop.

Offsets are committed to Kafka only after the database transaction holding the batch has
committed, and the database itself records each partition's next offset, so a crash at any
point loses nothing and doubles nothing.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

from lmnh import backoff
from lmnh.errors import DatabaseBehind, ExitCode, FatalError, PermanentError, TransientError
from lmnh.events import KafkaMessage, Outcome, Reason, Rejection
from lmnh.health import LoadState
from lmnh.metrics import PipelineMetrics
from lmnh.museum import Reference
from lmnh.store import CopyBatch, Store, WriteResult, copy_batch, unstorable
from lmnh.validation import validate

log = logging.getLogger(__name__)

# Codes that may only mean "the reference data has grown since we loaded it".
_UNKNOWN_KEY_CODES = {Reason.INVALID_SITE, Reason.INVALID_VAL, Reason.INVALID_TYPE}
_RETRY_FIRST_S = 0.5
_RETRY_MAX_S = 30.0
_HOLD_CHECK_S = 1.0  # how often a wait for the writer also serves the consumer group
_REVOKE_WAIT_S = 5.0  # longest a rebalance waits for the batch in flight
_ERROR_WAIT_S = 5.0  # after an error, how long the batch in flight may still finish
_CANCEL_WAIT_S = 2.0  # after cancelling its statement, how long the writer has to roll back
T = TypeVar("T")
# Stores one batch in one transaction: one attempt.
WriteBatch = Callable[[CopyBatch], WriteResult]


class Stopped(Exception):
    """A stop was requested while waiting for the database."""


class MessageSource(Protocol):
    # When the group last gave or took partitions; None until it first has.
    rebalanced_at: float | None
    topic_id: str  # Kafka's id of the topic the messages come from

    def next_batch(
        self,
        max_messages: int,
        max_wait_s: float,
        stop: threading.Event,
        ready: Callable[[], bool],
    ) -> list[KafkaMessage]: ...
    @property
    def high_watermarks(self) -> Mapping[int, int]:
        """Each partition's high watermark as last seen: stored with the offsets."""
        ...

    def commit(self, messages: Sequence[KafkaMessage]) -> None: ...
    def hold(self) -> None: ...
    def release(self) -> None: ...
    def rewind(self) -> None:
        """Start every partition again from where the database says it is loaded."""
        ...


@dataclass(frozen=True, slots=True)
class RunOptions:
    limit: int | None  # stop after this many messages; None: no limit
    batch_size: int = 10_000
    # Longest the first message of a batch waits for more while the writer is free. 0 is group
    # commit: a batch goes as soon as the writer is free, and grows while it is busy.
    batch_timeout_s: float = 0.0
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
    batch: CopyBatch
    arrived_at: float

    @property
    def size(self) -> int:
        return len(self.batch.messages)


class _Worker:
    """One daemon thread that runs what it is given, in order, each on its own database
    connection. A daemon, so that a process giving up on a statement the database never
    answers can still exit; and the main thread only ever waits on a future, where a signal
    is handled at once, never inside the driver, where it is not."""

    def __init__(self, name: str) -> None:
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]]
        self._work = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def submit(self, action: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._work.put((future, action))
        return future

    def _serve(self) -> None:
        while True:
            future, action = self._work.get()
            future.set_running_or_notify_cancel()
            try:
                future.set_result(action())
            except BaseException as error:  # handed to the waiting thread, which decides
                future.set_exception(error)


class Pipeline:
    """Moves kiosk messages from a source into the store, one transaction per batch."""

    def __init__(
        self,
        store: Store,
        options: RunOptions,
        on_rejected: Callable[[list[tuple[KafkaMessage, Rejection]]], None],
        stop: threading.Event,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self._stop = stop
        self._metrics = metrics or PipelineMetrics()
        self._last_commit: tuple[float, float] | None = None  # (monotonic, Unix) time
        self._store = store
        self._options = options
        self._on_rejected = on_rejected
        self._reference: Reference | None = None
        self._reference_loaded = 0.0
        self._in_flight: _Write | None = None
        self._finishing: _Write | None = None  # taken from _in_flight, being waited for
        self._writer = _Worker("lmnh-writer")
        self._reader = _Worker("lmnh-reader")  # the main thread's reads
        self._source: MessageSource
        self._stats = RunStats()
        # The next offset after what this run has stored, by partition: a database below it
        # lost acknowledged transactions. Touched by the writer thread, and by the main thread
        # only while no batch is in flight.
        self._stored_through: dict[tuple[str, int], int] = {}
        self._rewound = False

    def start_offsets(
        self, topic: str, topic_id: str, partitions: list[int], wait_s: float | None
    ) -> dict[int, int]:
        """Where each partition resumes, by the database: one attempt, read off the main
        thread, waited for at most `wait_s` (the source asks again later)."""
        read = self._reader.submit(lambda: self._store.stored_offsets(topic, topic_id, partitions))
        try:
            return read.result(wait_s)
        except TimeoutError:
            raise TransientError(f"the database did not answer within {wait_s:g} s") from None

    def run(self, source: MessageSource) -> RunStats:
        """Load until the limit, idleness or a stop; a stop finishes the batch in hand.

        Any error, and KeyboardInterrupt (a second signal), first gives up the batch in flight
        (see `_give_up`), so that the caller can always exit.
        """
        self._source = source
        self._stats = RunStats()
        try:
            self._loop(source)
        except Stopped:
            log.warning(
                "stopped while the database was unavailable: the batch in hand was"
                " not stored and its offsets not committed"
            )
        except BaseException as error:
            self._give_up(at_once=isinstance(error, KeyboardInterrupt))
            raise
        return self._stats

    def drain(self) -> None:
        """Store and commit the batch in flight, if it is done within a few seconds. Called
        before partitions are taken away, so that their next owner starts after it; a batch
        that takes longer (the database is slow or away) is left to finish later, since a
        rebalance callback must not keep the group waiting. It is still stored once: the
        partitions' row locks and stored offsets make the next owner skip what it holds."""
        write = self._in_flight
        if write is None:
            return
        if not wait([write.result], _REVOKE_WAIT_S).done:
            log.warning("the batch in flight is not stored yet; the rebalance goes on without it")
            return
        self._in_flight = None
        try:
            result = self._wait(write, may_hold=False)  # in a rebalance callback: no polls
        except DatabaseBehind as behind:
            self._stored_through.clear()
            log.warning("%s; the partitions' next owners start from the database", behind)
            return
        self._done(write, result)

    def load_state(self) -> LoadState:
        """What /health needs of the loop; read from the metrics server's thread."""
        write = self._finishing or self._in_flight
        waiting = write.arrived_at if write is not None and not write.result.done() else None
        last = self._last_commit
        return LoadState(last[0] if last else None, waiting, last[1] if last else None)

    def _loop(self, source: MessageSource) -> None:
        """Fetch and validate batch N+1 while the writer thread stores batch N.

        Kafka offsets of a batch are committed only once its transaction has committed, and
        every consumer call stays on this thread (rebalance callbacks run inside them).
        """
        options = self._options
        stats = self._stats
        # Idleness counts from the last message or the last stored batch: a wait for a slow
        # database is not idleness.
        last_activity = last_progress = time.monotonic()
        while not self._stop.is_set():
            wanted = options.batch_size
            if options.limit is not None:
                held = self._in_flight.size if self._in_flight else 0
                wanted = min(wanted, options.limit - stats.consumed - held)
                if wanted <= 0:
                    break
            messages = source.next_batch(
                wanted, options.batch_timeout_s, self._stop, self._writer_free
            )
            now = time.monotonic()
            # A stop during the fetch still stores what was fetched: never half a batch.
            if messages:
                last_activity = now
                self._metrics.consumed(len(messages))
                judged = datetime.now(UTC)
                outcomes = self._validate(messages, judged)
                batch = copy_batch(messages, outcomes, self._current_reference(), judged)
            # The writer waits only while the batch in flight is being stored: the next one is
            # ready before, and what follows a commit is done after handing it over.
            stored = self._wait_in_flight()
            if self._rewound:  # what was fetched meanwhile may lie past the hole: fetch again
                self._rewound = False
                continue
            if messages:
                self._in_flight = self._submit(batch, now)
            if stored is not None:
                self._done(*stored)
                last_activity = max(last_activity, time.monotonic())
            if not messages and self._idle(source, last_activity, now):
                log.info("no message for %.0f s: caught up", options.idle_timeout_s)
                break
            if now - last_progress >= options.progress_interval_s:
                last_progress = now
                log.info("progress: %s", stats.summary())
        self._finish_in_flight()  # whole, so finish it, also on a stop

    def _writer_free(self) -> bool:
        return self._in_flight is None or self._in_flight.result.done()

    def _wait_in_flight(self) -> tuple[_Write, WriteResult] | None:
        write, self._in_flight = self._in_flight, None
        if write is None:
            return None
        try:
            return write, self._wait(write)
        except DatabaseBehind as behind:
            self._rewind(behind)
            return None

    def _rewind(self, behind: DatabaseBehind) -> None:
        """The database lost what it had acknowledged: forget what this run believes stored,
        and load again from where the database says (nothing of the batch was stored, and
        its offsets were not committed to Kafka)."""
        log.warning("%s; loading again from where it says", behind)
        self._stored_through.clear()
        self._source.rewind()
        self._rewound = True

    def _finish_in_flight(self) -> None:
        stored = self._wait_in_flight()
        if stored is not None:
            self._done(*stored)

    def _give_up(self, *, at_once: bool) -> None:
        """End the batch in flight without waiting for ever: stop its retries, give it a few
        seconds to finish (none `at_once`), then cancel its statement on the server and give
        it a few more to roll back. A writer that still does not answer (the server is gone)
        is left behind; its transaction never commits without it."""
        self._stop.set()
        write = self._in_flight or self._finishing
        if write is None or write.result.done():
            return
        if not at_once and wait([write.result], _ERROR_WAIT_S).done:
            return
        threading.Thread(target=self._cancel, name="lmnh-cancel", daemon=True).start()
        if not wait([write.result], _CANCEL_WAIT_S).done:
            log.warning("the batch in flight did not end; abandoned, never committed")

    def _cancel(self) -> None:
        try:
            self._store.cancel()
        except Exception as error:  # the server is gone: nothing runs there to cancel
            log.warning("could not cancel the statement in flight: %s", error)

    def _idle(self, source: MessageSource, last_activity: float, now: float) -> bool:
        """Idle: nothing for `idle_timeout_s` since the last activity or rebalance. Joining the
        group does not count: it may wait out a crashed member's session."""
        timeout = self._options.idle_timeout_s
        if timeout is None or source.rebalanced_at is None:
            return False
        return now - max(last_activity, source.rebalanced_at) >= timeout

    def _submit(self, batch: CopyBatch, arrived_at: float) -> _Write:
        """Hand a validated batch, as COPY text, to the writer thread."""
        topic_id = self._source.topic_id

        def write(part: CopyBatch) -> WriteResult:
            return self._store.write_batch(
                part, topic_id, self._source.high_watermarks, self._stored_through
            )

        submitted_at = time.monotonic()

        def store() -> WriteResult:  # on the writer thread
            stored = self._write(batch, write)
            for key, offset in batch.highest.items():
                self._stored_through[key] = max(self._stored_through.get(key, 0), offset + 1)
            committed_at = time.monotonic()
            self._last_commit = (committed_at, time.time())
            self._metrics.store_took(committed_at - submitted_at)
            return stored

        return _Write(self._writer.submit(store), batch, arrived_at)

    def _write(self, batch: CopyBatch, write: WriteBatch) -> WriteResult:
        """Store a batch, waiting out an unavailable database. A batch refused for its data is
        halved, first half first (each partition's offset only moves forward), until each
        refused message is alone. A rejected message refused as such is set aside as an
        `unstorable` rejection with its raw bytes and the error, and the rest is stored: one
        message never holds up the feed. A valid event refused alone stops the run (exit 8):
        facts are never turned into rejects for a fault of the database's."""
        try:
            return self._retry(lambda: write(batch))
        except PermanentError as error:
            size = len(batch.messages)
            if size > 1:
                half = size // 2
                first = self._write(batch.part(0, half), write)
                return first + self._write(batch.part(half, size), write)
            message = batch.messages[0]
            if not isinstance(batch.outcomes[0], Rejection):
                # A valid event the database refuses on its own: the fault is the database's
                # (a trigger, a constraint, an extension), and would refuse its like too.
                raise FatalError(
                    f"the database refuses a valid message, {message.topic}"
                    f"[{message.partition}]@{message.offset} ({error}): a fault of the"
                    " database (a trigger, a constraint, an extension), not of the message;"
                    " it and what follows it are not stored, and the next run starts there",
                    ExitCode.DATABASE_REFUSED,
                ) from error
            rejection = unstorable(batch.outcomes[0], error)
            log.error(
                "%s[%d]@%d set aside: %s",
                message.topic,
                message.partition,
                message.offset,
                rejection.detail,
            )
            try:
                result = self._retry(lambda: write(batch.as_rejected(rejection)))
            except PermanentError as refused:
                raise FatalError(
                    f"the database refuses to store even the raw bytes of {message.topic}"
                    f"[{message.partition}]@{message.offset} ({refused})",
                    ExitCode.DATABASE_REFUSED,
                ) from refused
            return result + WriteResult(set_aside=((message, rejection),))

    def _wait(self, write: _Write, *, may_hold: bool = True) -> WriteResult:
        """Wait for a batch's transaction, serving the consumer group meanwhile (`may_hold`)."""
        source = self._source
        held = False
        self._finishing = write  # until it is done, also for _give_up after an interruption
        try:
            while True:
                try:
                    return write.result.result(timeout=_HOLD_CHECK_S if may_hold else None)
                except TimeoutError:  # the database is slow or away: stay in the group
                    source.hold()
                    held = True
        finally:
            if write.result.done():
                self._finishing = None
            if held:
                source.release()

    def _done(self, write: _Write, result: WriteResult) -> None:
        """After a batch's transaction: commit its offsets to Kafka and log its rejects."""
        batch = write.batch
        self._source.commit(batch.messages)
        self._stats.add(result, write.size, write.arrived_at)
        self._metrics.stored(result, write.size)
        # A replay's messages stored before are not told apart from the rest: its sites are
        # left uncounted rather than counted twice (a rare batch, after a crash or a rebalance).
        if not result.already_stored:
            self._metrics.stored_by_site(batch)
        aside = {id(message) for message, _ in result.set_aside}
        rejected = [
            (message, outcome)
            for message, outcome in zip(batch.messages, batch.outcomes, strict=True)
            if isinstance(outcome, Rejection) and id(message) not in aside
        ]
        rejected.extend(result.set_aside)
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
            self._reference = self._retry(
                lambda: self._reader.submit(self._store.load_reference).result(),
                serve_group=True,
            )
            self._reference_loaded = time.monotonic()
        return self._reference

    def _retry(self, action: Callable[[], T], *, serve_group: bool = False) -> T:
        """Run `action`, waiting out transient database failures with bounded backoff.

        Nothing is committed to Kafka meanwhile; a stop during the wait raises `Stopped`.
        On the main thread (`serve_group`) the wait also serves the consumer group, which
        would otherwise expel this member once `max.poll.interval.ms` has passed.
        """
        held = False
        for delay in backoff.delays(_RETRY_FIRST_S, _RETRY_MAX_S):
            try:
                result = action()
                break
            except TransientError as error:
                log.warning("%s; retrying in %.1f s", error, delay)
                self._metrics.retried()
            deadline = time.monotonic() + delay
            while (left := deadline - time.monotonic()) > 0:
                if self._stop.wait(min(left, _HOLD_CHECK_S) if serve_group else left):
                    raise Stopped
                if serve_group:
                    self._source.hold()
                    held = True
        if held:
            self._source.release()
        return result
