"""Freshness: how long after a message is produced its row is committed.

A monitor polls `kafka_offset` (written in the same transaction as the rows) and notes when
each partition's next offset is first seen; a message's row is committed by the first poll
whose next offset is past the message's offset.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence

from bench.local import BenchError
from lmnh.config import DatabaseSettings
from lmnh.database import connect

POLL_INTERVAL_S = 0.020


class OffsetMonitor(threading.Thread):
    """Polls one topic's `kafka_offset` rows until stopped, recording per partition when each
    next_offset value was first seen (wall-clock seconds, taken after the query returned, so
    a commit is seen at most one poll interval plus one query late)."""

    def __init__(self, database: DatabaseSettings, topic: str) -> None:
        super().__init__(name="bench-offset-monitor", daemon=True)
        self._database = database
        self._topic = topic
        self._stop_event = threading.Event()
        self.seen: dict[int, list[tuple[float, int]]] = {}
        self.polls = 0
        self.query_seconds = 0.0
        self.error: BaseException | None = None

    def total(self) -> int:
        """Messages committed so far, by the last poll."""
        return sum(observed[-1][1] for observed in list(self.seen.values()) if observed)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def run(self) -> None:
        try:
            conn = connect(self._database, application_name="lmnh-bench-monitor")
            conn.autocommit = True
            try:
                with conn.cursor() as cur:
                    while not self._stop_event.is_set():
                        asked = time.time()
                        cur.execute(
                            "SELECT kafka_partition, next_offset FROM kafka_offset"
                            " WHERE kafka_topic = %s",
                            (self._topic,),
                        )
                        rows = cur.fetchall()
                        answered = time.time()
                        self.polls += 1
                        self.query_seconds += answered - asked
                        for partition, next_offset in rows:
                            observed = self.seen.setdefault(partition, [])
                            if not observed or observed[-1][1] != next_offset:
                                observed.append((answered, next_offset))
                        self._stop_event.wait(max(0.0, POLL_INTERVAL_S - (answered - asked)))
            finally:
                conn.close()
        except BaseException as error:  # reported by the caller, which is waiting on us
            self.error = error


def commit_delays(
    produced: Iterable[tuple[int, int, int]], seen: Mapping[int, Sequence[tuple[float, int]]]
) -> list[float]:
    """Milliseconds from each message's production (partition, offset, timestamp in ms) to
    the first observation (seconds, next_offset) of its partition past its offset."""
    next_offsets = {p: [offset for _, offset in observed] for p, observed in seen.items()}
    delays = []
    for partition, offset, timestamp_ms in produced:
        observed = seen.get(partition, ())
        index = bisect_right(next_offsets.get(partition, []), offset)
        if index >= len(observed):
            raise BenchError(f"partition {partition} offset {offset}: commit never observed")
        delays.append(observed[index][0] * 1000 - timestamp_ms)
    return delays
