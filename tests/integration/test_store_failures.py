"""Every failure the store meets, classified by what to do about it, against real PostgreSQL:
retry (transient), set the message aside (permanent), or stop with an exit code (fatal)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import psycopg2
import pytest
from psycopg2 import sql

from lmnh.database import classify, connect, execute_outside_transaction
from lmnh.errors import ExitCode, FatalError, PermanentError, TransientError
from lmnh.events import KafkaMessage, Outcome, RatingEvent, Reason, Rejection
from lmnh.store import Store, WriteResult, copy_batch
from lmnh.validation import validate
from simulator.traffic import report_counts
from tests.integration.conftest import MakeLogin
from tests.integration.support import Target, database_counts, stored_coordinates

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)
AT = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
VALID = b'{"at": "2026-11-20T12:29:17.958630+00:00", "site": "5", "val": 3}'
# The message that once stopped the feed: a JSON escape of a lone surrogate in a field.
SURROGATE = b'{"at": "2026-01-15T10:00:00+00:00", "site": "\\ud800", "val": 3}'
TOPIC_ID = "test-topic-id"


@pytest.fixture
def store(target: Target) -> Iterator[Store]:
    store = Store(target.settings.database)
    yield store
    store.close()


def messages(topic: str, values: list[bytes | None]) -> list[KafkaMessage]:
    return [KafkaMessage(topic, 0, offset, v, 1_763_640_000_000) for offset, v in enumerate(values)]


def write(store: Store, batch: list[KafkaMessage], outcomes: list[Outcome]) -> WriteResult:
    return store.write_batch(copy_batch(batch, outcomes, store.load_reference(), NOW), TOPIC_ID, {})


def validated(store: Store, batch: list[KafkaMessage]) -> list[Outcome]:
    reference = store.load_reference()
    return [validate(m.value, reference, NOW) for m in batch]


def as_superuser(target: Target, statement: str) -> None:
    execute_outside_transaction(target.settings.database, sql.SQL(statement))


def refuse_thunder_lizards(target: Target) -> None:
    """A check constraint a DBA might add: no ratings of Thunder Lizards (EXH_05)."""
    [(thunder_lizards,)] = target.query(
        "SELECT exhibition_id FROM exhibition WHERE public_id = 'EXH_05'"
    )
    as_superuser(
        target,
        "ALTER TABLE rating_interaction ADD CONSTRAINT no_thunder_lizards"
        f" CHECK (exhibition_id <> {thunder_lizards})",
    )


# --- what cannot be stored as it is -----------------------------------------------------------


def test_the_surrogate_message_is_rejected_and_the_feed_goes_on(
    target: Target, store: Store
) -> None:
    batch = messages(target.topic, [VALID, SURROGATE, VALID])
    result = write(store, batch, validated(store, batch))
    assert (result.ratings, result.rejected) == (2, {"invalid_site": 1})
    [(raw, reason)] = target.query("SELECT raw, reason FROM rejected_message")
    assert bytes(raw) == SURROGATE
    assert "\\ud800" in reason


def test_a_reason_no_encoder_accepts_is_stored_escaped_on_one_line(
    target: Target, store: Store
) -> None:
    batch = messages(target.topic, [b"{}"])
    rejection = Rejection(Reason.INVALID_SITE, 'site "\ud800\udfff\x00" is\nnot\u2028known\t')
    result = write(store, batch, [rejection])
    assert result.rejected == {"invalid_site": 1}
    [(reason,)] = target.query("SELECT reason FROM rejected_message")
    assert reason == 'site "\\ud800\\udfff\\x00" is\\x0anot\\u2028known\\x09'


def test_a_row_that_cannot_be_built_is_set_aside_with_its_bytes(
    target: Target, store: Store
) -> None:
    batch = messages(target.topic, [VALID, b"from a kiosk of an exhibition we do not know"])
    unknown = RatingEvent("EXH_99", 3, AT)
    result = write(store, batch, [RatingEvent("EXH_05", 3, AT), unknown])
    assert (result.ratings, result.rejected) == (1, {"unstorable": 1})
    [(message, rejection)] = result.set_aside
    assert message.offset == 1
    assert "EXH_99" in rejection.detail
    [(raw, code, reason)] = target.query("SELECT raw, reason_code, reason FROM rejected_message")
    assert (bytes(raw), code) == (batch[1].value, "unstorable")
    assert "KeyError" in reason


def test_a_record_timestamp_beyond_any_calendar_is_stored_as_null(
    target: Target, store: Store
) -> None:
    times = [2**63 - 1, 253_402_300_799_999, 0]
    batch = [KafkaMessage(target.topic, 0, i, b"[]", ms) for i, ms in enumerate(times)]
    write(store, batch, validated(store, batch))
    rows = target.query(
        "SELECT kafka_offset, extract(year FROM kafka_timestamp AT TIME ZONE 'UTC')"
        " FROM rejected_message ORDER BY 1"
    )
    assert rows == [(0, None), (1, 9999), (2, 1970)]


def test_data_the_database_refuses_is_permanent_and_stores_nothing_of_the_batch(
    target: Target, store: Store
) -> None:
    refuse_thunder_lizards(target)
    batch = messages(target.topic, [VALID, b"{}"])
    with pytest.raises(PermanentError, match="23514"):
        write(store, batch, validated(store, batch))
    assert target.loaded() == 0
    assert target.query("SELECT count(*) FROM rejected_message") == [(0,)]


# --- what stops the run ----------------------------------------------------------------------


def test_a_login_without_write_permission_is_fatal(target: Target, login: MakeLogin) -> None:
    store = Store(login("lmnh_reader"))
    try:
        batch = messages(target.topic, [VALID])
        with pytest.raises(FatalError, match="42501") as raised:
            write(store, batch, validated(store, batch))
        assert raised.value.exit_code == ExitCode.DATABASE_REFUSED
    finally:
        store.close()


@pytest.mark.parametrize(
    ("sabotage", "exit_code"),
    [
        ("DROP TABLE rating_interaction CASCADE", ExitCode.SCHEMA_MISSING),
        ("ALTER TABLE kafka_offset DROP COLUMN topic_id", ExitCode.SCHEMA_MISSING),
    ],
    ids=["table", "column"],
)
def test_what_no_retry_can_heal_is_fatal(
    target: Target, store: Store, sabotage: str, exit_code: ExitCode
) -> None:
    as_superuser(target, sabotage)
    batch = messages(target.topic, [VALID])
    with pytest.raises(FatalError) as raised:
        write(store, batch, validated(store, batch))
    assert raised.value.exit_code == exit_code


def test_a_read_only_database_is_fatal(target: Target) -> None:
    as_superuser(target, f'ALTER DATABASE "{target.topic}" SET default_transaction_read_only = on')
    store = Store(target.settings.database)  # a new session, read-only from its start
    try:
        batch = messages(target.topic, [VALID])
        with pytest.raises(FatalError) as raised:
            write(store, batch, validated(store, batch))
        assert raised.value.exit_code == ExitCode.DATABASE_REFUSED
        assert "25006" in str(raised.value)
    finally:
        store.close()


def test_a_message_stored_behind_kafka_offsets_back_is_fatal_not_set_aside(
    target: Target, store: Store
) -> None:
    """kafka_offset edited by hand: setting messages aside would store them twice."""
    batch = messages(target.topic, [VALID, VALID])
    write(store, batch, validated(store, batch))
    as_superuser(target, "DELETE FROM kafka_offset")
    with pytest.raises(FatalError, match="kafka_offset") as raised:
        write(store, batch, validated(store, batch))
    assert raised.value.exit_code == ExitCode.DATABASE_REFUSED


# --- what heals by waiting -------------------------------------------------------------------


def test_a_connection_killed_by_the_server_is_transient_and_the_next_write_reconnects(
    target: Target, store: Store
) -> None:
    batch = messages(target.topic, [VALID])
    write(store, batch, validated(store, batch))
    as_superuser(
        target,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE application_name = 'lmnh-pipeline' AND datname = '{target.topic}'",
    )
    more = messages(target.topic, [VALID, VALID])
    with pytest.raises(TransientError):
        write(store, more, validated(store, more))
    assert write(store, more, validated(store, more)).ratings == 1


# Each SQLSTATE PostgreSQL itself raises (with RAISE ... USING ERRCODE), and what it means.
SQLSTATES = {
    "08006": TransientError,  # connection_failure
    "40001": TransientError,  # serialization_failure
    "40P01": TransientError,  # deadlock_detected
    "57P01": TransientError,  # admin_shutdown
    "57P03": TransientError,  # cannot_connect_now
    "57014": TransientError,  # query_canceled (statement or lock timeout, a cancel)
    "55P03": TransientError,  # lock_not_available
    "53300": TransientError,  # too_many_connections
    "53200": TransientError,  # out_of_memory
    "22021": PermanentError,  # character_not_in_repertoire
    "22P05": PermanentError,  # untranslatable_character
    "22008": PermanentError,  # datetime_field_overflow
    "23503": PermanentError,  # foreign_key_violation
    "23514": PermanentError,  # check_violation
    "23505": PermanentError,  # unique_violation, of another constraint than the coordinates
    "54000": PermanentError,  # program_limit_exceeded
    "P0001": PermanentError,  # raise_exception, from a trigger
    "42P01": FatalError,  # undefined_table
    "42501": FatalError,  # insufficient_privilege
    "53100": FatalError,  # disk_full
    "25006": FatalError,  # read_only_sql_transaction
    "3D000": FatalError,  # invalid_catalog_name
    "58030": FatalError,  # io_error
    "XX000": FatalError,  # internal_error
}


@pytest.mark.parametrize(("sqlstate", "kind"), SQLSTATES.items(), ids=list(SQLSTATES))
def test_each_sqlstate_is_classified_by_what_to_do(
    target: Target, sqlstate: str, kind: type[Exception]
) -> None:
    conn = connect(target.settings.database)
    try:
        with pytest.raises(psycopg2.Error) as raised, conn.cursor() as cur:
            cur.execute(
                f"DO $$ BEGIN RAISE EXCEPTION 'raised' USING ERRCODE = '{sqlstate}'; END $$"
            )
    finally:
        conn.close()
    assert raised.value.pgcode == sqlstate
    assert type(classify(raised.value)) is kind


def test_errors_without_a_sqlstate_are_classified_too() -> None:
    assert isinstance(
        classify(psycopg2.InterfaceError("connection already closed")), TransientError
    )
    assert isinstance(classify(UnicodeEncodeError("utf-8", "\ud800", 0, 1, "x")), PermanentError)
    assert isinstance(classify(KeyError("EXH_99")), PermanentError)


# --- end to end: a database that refuses valid events stops the run, never turns them into rejects


def raise_on_emergencies(target: Target) -> None:
    """A broken trigger: every emergency stored raises (SQLSTATE P0001)."""
    as_superuser(
        target,
        "CREATE FUNCTION broken() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.request_id = (SELECT request_id FROM request WHERE request_value = 1) THEN"
        " RAISE EXCEPTION 'the rollup is broken'; END IF; RETURN NEW; END $$;"
        " CREATE TRIGGER broken BEFORE INSERT ON request_interaction"
        " FOR EACH ROW EXECUTE FUNCTION broken()",
    )


@pytest.mark.parametrize(
    ("refuse", "sqlstate", "mend"),
    [
        (
            refuse_thunder_lizards,
            "23514",
            "ALTER TABLE rating_interaction DROP CONSTRAINT no_thunder_lizards",
        ),
        (raise_on_emergencies, "P0001", "DROP TRIGGER broken ON request_interaction"),
    ],
    ids=["check-constraint", "trigger-raises"],
)
def test_a_database_that_refuses_valid_events_stops_the_run_with_exit_8(
    target: Target, refuse: Callable[[Target], None], sqlstate: str, mend: str
) -> None:
    report = target.history(3000, seed=5)
    refuse(target)
    result = target.pipeline("--batch-size", "1000", check=False)
    assert result.returncode == ExitCode.DATABASE_REFUSED, result.stderr[-3000:]
    assert f"({sqlstate} " in result.stderr
    assert "not of the message" in result.stderr
    [(unstorable,)] = target.query(
        "SELECT count(*) FROM rejected_message WHERE reason_code = 'unstorable'"
    )
    assert unstorable == 0, "valid events were stored as rejects"
    assert target.loaded() < report["sent"]  # the refused one and what follows it are not
    as_superuser(target, mend)
    target.pipeline()
    assert database_counts(target) == report_counts(report)
    coordinates = stored_coordinates(target)
    assert len(coordinates) == len(set(coordinates)) == report["sent"]
