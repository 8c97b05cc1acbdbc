"""Security basics: least-privilege roles, and secrets that never show."""

from __future__ import annotations

import psycopg2
import pytest

from dashboard.accounts import add
from dashboard.sessions import session_without_sign_in
from lmnh.config import (
    LOCAL_KAFKA_SASL,
    LOCAL_KAFKA_SASL_PASSWORD,
    LOCAL_KAFKA_SASL_USER,
    DatabaseSettings,
)
from lmnh.database import connect
from tests.integration.conftest import MakeLogin
from tests.integration.support import HISTORY_UNTIL, Target, assert_exactly_once, run

pytestmark = pytest.mark.integration


def denied(db: DatabaseSettings, statement: str) -> bool:
    conn = connect(db)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement)
    except psycopg2.errors.InsufficientPrivilege:
        return True
    finally:
        conn.close()
    return False


def test_the_pipeline_role_loads_but_cannot_change_or_delete(
    target: Target, login: MakeLogin
) -> None:
    etl = login("lmnh_pipeline")
    report = target.simulate(
        "--count", "2000", "--seed", "41", "--backfill", "5", "--until", HISTORY_UNTIL
    )
    env = {"DB_USERNAME": etl.username, "DB_PASSWORD": etl.password.reveal()}
    result = run(target.pipeline_command(), {**target.env, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    assert etl.password.reveal() not in result.stdout + result.stderr
    assert_exactly_once(target, report)
    for statement in (
        "DELETE FROM rating_interaction",
        "UPDATE rejected_message SET reason = 'fine'",
        "TRUNCATE request_interaction",
        "INSERT INTO exhibition (exhibition_name, exhibition_description, department_id,"
        " floor_id, exhibition_start_date, public_id) VALUES ('x', 'x', 1, 1, '2020-01-01',"
        " 'EXH_99')",
        "DROP TABLE rating_interaction",
    ):
        assert denied(etl, statement), statement


def test_the_reader_role_only_reads(target: Target, login: MakeLogin) -> None:
    reader = login("lmnh_reader")
    conn = connect(reader)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM exhibition")
        assert cur.fetchone() == (6,)
    conn.close()
    assert denied(reader, "INSERT INTO rating (rating_value, rating_description) VALUES (4, 'x')")
    assert denied(reader, "DELETE FROM rejected_message")


def test_the_reader_sees_no_staff_data_and_the_dashboard_keeps_only_sessions(
    target: Target, login: MakeLogin
) -> None:
    """Tableau's login reads no password hash and no session; the dashboard's reads accounts,
    keeps sessions, and can neither make an account nor change one (lmnh-accounts does, as the
    schema's owner)."""
    owner = target.settings.database
    conn = connect(owner)
    try:
        add(conn, "r.pelkman", "R. Pelkman", ["security"], "a long enough passphrase")
    finally:
        conn.close()
    reader, dashboard = login("lmnh_reader"), login("lmnh_dashboard")
    for table in ("staff_account", "staff_session"):
        assert denied(reader, f"SELECT * FROM {table}"), table
    token = session_without_sign_in(dashboard, ["security"], "A Guard", "guard")
    conn = connect(dashboard)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT username FROM staff_account")
            assert cur.fetchall() == [("r.pelkman",)]
            cur.execute("SELECT count(*) FROM staff_session")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()
    assert token
    for statement in (
        "UPDATE staff_account SET roles = '{admin}'",
        "INSERT INTO staff_account (username, display_name, password_hash)"
        " VALUES ('x', 'x', '$argon2id$x')",
        "DELETE FROM staff_account",
        "INSERT INTO rating (rating_value, rating_description) VALUES (4, 'x')",
    ):
        assert denied(dashboard, statement), statement


@pytest.mark.usefixtures("local_kafka")  # the local broker's SASL listener
def test_no_configured_secret_appears_in_any_output(target: Target) -> None:
    db_password = target.settings.database.password.reveal()
    env = {
        "BOOTSTRAP_SERVERS": LOCAL_KAFKA_SASL,
        "SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "SASL_USERNAME": LOCAL_KAFKA_SASL_USER,
        "SASL_PASSWORD": LOCAL_KAFKA_SASL_PASSWORD,
        "DB_PASSWORD": db_password,
    }
    target.simulate("--count", "300", "--seed", "42", "--backfill", "2", "--until", HISTORY_UNTIL)
    outputs = [
        run(target.pipeline_command(), {**target.env, **env}),
        run(target.pipeline_command("--help"), {**target.env, **env}),
        run(target.pipeline_command(), {**target.env, **env, "SASL_PASSWORD": "wrong-secret-77"}),
        run(target.pipeline_command(), {**target.env, **env, "DB_PASSWORD": "wrong-secret-88"}),
    ]
    text = "".join(result.stdout + result.stderr for result in outputs)
    for secret in (LOCAL_KAFKA_SASL_PASSWORD, db_password, "wrong-secret-77", "wrong-secret-88"):
        assert secret not in text
    assert outputs[0].returncode == 0
