"""The facts' references to exhibitions, ratings and requests: what foreign keys would
guarantee, enforced once per statement (lmnh/schema.sql, "References"). Tried from both sides
and under concurrency, where a per-statement check could be weaker than a foreign key."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import psycopg2
import pytest
from psycopg2.extensions import connection as Connection

from lmnh.database import connect
from tests.integration.support import Target, wait_until

pytestmark = pytest.mark.integration

FOREIGN_KEY_VIOLATION = "23503"
RATING = (
    "INSERT INTO rating_interaction (exhibition_id, rating_id, event_at, kafka_topic,"
    " kafka_partition, kafka_offset) VALUES (%s, %s, now(), 't', 0, %s)"
)
REQUEST = (
    "INSERT INTO request_interaction (exhibition_id, request_id, event_at, kafka_topic,"
    " kafka_partition, kafka_offset) VALUES (%s, %s, now(), 't', 0, %s)"
)
NEW_EXHIBITION = (
    "INSERT INTO exhibition (exhibition_name, exhibition_description, department_id, floor_id,"
    " exhibition_start_date, public_id) VALUES ('Deep Time', '', 1, 1, '2024-05-01', 'EXH_06')"
    " RETURNING exhibition_id"
)


@pytest.fixture
def connections(target: Target) -> Iterator[Callable[[], Connection]]:
    opened: list[Connection] = []

    def open_one() -> Connection:
        conn = connect(target.settings.database)
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        conn.close()


def refused(target: Target, statement: str, params: tuple[object, ...] = ()) -> str:
    """The message of the foreign key violation that `statement` must raise."""
    with pytest.raises(psycopg2.IntegrityError) as raised:
        target.query(statement + " RETURNING 1", params)
    assert raised.value.pgcode == FOREIGN_KEY_VIOLATION, raised.value
    return str(raised.value)


@pytest.mark.parametrize(
    ("statement", "exhibition", "value", "named"),
    [
        (RATING, 99, 1, "exhibition_id 99"),
        (RATING, 1, 42, "rating_id 42"),
        (REQUEST, 77, 1, "exhibition_id 77"),
        (REQUEST, 1, 9, "request_id 9"),
    ],
)
def test_a_fact_naming_a_missing_row_is_refused(
    target: Target, statement: str, exhibition: int, value: int, named: str
) -> None:
    assert named in refused(target, statement, (exhibition, value, 0))
    # One bad row among good ones refuses the whole statement.
    many = statement.replace("%s, 0, %s)", "%s, 0, %s), (1, 1, now(), 't', 0, 1)")
    refused(target, many, (exhibition, value, 0))
    assert target.query("SELECT count(*) FROM rating_interaction") == [(0,)]


def test_a_fact_cannot_be_changed_to_name_a_missing_row(target: Target) -> None:
    target.query(RATING + " RETURNING 1", (1, 1, 0))
    refused(target, "UPDATE rating_interaction SET rating_id = 17")
    refused(target, "UPDATE rating_interaction SET exhibition_id = 55")
    target.query("UPDATE rating_interaction SET rating_id = 2 RETURNING 1")
    assert target.query("SELECT rating_id FROM rating_interaction") == [(2,)]


def test_a_referenced_row_cannot_be_deleted_rekeyed_or_truncated(target: Target) -> None:
    target.query(RATING + " RETURNING 1", (3, 1, 0))
    target.query(REQUEST + " RETURNING 1", (4, 2, 0))
    assert "still referenced" in refused(target, "DELETE FROM exhibition WHERE exhibition_id = 3")
    refused(target, "DELETE FROM exhibition WHERE exhibition_id = 4")
    refused(target, "DELETE FROM rating WHERE rating_id = 1")
    refused(target, "DELETE FROM request WHERE request_id = 2")
    refused(target, "UPDATE exhibition SET exhibition_id = DEFAULT WHERE exhibition_id = 3")
    with pytest.raises(psycopg2.IntegrityError) as raised:
        target.query("TRUNCATE exhibition CASCADE")
    assert raised.value.pgcode == FOREIGN_KEY_VIOLATION
    assert target.query("SELECT count(*) FROM exhibition") == [(6,)]


def test_rows_nobody_references_stay_free_to_change_and_delete(target: Target) -> None:
    target.query(RATING + " RETURNING 1", (3, 1, 0))
    # A referenced row may change anything but its key.
    target.query(
        "UPDATE exhibition SET exhibition_name = 'Whales' WHERE exhibition_id = 3 RETURNING 1"
    )
    assert target.query("SELECT exhibition_name FROM exhibition WHERE exhibition_id = 3") == [
        ("Whales",)
    ]
    [(new,)] = target.query(NEW_EXHIBITION)
    target.query("DELETE FROM exhibition WHERE exhibition_id = %s RETURNING 1", (new,))
    target.query("DELETE FROM rating WHERE rating_id = 5 RETURNING 1")
    assert target.query("SELECT count(*) FROM exhibition") == [(6,)]


def waiting_on_a_lock(target: Target, conn: Connection) -> bool:
    rows = target.query(
        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
        (conn.info.backend_pid,),
    )
    return rows == [("Lock",)]


def in_thread(action: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_a_delete_waits_for_the_loading_transaction_then_sees_its_facts(
    target: Target, connections: Callable[[], Connection]
) -> None:
    [(new,)] = target.query(NEW_EXHIBITION)
    loader, deleter = connections(), connections()
    with loader.cursor() as cur:  # stored, not yet committed
        cur.execute(RATING, (new, 1, 0))

    def delete() -> None:
        with deleter, deleter.cursor() as cur:
            cur.execute("DELETE FROM exhibition WHERE exhibition_id = %s", (new,))

    thread, errors = in_thread(delete)
    wait_until(lambda: waiting_on_a_lock(target, deleter), 10, "the delete waits on the load")
    loader.commit()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], psycopg2.IntegrityError)
    assert errors[0].pgcode == FOREIGN_KEY_VIOLATION
    assert target.query("SELECT count(*) FROM exhibition WHERE exhibition_id = %s", (new,)) == [
        (1,)
    ]


def test_a_load_waits_for_the_deleting_transaction_then_sees_the_row_gone(
    target: Target, connections: Callable[[], Connection]
) -> None:
    [(new,)] = target.query(NEW_EXHIBITION)
    loader, deleter = connections(), connections()
    with deleter.cursor() as cur:  # deleted, not yet committed
        cur.execute("DELETE FROM exhibition WHERE exhibition_id = %s", (new,))

    def load() -> None:
        with loader, loader.cursor() as cur:
            cur.execute(RATING, (new, 1, 0))

    thread, errors = in_thread(load)
    wait_until(lambda: waiting_on_a_lock(target, loader), 10, "the load waits on the delete")
    deleter.commit()
    thread.join(10)
    assert not thread.is_alive()
    assert len(errors) == 1
    assert isinstance(errors[0], psycopg2.IntegrityError)
    assert errors[0].pgcode == FOREIGN_KEY_VIOLATION
    assert target.query("SELECT count(*) FROM rating_interaction") == [(0,)]
