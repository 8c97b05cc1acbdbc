"""Group commit: the loop hands the source a `ready` test that says whether the writer is free,
so a batch goes as soon as it is, and what arrives while it is busy waits for it in one batch.
With the real database, the writer held up by a lock on a fact table."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import ClassVar

import pytest

from lmnh.database import connect
from lmnh.events import KafkaMessage
from lmnh.pipeline import Pipeline, RunOptions
from lmnh.store import Store
from tests.integration.support import Target, copy_waits_on_a_lock, wait_until

pytestmark = pytest.mark.integration

VALID = b'{"at": "2026-11-20T12:29:17.958630+00:00", "site": "5", "val": 3}'


class _WhileTheWriterIsBusy:
    """Hands over one message; then, once the writer is blocked storing it, asks whether the
    writer is free, lets it go on, and hands over the rest when it says it is."""

    rebalanced_at = 0.0
    topic_id = "test-topic-id"
    high_watermarks: ClassVar[dict[int, int]] = {}

    def __init__(
        self, target: Target, messages: list[KafkaMessage], unblock: Callable[[], None]
    ) -> None:
        self._target = target
        self._first, self._rest = messages[:1], messages[1:]
        self._unblock = unblock
        self.ready_while_blocked: bool | None = None
        self.committed: list[list[KafkaMessage]] = []

    def next_batch(
        self,
        max_messages: int,
        max_wait_s: float,
        stop: threading.Event,
        ready: Callable[[], bool],
    ) -> list[KafkaMessage]:
        assert max_wait_s == 0, "group commit is the default"
        if self._first:
            batch, self._first = self._first, []
            return batch
        if self._rest:
            wait_until(lambda: copy_waits_on_a_lock(self._target), 30, "the writer is blocked")
            self.ready_while_blocked = ready()
            self._unblock()
            wait_until(ready, 30, "the writer is free again")
            batch, self._rest = self._rest, []
            return batch
        stop.set()
        return []

    def commit(self, messages: Sequence[KafkaMessage]) -> None:
        self.committed.append(list(messages))

    def hold(self) -> None:
        pass

    def release(self) -> None:
        pass


def test_what_arrives_while_the_writer_is_busy_goes_in_one_batch_once_it_is_free(
    target: Target,
) -> None:
    messages = [KafkaMessage(target.topic, 0, offset, VALID, None) for offset in range(100)]
    locker = connect(target.settings.database)
    store = Store(target.settings.database)
    try:
        with locker.cursor() as cur:
            cur.execute("LOCK TABLE rating_interaction IN ACCESS EXCLUSIVE MODE")
        source = _WhileTheWriterIsBusy(target, messages, locker.rollback)
        pipeline = Pipeline(store, RunOptions(limit=None), lambda _: None, threading.Event())
        stats = pipeline.run(source)
    finally:
        locker.close()
        store.close()
    assert source.ready_while_blocked is False
    assert [len(batch) for batch in source.committed] == [1, 99]
    assert stats.ratings == 100
    # One transaction per batch, by the rows' own transaction ids.
    per_transaction = target.query(
        "SELECT count(*) FROM rating_interaction GROUP BY xmin::text ORDER BY 1"
    )
    assert per_transaction == [(1,), (99,)]
