"""What the loop tells /health while a write does not end: the batch in flight is waiting from
its arrival, through a connection that goes silent, the retry on a fresh one, and until its
commit, so that the health rule calls it stalled. A stand-in store plays the silent database
(no network): its first attempt hangs until the test says the silence is noticed, then fails
as a lost connection does; the retry hangs until the test lets the database answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar

from lmnh.errors import TransientError
from lmnh.events import KafkaMessage
from lmnh.health import GroupState, judge
from lmnh.museum import KIOSK_REFERENCE, Reference
from lmnh.pipeline import Pipeline, RunOptions
from lmnh.store import CopyBatch, WriteResult
from tests.integration.support import wait_until

STALL_S = 60.0
MEMBER = GroupState(True, None, (0,), (), {0: 0}, None)


class _SilentDatabase:
    def __init__(self) -> None:
        self.noticed = threading.Event()  # the silent connection is found dead
        self.answers = threading.Event()  # the database answers again
        self.attempts = 0

    def load_reference(self) -> Reference:
        return KIOSK_REFERENCE

    def write_batch(
        self,
        batch: CopyBatch,
        topic_id: str,
        high_watermarks: Mapping[int, int],
        stored_through: Mapping[tuple[str, int], int],
    ) -> WriteResult:
        self.attempts += 1
        if self.attempts == 1:
            self.noticed.wait(30)
            raise TransientError("database connection lost (no answer)")
        self.answers.wait(30)
        return batch.result

    def cancel(self) -> None:
        pass


class _OneMessage:
    """Hands over one message, then nothing until the stop."""

    rebalanced_at = None
    topic_id = "test-topic-id"
    high_watermarks: ClassVar[dict[int, int]] = {0: 1}

    def __init__(self) -> None:
        self._messages = [KafkaMessage("lmnh", 0, 0, b"not json", None)]
        self.committed: list[KafkaMessage] = []

    def next_batch(
        self,
        max_messages: int,
        max_wait_s: float,
        stop: threading.Event,
        ready: Callable[[], bool],
    ) -> list[KafkaMessage]:
        batch, self._messages = self._messages, []
        if not batch:
            stop.wait(0.05)
        return batch

    def commit(self, messages: Sequence[KafkaMessage]) -> None:
        self.committed.extend(messages)

    def hold(self) -> None:
        pass

    def release(self) -> None:
        pass


def test_a_write_that_does_not_end_or_is_retried_is_waiting_until_its_commit() -> None:
    database, source, stop = _SilentDatabase(), _OneMessage(), threading.Event()
    pipeline = Pipeline(database, RunOptions(limit=None), lambda _: None, stop)  # type: ignore[arg-type]
    loop = threading.Thread(target=pipeline.run, args=(source,), daemon=True)
    loop.start()
    try:
        wait_until(lambda: database.attempts == 1, 10, "the write is sent")
        hung = pipeline.load_state()
        assert hung.waiting_since is not None and hung.last_commit_at is None
        later = hung.waiting_since + STALL_S + 1  # the write still hangs a minute on
        health = judge(MEMBER, hung, later, STALL_S, time.time())
        assert health.body["status"] == "stalled", health.body

        database.noticed.set()
        wait_until(lambda: database.attempts == 2, 10, "the write is retried")
        assert pipeline.load_state().waiting_since == hung.waiting_since
        assert source.committed == []

        database.answers.set()
        wait_until(lambda: bool(source.committed), 10, "the batch is committed")
        stored = pipeline.load_state()
        assert stored.waiting_since is None and stored.last_commit_at is not None
        assert judge(MEMBER, stored, time.monotonic() + 3600, STALL_S, time.time()).healthy
    finally:
        database.noticed.set()
        database.answers.set()
        stop.set()
        loop.join(10)
    assert not loop.is_alive()
