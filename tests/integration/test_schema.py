"""schema.sql against real PostgreSQL: constraints, reference data, idempotence, reset."""

from __future__ import annotations

from datetime import date

import psycopg2
import pytest

from lmnh.database import apply_schema, connect, missing_tables, reset_schema
from lmnh.museum import KIOSK_REFERENCE
from lmnh.store import Store
from tests.integration.support import Target

pytestmark = pytest.mark.integration

# The kiosk feed's reference table, as the museum publishes it.
EXHIBITIONS = {
    (
        "EXH_00",
        "Measureless to Man",
        "1",
        "Geology",
        date(2021, 8, 23),
        "An immersive 3D experience: delve deep into a previously-inaccessible cave system.",
    ),
    (
        "EXH_01",
        "Adaptation",
        "Vault",
        "Entomology",
        date(2019, 7, 1),
        "How insect evolution has kept pace with an industrialised world",
    ),
    (
        "EXH_02",
        "The Crenshaw Collection",
        "2",
        "Zoology",
        date(2021, 3, 3),
        "An exhibition of 18th Century watercolours, mostly focused on South American wildlife.",
    ),
    (
        "EXH_03",
        "Cetacean Sensations",
        "1",
        "Zoology",
        date(2019, 7, 1),
        "Whales: from ancient myth to critically endangered.",
    ),
    (
        "EXH_04",
        "Our Polluted World",
        "3",
        "Ecology",
        date(2021, 5, 12),
        "A hard-hitting exploration of humanity's impact on the environment.",
    ),
    (
        "EXH_05",
        "Thunder Lizards",
        "1",
        "Paleontology",
        date(2023, 2, 1),
        "How new research is making scientists rethink what dinosaurs really looked like.",
    ),
}


def test_reference_data_is_exactly_the_kiosk_feed_table(target: Target) -> None:
    rows = target.query(
        "SELECT public_id, exhibition_name, floor_name, department_name, exhibition_start_date,"
        " exhibition_description FROM exhibition JOIN floor USING (floor_id)"
        " JOIN department USING (department_id)"
    )
    assert set(rows) == EXHIBITIONS
    assert set(target.query("SELECT floor_name FROM floor")) == {("Vault",), ("1",), ("2",), ("3",)}
    assert set(target.query("SELECT department_name FROM department")) == {
        ("Entomology",),
        ("Geology",),
        ("Paleontology",),
        ("Zoology",),
        ("Ecology",),
    }
    assert set(target.query("SELECT rating_value, rating_description FROM rating")) == {
        (0, "Terrible"),
        (1, "Bad"),
        (2, "Neutral"),
        (3, "Good"),
        (4, "Amazing"),
    }
    assert set(target.query("SELECT request_value, request_description FROM request")) == {
        (0, "Assistance"),
        (1, "Emergency"),
    }


def test_the_validators_built_in_reference_matches_the_database(target: Target) -> None:
    loaded = Store(target.settings.database).load_reference()
    assert loaded.exhibition_start == KIOSK_REFERENCE.exhibition_start
    assert loaded.rating_values == KIOSK_REFERENCE.rating_values
    assert loaded.request_values == KIOSK_REFERENCE.request_values


BAD_ROWS = [
    ("INSERT INTO rating (rating_value, rating_description) VALUES (5, 'Sublime')", "check"),
    ("INSERT INTO rating (rating_value, rating_description) VALUES (-1, 'Awful')", "check"),
    ("INSERT INTO request (request_value, request_description) VALUES (2, 'Fire')", "check"),
    ("INSERT INTO request (request_value, request_description) VALUES (0, 'Again')", "unique"),
    (
        "INSERT INTO exhibition (exhibition_name, exhibition_description, department_id, floor_id,"
        " exhibition_start_date, public_id) VALUES ('Old', '', 1, 1, '1899-12-31', 'EXH_90')",
        "check",
    ),
    (
        "INSERT INTO exhibition (exhibition_name, exhibition_description, department_id, floor_id,"
        " exhibition_start_date, public_id)"
        " VALUES ('Soon', '', 1, 1, CURRENT_DATE + 1, 'EXH_91')",
        "check",
    ),
    (
        "INSERT INTO exhibition (exhibition_name, exhibition_description, department_id, floor_id,"
        " exhibition_start_date, public_id) VALUES ('Lost', '', 99, 1, '2020-01-01', 'EXH_92')",
        "foreign key",
    ),
    (
        "INSERT INTO exhibition (exhibition_name, exhibition_description, department_id, floor_id,"
        " exhibition_start_date, public_id) VALUES ('Odd', '', 1, 1, '2020-01-01', 'X1')",
        "check",
    ),
    (
        "INSERT INTO rating_interaction (exhibition_id, rating_id, event_at, kafka_topic,"
        " kafka_partition, kafka_offset) VALUES (1, 1, NULL, 't', 0, 0)",
        "null",
    ),
    (
        "INSERT INTO rating_interaction (exhibition_id, rating_id, event_at, kafka_topic,"
        " kafka_partition, kafka_offset) VALUES (99, 1, now(), 't', 0, 0)",
        "foreign key",
    ),
    (
        "INSERT INTO request_interaction (exhibition_id, request_id, event_at, kafka_topic,"
        " kafka_partition, kafka_offset) VALUES (1, 1, now(), 't', 0, -1)",
        "check",
    ),
    (
        "INSERT INTO rating_interaction (exhibition_id, rating_id, event_at, kafka_topic,"
        " kafka_partition, kafka_offset) VALUES (1, 1, now(), 't', 0, 7), (1, 2, now(), 't', 0, 7)",
        "unique",
    ),
    (
        "INSERT INTO rejected_message (raw, reason_code, reason, kafka_topic, kafka_partition,"
        " kafka_offset) VALUES ('x', NULL, 'why', 't', 0, 0)",
        "null",
    ),
]


@pytest.mark.parametrize(("statement", "violation"), BAD_ROWS)
def test_constraints_reject_bad_rows(target: Target, statement: str, violation: str) -> None:
    with pytest.raises(psycopg2.IntegrityError) as raised:
        target.query(statement + " RETURNING 1")
    assert violation in str(raised.value).lower()


def test_applying_the_schema_again_keeps_data_and_reset_deletes_it(target: Target) -> None:
    insert = (
        "INSERT INTO rating_interaction (exhibition_id, rating_id, event_at, kafka_topic,"
        " kafka_partition, kafka_offset) VALUES (1, 1, now(), 't', 0, 0) RETURNING 1"
    )
    target.query(insert)
    conn = connect(target.settings.database)
    apply_schema(conn)
    apply_schema(conn)
    assert target.query("SELECT count(*) FROM rating_interaction") == [(1,)]
    assert target.query("SELECT count(*) FROM exhibition") == [(6,)]
    reset_schema(conn)
    assert missing_tables(conn) == []
    assert target.query("SELECT count(*) FROM rating_interaction") == [(0,)]
    assert target.query("SELECT count(*) FROM exhibition") == [(6,)]
    conn.close()
