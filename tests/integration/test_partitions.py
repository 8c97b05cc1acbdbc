"""Monthly partitions and retention against real PostgreSQL: months made ahead, a row of a month
with no partition stored in DEFAULT and moved into its month, a month of raw rejects past its
retention dropped with its counts kept, facts never dropped, a second run a no-op, and a held
lock given up within lock_timeout and tried again rather than queued behind."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import psycopg2
import pytest

from lmnh.config import RetentionSettings
from lmnh.database import connect
from lmnh.errors import ExitCode, FatalError
from lmnh.retention import Step, maintain
from lmnh.schema import maintain as maintain_command
from tests.integration.support import Target, wait_until

pytestmark = pytest.mark.integration

TABLES = ("rating_interaction", "request_interaction", "rejected_message", "load_minute")
RATING = (
    "INSERT INTO rating_interaction (exhibition_id, rating_id, event_at, kafka_topic,"
    " kafka_partition, kafka_offset) VALUES (1, 2, %s, 't', 0, %s)"
)
REJECT = (
    "INSERT INTO rejected_message (raw, reason_code, reason, kafka_topic, kafka_partition,"
    " kafka_offset, received_at, named_exhibition) VALUES ('x', %s, 'why', 't', 0, %s, %s, %s)"
)


def _month(at: datetime, ahead: int = 0) -> date:
    months = at.year * 12 + at.month - 1 + ahead
    return date(months // 12, months % 12 + 1, 1)


def _partitions(target: Target, table: str) -> set[str]:
    rows = target.query(
        "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = %s::regclass",
        (table,),
    )
    return {name for (name,) in rows}


def _run(target: Target, kept: RetentionSettings) -> tuple[Step, ...]:
    return maintain(target.settings.database, kept)


def test_months_are_made_ahead_a_stray_row_is_moved_into_its_month_and_a_rerun_does_nothing(
    target: Target,
) -> None:
    now = datetime.now(UTC)
    long_ago = datetime(2025, 3, 15, 12, tzinfo=UTC)  # a month no partition was made for
    target.query(RATING + " RETURNING 1", (long_ago, 7))
    [(stored_in, rating_id)] = target.query(
        "SELECT tableoid::regclass::text, rating_interaction_id FROM rating_interaction"
    )
    assert stored_in == "rating_interaction_default"  # stored, not refused
    [(rolled_up,)] = target.query("SELECT sum(interactions) FROM rating_rollup")

    steps = _run(target, RetentionSettings(months_ahead=2))

    ahead = [_month(now, n).strftime("%Y_%m") for n in range(3)]
    for table in TABLES:
        assert {f"{table}_p{month}" for month in ahead} <= _partitions(target, table)
    assert Step("moved", "rating_interaction", "rating_interaction_p2025_03", 1) in steps
    assert target.query(
        "SELECT tableoid::regclass::text, rating_interaction_id FROM rating_interaction"
    ) == [("rating_interaction_p2025_03", rating_id)]
    assert target.query("SELECT count(*) FROM rating_interaction_default") == [(0,)]
    # Moving a row between partitions is not storing it again: the rollup still adds up.
    assert target.query("SELECT sum(interactions) FROM rating_rollup") == [(rolled_up,)]
    # The same message again (same coordinates, so the same event_at) is still refused.
    # Reported under the partition's key, which ends as the loaders expect.
    with pytest.raises(
        psycopg2.IntegrityError, match="rating_interaction_p2025_03_kafka_coordinates"
    ):
        target.query(RATING + " RETURNING 1", (long_ago, 7))

    assert _run(target, RetentionSettings(months_ahead=2)) == ()


def test_a_rejects_month_past_retention_is_dropped_its_counts_kept_and_facts_never(
    target: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's "a month dropped, counts kept": `lmnh-schema maintain` as printed."""
    old = datetime.now(UTC) - timedelta(days=200)
    old_day = old.date()
    for offset, (reason, site) in enumerate(
        [("unknown_site", None), ("unknown_site", None), ("bad_rating", "EXH_01")]
    ):
        target.query(REJECT + " RETURNING 1", (reason, offset, old, site))
    target.query(REJECT + " RETURNING 1", ("bad_rating", 3, datetime.now(UTC), None))
    target.query(RATING + " RETURNING 1", (old, 10))
    target.query(
        "INSERT INTO load_minute VALUES (date_trunc('minute', %s::timestamptz), 't', 0, 4),"
        " (date_trunc('minute', now()), 't', 0, 5) RETURNING 1",
        (old,),
    )
    kept = RetentionSettings(rejected_days=90, load_minute_days=35, months_ahead=0)

    assert maintain_command(target.settings.database, kept) == ExitCode.OK

    printed = capsys.readouterr().out
    old_month = old.strftime("%Y_%m")
    assert f"dropped rejected_message_p{old_month}: 3 rows" in printed
    assert f"dropped load_minute_p{old_month}: 1 row," in printed
    print(printed)  # shown with -s: the month dropped, the counts kept
    assert f"rejected_message_p{old_month}" not in _partitions(target, "rejected_message")
    assert set(
        target.query("SELECT day, reason_code, named_exhibition, messages FROM rejected_daily")
    ) == {
        (old_day, "unknown_site", None, 2),
        (old_day, "bad_rating", "EXH_01", 1),
    }
    assert target.query("SELECT count(*) FROM rejected_message") == [(1,)]  # this month's
    assert target.query("SELECT day, messages FROM load_daily") == [(old_day, 4)]
    # Facts are never dropped, however old.
    assert f"rating_interaction_p{old_month}" in _partitions(target, "rating_interaction")
    assert target.query("SELECT count(*) FROM rating_interaction") == [(1,)]
    with pytest.raises(psycopg2.Error, match="keeps every month"):
        target.query("SELECT lmnh_drop_partition('rating_interaction', %s)", (_month(old),))


def test_a_held_lock_is_given_up_within_lock_timeout_and_tried_again_not_queued_behind(
    target: Target,
) -> None:
    """A loading transaction holds the rejects (as the pipeline's batch does) while an old
    month is due to go: maintenance asks for its lock for at most lock_timeout, pauses, asks
    again, and after its tries skips the step (exit 8); a writer arriving meanwhile is not
    queued behind it. Once the table is free, the next run does the step."""
    db = target.settings.database
    target.query(
        REJECT + " RETURNING 1", ("unknown_site", 0, datetime(2025, 1, 9, tzinfo=UTC), None)
    )
    loading = connect(db)
    outcome: list[BaseException | int] = []
    kept = RetentionSettings(months_ahead=0)

    def run_maintenance() -> None:
        try:
            outcome.append(maintain_command(db, kept, lock_timeout_s=0.2, attempts=2))
        except FatalError as error:
            outcome.append(error)

    try:
        with loading.cursor() as cur:
            cur.execute(REJECT, ("unknown_site", 1, datetime.now(UTC), None))  # left open
        maintenance = threading.Thread(target=run_maintenance)
        maintenance.start()
        wait_until(
            lambda: (
                target.query(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'lmnh-schema'"
                    " AND wait_event_type = 'Lock'"
                )
                != [(0,)]
            ),
            30,
            "maintenance asked for the held lock",
        )
        # Another writer meanwhile: it waits at most lock_timeout, never for the holder.
        conn = connect(db)
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SET LOCAL statement_timeout = '5s'")
                cur.execute(REJECT, ("unknown_site", 2, datetime.now(UTC), None))
        finally:
            conn.close()
        maintenance.join(60)
        [skipped] = outcome
        assert isinstance(skipped, FatalError), skipped
        assert skipped.exit_code == ExitCode.DATABASE_REFUSED
        assert "not granted in time" in str(skipped)
        assert target.query("SELECT count(*) FROM rejected_daily") == [(0,)]
        loading.commit()
    finally:
        loading.close()
    steps = _run(target, kept)
    assert Step("moved", "rejected_message", "rejected_message_p2025_01", 1) in steps
    assert Step("dropped", "rejected_message", "rejected_message_p2025_01", 1) in steps
    assert target.query("SELECT sum(messages) FROM rejected_daily") == [(1,)]
    assert target.query("SELECT count(*) FROM rejected_message") == [(2,)]
