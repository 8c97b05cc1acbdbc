"""Simulator -> real broker -> kafka_pipeline.py -> real PostgreSQL, checked against the
simulator's own report of what the broker acknowledged."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from psycopg2 import sql

from lmnh.database import execute_outside_transaction
from tests.integration.support import (
    NO_ENV_FILE,
    PYTHON,
    Target,
    assert_exactly_once,
    consumed,
    replayed,
    run,
    stored_coordinates,
    wait_for_members,
    wait_mid_run,
)

pytestmark = pytest.mark.integration


def test_seeded_run_matches_the_simulator_report_exactly(target: Target) -> None:
    report = target.history(50_000, seed=1)
    result = target.pipeline()
    assert consumed(result.stdout) == 50_000
    assert_exactly_once(target, report)
    # The Feed page's account: caught up on every partition, each message counted once.
    offsets = target.query("SELECT next_offset, high_watermark FROM kafka_offset")
    assert offsets and all(high == loaded for loaded, high in offsets)
    assert target.query("SELECT sum(messages)::int FROM load_minute") == [(50_000,)]


def test_two_processes_in_one_group_store_each_message_once(target: Target, tmp_path: Path) -> None:
    group = f"{target.topic}-group"
    logs = [tmp_path / f"member{n}.log" for n in range(2)]
    processes = [target.start_pipeline(log, "--follow", "--group-id", group) for log in logs]
    try:
        # The broker's account: both have joined the group and share the six partitions.
        wait_for_members(target, group, 2)
        report = target.history(30_000, seed=3)
        target.wait_until_loaded(report["sent"])
        codes = [stop(process) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    summaries = [summary(log) for log in logs]
    for code, log, said in zip(codes, logs, summaries, strict=True):
        assert code == 0, log.read_text()[-2000:]
        assert consumed(said) > 0, "one process got no partition"
    assert sum(consumed(said) - replayed(said) for said in summaries) == report["sent"]
    assert_exactly_once(target, report)


def test_limit_stops_after_exactly_n_and_the_next_run_continues(target: Target) -> None:
    report = target.history(1_000, seed=4)
    for run_number in (1, 2):
        result = target.pipeline("--limit", "300")
        assert consumed(result.stdout) == 300
        coordinates = stored_coordinates(target)
        assert len(coordinates) == len(set(coordinates)) == 300 * run_number
        # Each partition holds a gap-free prefix: the run went on from where the last stopped.
        by_partition: dict[int, list[int]] = {}
        for partition, offset in coordinates:
            by_partition.setdefault(partition, []).append(offset)
        for offsets in by_partition.values():
            assert sorted(offsets) == list(range(len(offsets)))
    target.pipeline()
    assert_exactly_once(target, report)


def test_the_original_command_on_a_fresh_database_loads_the_topics_history(
    target: Target,
) -> None:
    """`python kafka_pipeline.py --topic lmnh --limit N`, as the original design runs it: a
    partition the database has never loaded starts at the oldest message, whatever the group
    committed to Kafka; `--from-newest` starts it at the newest instead."""
    report = target.history(400, seed=9)
    command = [PYTHON, "kafka_pipeline.py", "--topic", target.topic, "--env-file", NO_ENV_FILE]
    newest = run([*command, "--from-newest", "--idle-timeout", "2"], target.env)
    assert newest.returncode == 0, newest.stderr[-3000:]
    assert (consumed(newest.stdout), target.loaded()) == (0, 0)
    original = run([*command, "--limit", "150"], target.env)
    assert original.returncode == 0, original.stderr[-3000:]
    assert consumed(original.stdout) == 150
    assert_each_partition_from_its_first_message(target)
    target.pipeline("--idle-timeout", "2")
    assert_exactly_once(target, report)
    # The database forgets what it loaded (a new one, or one reset) while the group's commits
    # in Kafka stay at the end: the database decides, and the history is loaded again.
    execute_outside_transaction(
        target.settings.database,
        sql.SQL(
            "TRUNCATE rating_interaction, request_interaction, rejected_message, kafka_offset,"
            " load_minute"
        ),
    )
    again = run([*command, "--limit", "100"], target.env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert consumed(again.stdout) == 100
    assert_each_partition_from_its_first_message(target)


def assert_each_partition_from_its_first_message(target: Target) -> None:
    """What is stored of each partition is a gap-free run from its first offset."""
    by_partition: dict[int, list[int]] = {}
    for partition, offset in stored_coordinates(target):
        by_partition.setdefault(partition, []).append(offset)
    for offsets in by_partition.values():
        assert sorted(offsets) == list(range(len(offsets)))


def test_sigterm_finishes_the_batch_in_hand_commits_and_exits_cleanly(
    target: Target, tmp_path: Path
) -> None:
    report = target.history(60_000, seed=6)
    group = f"{target.topic}-group"
    log = tmp_path / "pipeline.log"
    process = target.start_pipeline(log, "--follow", "--group-id", group, "--batch-size", "500")
    try:
        wait_mid_run(target, report["sent"])
        assert stop(process, timeout_s=30) == 0, log.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stored = target.loaded()
    assert 0 < stored < report["sent"], "the stop did not land mid-run"
    assert consumed(summary(log)) == stored == len(stored_coordinates(target))
    # What is stored is exactly what the group committed to Kafka.
    assert target.committed_offsets(group) == target.database_offsets()
    target.pipeline("--group-id", group)
    assert_exactly_once(target, report)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
    """SIGTERM: the pipeline finishes the batch in hand and exits; its exit code."""
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout_s)


def summary(log: Path) -> str:
    """The pipeline's closing summary line (on stdout, merged into its log)."""
    lines = [line for line in log.read_text().splitlines() if line.startswith("consumed ")]
    assert lines, log.read_text()[-2000:]
    return lines[-1]
