"""Simulator -> real broker -> kafka_pipeline.py -> real PostgreSQL, checked against the
simulator's own report of what the broker acknowledged."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.integration.support import (
    ROOT,
    Target,
    assert_exactly_once,
    consumed,
    replayed,
    stored_coordinates,
)

pytestmark = pytest.mark.integration


def test_seeded_run_matches_the_simulator_report_exactly(target: Target) -> None:
    report = target.history(50_000, seed=1)
    result = target.pipeline()
    assert consumed(result.stdout) == 50_000
    assert_exactly_once(target, report)


def test_two_processes_in_one_group_store_each_message_once(target: Target) -> None:
    command = target.pipeline_command("--group-id", f"{target.topic}-group", "--idle-timeout", "8")
    processes = [
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
    time.sleep(5)  # both have joined the group and share the six partitions
    report = target.history(30_000, seed=3)
    outputs = [process.communicate(timeout=120) for process in processes]
    for process, (stdout, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-2000:]
        assert consumed(stdout) > 0, "one process got no partition"
    assert sum(consumed(stdout) - replayed(stdout) for stdout, _ in outputs) == report["sent"]
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


def test_sigterm_finishes_the_batch_in_hand_commits_and_exits_cleanly(target: Target) -> None:
    report = target.history(60_000, seed=6)
    group = f"{target.topic}-group"
    process = subprocess.Popen(
        target.pipeline_command("--follow", "--group-id", group, "--batch-size", "500"),
        cwd=ROOT,
        env=dict(target.env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while target.loaded() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr[-2000:]
    stored = target.loaded()
    assert 0 < stored < report["sent"], "the stop did not land mid-run"
    assert consumed(stdout) == stored == len(stored_coordinates(target))
    # What is stored is exactly what the group committed to Kafka.
    assert target.committed_offsets(group) == target.database_offsets()
    target.pipeline("--group-id", group)
    assert_exactly_once(target, report)
