"""The pipeline's database connections go silent (every packet dropped, nothing closed) or its
server freezes: the writer notices within seconds, says so, gives the connection up, and the
batch is stored on a new one, once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from psycopg2 import sql

from lmnh.database import connect
from tests.integration.silent import frozen_database, require_nft, silenced
from tests.integration.support import Target, produce_records, stored_coordinates, wait_until
from tests.integration.test_faults import stop

pytestmark = pytest.mark.integration

# Any message is stored somewhere (a fact table or rejected_message), whatever the hour.
EMERGENCY = b'{"at": "2026-11-25T11:00:00+00:00", "site": "3", "val": -1, "type": 1}'
STORED_WITHIN_S = 30  # the bound for the next emergency after a silent fault
SAID_WITHIN_S = 15


def test_a_silent_database_connection_is_given_up_and_the_batch_stored_once(
    target: Target, tmp_path: Path
) -> None:
    require_nft()
    output = tmp_path / "pipeline.log"
    process = target.start_pipeline(output, "--follow")
    try:
        target.produce([EMERGENCY])
        target.wait_until_loaded(1, 60)
        with silenced(process.pid, [target.settings.database.port]) as silent:
            target.produce([EMERGENCY] * 5)
            started = time.monotonic()
            target.wait_until_loaded(6, STORED_WITHIN_S)
            stored_after = time.monotonic() - started
        target.produce([EMERGENCY] * 3)
        target.wait_until_loaded(9, 60)
    finally:
        stop(process)
    log = output.read_text()
    print(f"{len(silent)} connections silenced; the next batch stored after {stored_after:.1f} s")
    assert "retried on a new connection" in log or "database connection lost" in log, log[-3000:]
    coordinates = stored_coordinates(target)
    assert len(coordinates) == len(set(coordinates)) == 9


@pytest.mark.usefixtures("local_postgres")
def test_a_frozen_database_is_noticed_within_seconds_and_waited_out(
    target: Target, tmp_path: Path
) -> None:
    output = tmp_path / "pipeline.log"
    process = target.start_pipeline(output, "--follow")
    try:
        target.produce([EMERGENCY])
        target.wait_until_loaded(1, 60)
        with frozen_database(target):
            target.produce([EMERGENCY] * 5)
            started = time.monotonic()
            wait_until(
                lambda: "does not answer a new connection either" in output.read_text(),
                SAID_WITHIN_S,
                "the pipeline said that the database does not answer",
            )
            said_after = time.monotonic() - started
        thawed = time.monotonic()
        target.wait_until_loaded(6, STORED_WITHIN_S)
        stored_after_thaw = time.monotonic() - thawed
    finally:
        stop(process)
    print(f"said after {said_after:.1f} s frozen; stored {stored_after_thaw:.1f} s after the thaw")
    coordinates = stored_coordinates(target)
    assert len(coordinates) == len(set(coordinates)) == 6
    assert process.returncode == 0, output.read_text()[-3000:]


def test_a_database_that_lost_acknowledged_transactions_is_loaded_again(
    target: Target, tmp_path: Path
) -> None:
    """As after a failover to a standby that had not received the latest commits: the
    database's offsets fall behind what the running pipeline stored. The next write finds
    them behind, stores nothing past the hole, and the partitions are read again from there;
    also those the next messages do not go to (a quiet kiosk's may not send for hours)."""
    output = tmp_path / "pipeline.log"
    process = target.start_pipeline(output, "--follow")
    partitions = range(target.settings.topic_partitions)
    try:
        produce_records(target, [{"value": EMERGENCY, "partition": p} for p in partitions] * 5)
        target.wait_until_loaded(5 * len(partitions), 60)
        lost = forget_latest(target, per_partition=2, keep=0)
        assert lost == 2 * (len(partitions) - 1)
        # The next batch holds partition 0 alone, which lost nothing.
        produce_records(target, [{"value": EMERGENCY, "partition": 0}] * 5)
        target.wait_until_loaded(5 * len(partitions) + 5, STORED_WITHIN_S)
    finally:
        stop(process)
    log = output.read_text()
    assert "the database holds less than this run stored" in log, log[-3000:]
    coordinates = stored_coordinates(target)
    assert len(coordinates) == len(set(coordinates)) == 5 * len(partitions) + 5


def forget_latest(target: Target, per_partition: int, keep: int | None = None) -> int:
    """Take each partition's latest `per_partition` messages out of the database, rows and
    offsets alike, as a promoted standby that never received them would be; all but partition
    `keep`'s, if given. How many."""
    conn = connect(target.settings.database)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE kafka_offset SET next_offset = next_offset - %s"
                " WHERE kafka_topic = %s AND next_offset >= %s"
                " AND kafka_partition IS DISTINCT FROM %s RETURNING kafka_partition",
                (per_partition, target.topic, per_partition, keep),
            )
            partitions = len(cur.fetchall())
            for table in ("rating_interaction", "request_interaction", "rejected_message"):
                cur.execute(
                    sql.SQL(
                        "DELETE FROM {} AS t USING kafka_offset AS o WHERE t.kafka_topic = %s"
                        " AND o.kafka_topic = t.kafka_topic"
                        " AND o.kafka_partition = t.kafka_partition"
                        " AND t.kafka_offset >= o.next_offset"
                    ).format(sql.Identifier(table)),
                    (target.topic,),
                )
    finally:
        conn.close()
    return partitions * per_partition
