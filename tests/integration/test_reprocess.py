"""Reprocessing rejects end to end: a new exhibition's rejects moved into the fact tables once,
with their Kafka coordinates, also alongside the running pipeline and after a kill half way."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lmnh.database import connect
from lmnh.events import KafkaMessage
from lmnh.store import Store, copy_row
from lmnh.validation import validate
from tests.integration.conftest import MakeLogin
from tests.integration.support import (
    NO_ENV_FILE,
    PYTHON,
    ROOT,
    Target,
    produce_records,
    run,
    stored_coordinates,
    wait_until,
)

pytestmark = pytest.mark.integration

OPENED = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)  # a Friday, the museum open all day after
NEW_EXHIBITION = (
    "INSERT INTO exhibition (exhibition_name, exhibition_description, department_id,"
    " floor_id, exhibition_start_date, public_id)"
    " SELECT %s, 'Opened while its kiosk was already sending.', department_id, floor_id,"
    " DATE '2026-01-01', %s FROM department, floor"
    " WHERE department_name = 'Paleontology' AND floor_name = '2' RETURNING 1"
)


def visit(site: str, val: int, minute: int, kind: int | None = None, hour: int = 0) -> bytes:
    """A kiosk's message, in the kiosks' own layout, `minute` minutes after 09:00 UTC (plus
    `hour` hours: 14 puts it at 23:00, after closing)."""
    at = OPENED + timedelta(hours=hour, minutes=minute % 500)
    message: dict[str, object] = {"at": at.isoformat(), "site": site, "val": val}
    if kind is not None:
        message["type"] = kind
    return json.dumps(message).encode()


def add_exhibition(target: Target, public_id: str) -> None:
    target.query(NEW_EXHIBITION, (f"Deep Time {public_id}", public_id))


def reprocess(
    target: Target, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return run(
        [PYTHON, "-m", "lmnh.reprocess", "--env-file", NO_ENV_FILE, *args],
        {**target.env, **(env or {})},
    )


def summary(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.splitlines()[-1]


def moved(result: subprocess.CompletedProcess[str]) -> int:
    match = re.match(r"(?:moved|would move) (\d+) ", summary(result))
    assert match, result.stdout
    return int(match.group(1))


def rejects(target: Target) -> list[tuple[object, ...]]:
    return target.query(
        "SELECT rejected_message_id, reason_code, reason, named_exhibition, raw,"
        " kafka_partition, kafka_offset FROM rejected_message ORDER BY 1"
    )


def facts_of(target: Target, public_id: str) -> set[tuple[int, int]]:
    """(partition, offset) of the ratings and requests stored for an exhibition."""
    rows = target.query(
        "SELECT kafka_partition, kafka_offset FROM rating_interaction"
        " JOIN exhibition USING (exhibition_id) WHERE public_id = %s"
        " UNION ALL SELECT kafka_partition, kafka_offset FROM request_interaction"
        " JOIN exhibition USING (exhibition_id) WHERE public_id = %s",
        (public_id, public_id),
    )
    return {(p, o) for p, o in rows}


def assert_each_stored_once(target: Target, sent: int) -> None:
    coordinates = stored_coordinates(target)
    assert len(coordinates) == len(set(coordinates)), "a message is stored twice"
    assert len(coordinates) == sent, f"{sent - len(coordinates)} messages lost"


def assert_rollups_add_up(target: Target) -> None:
    """The dashboard's rollups hold exactly what their facts say, key by key."""
    for fact, rollup, period, value in (
        ("rating_interaction", "rating_rollup", "london_hour", "rating_id"),
        ("request_interaction", "request_rollup", "london_quarter_hour", "request_id"),
    ):
        from_facts = target.query(
            f"SELECT london_date(event_at), {period}(event_at), exhibition_id, {value},"
            f" count(*) FROM {fact} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4"
        )
        kept = target.query(f"SELECT * FROM {rollup} ORDER BY 1, 2, 3, 4")
        assert kept == from_facts, rollup


def test_a_new_exhibitions_rejects_are_moved_once_with_their_coordinates(
    target: Target,
) -> None:
    site_6_ratings = [visit("6", n % 5, n) for n in range(40)]
    site_6_requests = [visit("6", -1, n, kind=n % 2) for n in range(15)]
    site_6_at_night = [visit("6", 3, n, hour=14) for n in range(10)]
    known = [visit(str(n % 6), n % 5, n) for n in range(30)]
    invalid_val = [visit("2", 9, n) for n in range(5)]
    values = site_6_ratings + site_6_requests + site_6_at_night + known + invalid_val
    delivered = produce_records(target, [{"value": v} for v in values])
    where = {(d.partition, d.offset): v for d, v in zip(delivered, values, strict=True)}
    to_move = {c for c, v in where.items() if v in site_6_ratings + site_6_requests}
    target.pipeline("--limit", str(len(values)))
    by_reason = "SELECT reason_code, count(*) FROM rejected_message GROUP BY 1 ORDER BY 1"
    assert target.query(by_reason) == [("invalid_site", 65), ("invalid_val", 5)]

    add_exhibition(target, "EXH_06")
    before = (rejects(target), stored_coordinates(target))
    dry = reprocess(target, "--site", "EXH_06", "--dry-run")
    assert summary(dry) == (
        "would move 55 (ratings 40, requests 15); still rejected 10 (out_of_hours 10); unchanged 0"
    )
    assert "        55  invalid_site -> EXH_06" in dry.stdout.splitlines()
    assert (rejects(target), stored_coordinates(target)) == before, "the dry run changed data"

    story = ("--site", "EXH_06", "--batch-size", "20")
    first = reprocess(target, *story)
    assert summary(first) == (
        "moved 55 (ratings 40, requests 15); still rejected 10 (out_of_hours 10); unchanged 0"
    )
    assert facts_of(target, "EXH_06") == to_move
    night = target.query(
        "SELECT reason_code, named_exhibition, count(*) FROM rejected_message"
        " WHERE reason_code <> 'invalid_val' GROUP BY 1, 2"
    )
    assert night == [("out_of_hours", "EXH_06", 10)]
    # Run again, as in the story and over every reject: nothing moves twice.
    second = reprocess(target, *story)
    assert summary(second) == (
        "moved 0 (ratings 0, requests 0); still rejected 10 (out_of_hours 10); unchanged 10"
    )
    third = reprocess(target, "--reason", "invalid_site", "--reason", "invalid_val")
    assert summary(third) == (
        "moved 0 (ratings 0, requests 0); still rejected 5 (invalid_val 5); unchanged 5"
    )
    assert facts_of(target, "EXH_06") == to_move
    assert_each_stored_once(target, len(values))
    assert target.query("SELECT count(*) FROM rating_interaction") == [(70,)]
    assert target.query("SELECT count(*) FROM request_interaction") == [(15,)]
    assert_rollups_add_up(target)


def test_reprocessing_alongside_the_running_pipeline_loses_and_doubles_nothing(
    target: Target, tmp_path: Path
) -> None:
    first = [visit("6", n % 5, n) for n in range(200)] + [visit("1", 2, n) for n in range(50)]
    later = [visit("6", n % 5, n) for n in range(100)] + [visit("3", 4, n) for n in range(100)]
    log = tmp_path / "pipeline.log"
    pipeline = target.start_pipeline(log, "--follow", "--batch-size", "20")
    try:
        target.produce(first)
        target.wait_until_loaded(len(first), timeout_s=60)
        add_exhibition(target, "EXH_06")
        # Small batches, while the pipeline stores the later messages: rejects taken and
        # facts stored by both at once.
        with (tmp_path / "reprocess.log").open("w") as sink:
            mover = subprocess.Popen(
                [PYTHON, "-m", "lmnh.reprocess", "--env-file", NO_ENV_FILE, "--batch-size", "10"],
                cwd=ROOT,
                env=dict(target.env),
                stdout=subprocess.PIPE,
                stderr=sink,
                text=True,
            )
            target.produce(later)
            out, _ = mover.communicate(timeout=120)
        assert mover.returncode == 0, (tmp_path / "reprocess.log").read_text()[-3000:]
        target.wait_until_loaded(len(first) + len(later), timeout_s=60)
        pipeline.send_signal(signal.SIGTERM)
        assert pipeline.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if pipeline.poll() is None:
            pipeline.kill()
            pipeline.wait()
    assert re.match(r"moved [1-9]", out.splitlines()[-1]), out
    assert_each_stored_once(target, len(first) + len(later))
    # What the pipeline stored as a reject before it saw the new exhibition, a run now moves.
    reprocess(target)
    assert_each_stored_once(target, len(first) + len(later))
    assert target.query("SELECT count(*) FROM rejected_message") == [(0,)]
    assert target.query("SELECT count(*) FROM rating_interaction") == [(450,)]
    assert_rollups_add_up(target)


def store_rejects(target: Target, values: Sequence[bytes]) -> None:
    """Store `values` as the pipeline would have, as offsets 0.. of partition 0, in that
    order: judged against the database's reference data, each a reject."""
    store = Store(target.settings.database)
    try:
        reference = store.load_reference()
    finally:
        store.close()
    received = datetime.now(UTC)
    lines = []
    for offset, value in enumerate(values):
        message = KafkaMessage(target.topic, 0, offset, value, None)
        table, line = copy_row(
            message, validate(value, reference, received), reference, received.isoformat()
        )
        assert table == 2
        lines.append(line)
    conn = connect(target.settings.database)
    try:
        with conn, conn.cursor() as cur:
            cur.copy_expert(
                "COPY rejected_message (raw, reason_code, reason, kafka_timestamp, received_at,"
                " named_exhibition, kafka_topic, kafka_partition, kafka_offset) FROM STDIN",
                io.BytesIO("".join(lines).encode()),
            )
    finally:
        conn.close()


def reprocess_sessions(target: Target, waiting: bool = False) -> int:
    rows = target.query(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        " AND application_name = 'lmnh-reprocess'"
        + (" AND wait_event_type = 'Lock'" if waiting else ""),
        (target.topic,),
    )
    return int(rows[0][0])


def test_a_run_killed_half_way_leaves_whole_batches_and_the_next_one_finishes(
    target: Target,
) -> None:
    # Site 7's rejects come first, then site 6's; with EXH_06 locked, the run moves site 7's
    # batches and then waits inside the first batch of site 6's: killed there.
    values = [visit("7", n % 5, n) for n in range(600)] + [visit("6", 4, n) for n in range(400)]
    store_rejects(target, values)
    add_exhibition(target, "EXH_06")
    add_exhibition(target, "EXH_07")
    holder = connect(target.settings.database)
    mover: subprocess.Popen[str] | None = None
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT 1 FROM exhibition WHERE public_id = 'EXH_06' FOR UPDATE")
        mover = subprocess.Popen(
            [PYTHON, "-m", "lmnh.reprocess", "--env-file", NO_ENV_FILE, "--batch-size", "50"],
            cwd=ROOT,
            env=dict(target.env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        wait_until(lambda: reprocess_sessions(target, waiting=True) > 0, 60, "a batch waits")
        mover.send_signal(signal.SIGKILL)
        mover.wait(timeout=30)
    finally:
        holder.rollback()
        holder.close()
        if mover is not None and mover.poll() is None:
            mover.kill()
            mover.wait()
    wait_until(lambda: reprocess_sessions(target) == 0, 30, "the killed run's session ended")
    assert len(facts_of(target, "EXH_07")) == 600
    assert not facts_of(target, "EXH_06")
    assert_each_stored_once(target, len(values))

    again = reprocess(target, "--batch-size", "50")
    assert summary(again) == ("moved 400 (ratings 400, requests 0); still rejected 0; unchanged 0")
    assert_each_stored_once(target, len(values))
    assert facts_of(target, "EXH_06") == {(0, n) for n in range(600, 1000)}
    assert_rollups_add_up(target)


def test_only_the_reprocess_role_may_move_rejects(target: Target, login: MakeLogin) -> None:
    store_rejects(target, [visit("6", 1, n) for n in range(5)])
    add_exhibition(target, "EXH_06")

    def as_login(role: str) -> subprocess.CompletedProcess[str]:
        user = login(role)
        env = {"DB_USERNAME": user.username, "DB_PASSWORD": user.password.reveal()}
        return reprocess(target, env=env)

    refused = as_login("lmnh_pipeline")
    assert refused.returncode == 8, refused.stderr[-2000:]
    assert "42501" in refused.stderr
    assert moved(as_login("lmnh_reprocess")) == 5
    assert target.query("SELECT count(*) FROM rejected_message") == [(0,)]


def test_two_runs_at_once_share_the_rejects_and_move_each_once(target: Target) -> None:
    values = [visit("6", n % 5, n) for n in range(1000)]
    store_rejects(target, values)
    add_exhibition(target, "EXH_06")
    command = [PYTHON, "-m", "lmnh.reprocess", "--env-file", NO_ENV_FILE, "--batch-size", "20"]
    runs = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            env=dict(target.env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = []
    for process in runs:
        out, err = process.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(command, process.returncode, out, err))
    assert sum(moved(result) for result in results) == 1000
    assert_each_stored_once(target, len(values))
    assert facts_of(target, "EXH_06") == {(0, n) for n in range(1000)}
    assert_rollups_add_up(target)
