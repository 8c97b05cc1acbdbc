"""What the README promises about stopping: a first SIGINT/SIGTERM finishes the batch in hand;
a second ends the process within seconds, also while its COPY is blocked on a lock or the
database does not answer at all; an error that leaves the loop while the writer is retrying
ends the run too. Each with the real database, blocked or gone."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import pytest
from psycopg2 import sql

from lmnh.database import connect, execute_outside_transaction
from lmnh.errors import ExitCode, FatalError
from lmnh.events import KafkaMessage
from lmnh.pipeline import Pipeline, RunOptions
from lmnh.store import Store
from tests.integration.silent import frozen_database
from tests.integration.support import (
    Target,
    assert_exactly_once,
    copy_waits_on_a_lock,
    wait_mid_run,
    wait_until,
)

pytestmark = pytest.mark.integration

SECOND_SIGNAL_EXIT_S = 5.0  # "within a few seconds", as the README says
VALID = b'{"at": "2026-11-20T12:29:17.958630+00:00", "site": "5", "val": 3}'


def exit_time_after_second_signal(
    process: subprocess.Popen[bytes], still_blocked: Callable[[], bool] = lambda: True
) -> tuple[int, float]:
    """Send a first signal, check it leaves the process running for 2 s (its batch in hand
    cannot finish) and, by `still_blocked`, the batch still blocked, then a second; how it
    exited and how long after the second signal."""
    process.send_signal(signal.SIGINT)
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(timeout=2)  # the first signal's grace observed: 2 s without an exit
    assert still_blocked(), "the batch in hand was no longer blocked at the second signal"
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    seconds = time.monotonic() - sent
    print(f"second signal to exit: {seconds:.2f} s")  # shown with -rP, for the record
    return code, seconds


def test_a_second_signal_ends_a_copy_blocked_on_a_lock(target: Target, tmp_path: Path) -> None:
    report = target.history(5_000, seed=31)
    log = tmp_path / "pipeline.log"
    locker = connect(target.settings.database)
    try:
        with locker.cursor() as cur:
            # Every table a batch may write: a first batch of one request or reject (the first
            # message is taken alone) must wait too.
            cur.execute(
                "LOCK TABLE rating_interaction, request_interaction, rejected_message"
                " IN ACCESS EXCLUSIVE MODE"
            )
        process = target.start_pipeline(log, "--follow", "--batch-size", "500")
        wait_until(
            lambda: copy_waits_on_a_lock(target), 60, "the pipeline's COPY waits on the lock"
        )
        code, seconds = exit_time_after_second_signal(process, lambda: copy_waits_on_a_lock(target))
    finally:
        locker.rollback()
        locker.close()
    output = log.read_text()
    assert code == ExitCode.INTERRUPTED, output[-3000:]
    assert seconds < SECOND_SIGNAL_EXIT_S, f"{seconds:.1f} s after the second signal"
    assert "abandoned" in output
    assert target.loaded() == 0, "the abandoned batch was committed"
    target.pipeline()
    assert_exactly_once(target, report)


@pytest.mark.usefixtures("local_postgres")
def test_a_second_signal_ends_the_process_when_the_database_does_not_answer(
    target: Target, tmp_path: Path
) -> None:
    report = target.history(40_000, seed=32)
    log = tmp_path / "pipeline.log"
    process = target.start_pipeline(log, "--follow", "--batch-size", "500")
    wait_mid_run(target, report["sent"])
    with frozen_database(target):
        code, seconds = exit_time_after_second_signal(process)
    output = log.read_text()
    assert code == ExitCode.INTERRUPTED, output[-3000:]
    assert seconds < SECOND_SIGNAL_EXIT_S, f"{seconds:.1f} s after the second signal"
    # Nothing is stored while frozen, nor after the exit: this is where the freeze came.
    assert 0 < target.loaded() < report["sent"], "the freeze did not land mid-run"
    target.pipeline()
    assert_exactly_once(target, report)


# --- an error that leaves the loop while the writer is retrying --------------------------------


class _OneBatchThenFails:
    """A message source that hands over one batch, then fails as a vanished topic would,
    once the writer has started retrying that batch."""

    rebalanced_at = 0.0
    topic_id = "test-topic-id"
    high_watermarks: ClassVar[dict[int, int]] = {}

    def __init__(self, batch: list[KafkaMessage], retrying: threading.Event) -> None:
        self._batch = batch
        self._retrying = retrying
        self.committed: list[KafkaMessage] = []

    def next_batch(
        self,
        max_messages: int,
        max_wait_s: float,
        stop: threading.Event,
        ready: Callable[[], bool],
    ) -> list[KafkaMessage]:
        if self._batch:
            batch, self._batch = self._batch, []
            return batch
        assert self._retrying.wait(30), "the writer never retried"
        raise FatalError("topic gone", ExitCode.TOPIC_MISSING)

    def commit(self, messages: Sequence[KafkaMessage]) -> None:
        self.committed.extend(messages)

    def hold(self) -> None:
        pass

    def release(self) -> None:
        pass


class _RetryWatch(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.seen.set()


@pytest.fixture
def writer_cannot_connect(target: Target) -> Iterator[Pipeline]:
    """A pipeline whose reads work (the connection is open) while the database refuses every
    new connection, so the writer's first attempt fails and it retries."""
    store = Store(target.settings.database)
    pipeline = Pipeline(store, RunOptions(limit=None), lambda _: None, threading.Event())
    pipeline.start_offsets(target.topic, "test-topic-id", [0], None)  # the reader connects
    server = replace(target.settings.database, name="postgres")
    allow = "ALTER DATABASE {} ALLOW_CONNECTIONS {}"
    database = sql.Identifier(target.topic)
    execute_outside_transaction(server, sql.SQL(allow).format(database, sql.SQL("false")))
    try:
        yield pipeline
    finally:
        execute_outside_transaction(server, sql.SQL(allow).format(database, sql.SQL("true")))
        store.close()


def test_an_error_while_the_writer_retries_ends_the_run_with_that_error(
    target: Target, writer_cannot_connect: Pipeline
) -> None:
    watch = _RetryWatch()
    logging.getLogger("lmnh.pipeline").addHandler(watch)
    source = _OneBatchThenFails([KafkaMessage(target.topic, 0, 0, VALID, None)], watch.seen)
    try:
        started = time.monotonic()
        with pytest.raises(FatalError) as raised:
            writer_cannot_connect.run(source)
        seconds = time.monotonic() - started
    finally:
        logging.getLogger("lmnh.pipeline").removeHandler(watch)
    assert raised.value.exit_code == ExitCode.TOPIC_MISSING
    assert seconds < SECOND_SIGNAL_EXIT_S
    assert source.committed == [], "offsets committed for a batch that was never stored"
