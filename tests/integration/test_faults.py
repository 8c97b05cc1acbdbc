"""Faults that real deployments see, each against the real local stack, each ending with an
exact check against the simulator's report: every message stored once, in a fact table or in
rejected_message. The default run injects each fault a few times; `--full` does more."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lmnh.database import connect
from tests.integration.support import (
    NO_ENV_FILE,
    PYTHON,
    ROOT,
    Target,
    assert_exactly_once,
    stack,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_TICKS_PER_SECOND = 100  # /proc's clock ticks on Linux


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def wait_for_progress(target: Target, before: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while target.loaded() == before:
        assert time.monotonic() < deadline, "the pipeline made no progress"
        time.sleep(0.05)


def stop(process: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout_s)


def service(action: str, name: str) -> None:
    code, output = stack(action, name)
    assert code == 0, output


def test_pipeline_killed_at_random_points_loses_and_doubles_nothing(
    target: Target, tmp_path: Path, full: bool
) -> None:
    kills = 20 if full else 10
    report = target.history(200_000 if full else 100_000, seed=21)
    rng = random.Random()
    for _ in range(kills):
        before = target.loaded()
        process = target.start_pipeline(tmp_path / "pipeline.log", "--batch-size", "200")
        wait_for_progress(target, before)
        time.sleep(rng.uniform(0.0, 0.4))
        process.kill()
        process.wait()
        assert target.loaded() < report["sent"], "the kill did not land mid-run"
    target.pipeline()
    assert_exactly_once(target, report)


def test_database_restart_mid_run_is_waited_out_without_committing_ahead(
    target: Target, tmp_path: Path
) -> None:
    report = target.history(80_000, seed=22)
    group = f"{target.topic}-group"
    log = tmp_path / "pipeline.log"
    process = target.start_pipeline(log, "--group-id", group, "--batch-size", "500")
    wait_for_progress(target, 0)
    service("down", "postgres")
    try:
        used = cpu_seconds(process.pid)
        time.sleep(6)
        assert process.poll() is None, "the pipeline gave up while the database was away"
        assert cpu_seconds(process.pid) - used < 1.5, "the pipeline spun while waiting"
        committed_while_down = target.committed_offsets(group)
    finally:
        service("up", "postgres")
    stored = target.database_offsets()
    for partition, offset in committed_while_down.items():
        assert offset <= stored[partition], "Kafka was committed ahead of the database"
    assert process.wait(timeout=180) == 0, log.read_text()[-3000:]
    assert "retrying in" in log.read_text()
    assert target.committed_offsets(group) == target.database_offsets()
    assert_exactly_once(target, report)


def test_database_down_at_start_up_is_waited_for(target: Target, tmp_path: Path) -> None:
    report = target.history(5_000, seed=23)
    log = tmp_path / "pipeline.log"
    service("down", "postgres")
    try:
        process = target.start_pipeline(log, "--startup-timeout", "90")
        time.sleep(4)
        assert process.poll() is None, log.read_text()
    finally:
        service("up", "postgres")
    assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert_exactly_once(target, report)


def test_broker_restart_mid_run_is_ridden_out(target: Target, tmp_path: Path) -> None:
    report = target.history(80_000, seed=24)
    log = tmp_path / "pipeline.log"
    process = target.start_pipeline(log, "--follow", "--batch-size", "500")
    wait_for_progress(target, 0)
    service("down", "kafka")
    try:
        time.sleep(3)
        assert process.poll() is None, log.read_text()[-3000:]
    finally:
        service("up", "kafka")
    target.wait_until_loaded(report["sent"])
    assert stop(process) == 0, log.read_text()[-3000:]
    assert_exactly_once(target, report)


def test_rebalance_under_load_keeps_the_totals_exact(target: Target, tmp_path: Path) -> None:
    group = ("--follow", "--group-id", f"{target.topic}-group", "--batch-size", "500")
    simulator = subprocess.Popen(
        [
            PYTHON,
            "kiosk_simulator.py",
            "--topic",
            target.topic,
            "--env-file",
            NO_ENV_FILE,
            "--rate",
            "3000",
            "--count",
            "75000",
            "--seed",
            "25",
        ],
        cwd=ROOT,
        env=dict(target.env),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    processes = [target.start_pipeline(tmp_path / "first.log", *group)]
    for name in ("second", "third"):
        time.sleep(5)
        processes.append(target.start_pipeline(tmp_path / f"{name}.log", *group))
    time.sleep(5)
    processes[0].kill()
    processes[0].wait()
    stdout, _ = simulator.communicate(timeout=120)
    report = json.loads(stdout)
    target.wait_until_loaded(report["sent"])
    for process in processes[1:]:
        assert stop(process) == 0
    logs = "".join(path.read_text() for path in tmp_path.glob("*.log"))
    assert logs.count("revoked") >= 3, "the group did not rebalance"
    assert_exactly_once(target, report)


def test_a_locked_table_is_waited_for_without_leaving_the_group(
    target: Target, tmp_path: Path
) -> None:
    """A lock held past max.poll.interval.ms: the pipeline must keep polling meanwhile."""
    report = target.history(40_000, seed=26)
    group = f"{target.topic}-group"
    log = tmp_path / "pipeline.log"
    locker = connect(target.settings.database)
    with locker.cursor() as cur:
        cur.execute("LOCK TABLE rating_interaction IN ACCESS EXCLUSIVE MODE")
    try:
        process = target.start_pipeline(
            log,
            "--group-id",
            group,
            "--idle-timeout",
            "20",
            env={"KAFKA_MAX_POLL_INTERVAL_MS": "10000"},
        )
        peak = 0.0
        for _ in range(25):  # 25 s: well past the 10 s poll interval
            time.sleep(1)
            assert process.poll() is None, log.read_text()[-3000:]
            peak = max(peak, rss_mb(process.pid))
        assert target.committed_offsets(group) == {}, "offsets committed before storing"
    finally:
        locker.rollback()
        locker.close()
    assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
    output = log.read_text()
    assert "maximum poll interval" not in output.lower(), "the group expelled the pipeline"
    assert peak < 300, f"memory grew to {peak:.0f} MB while waiting"
    assert_exactly_once(target, report)


def test_a_new_exhibition_is_picked_up_without_a_restart(target: Target, tmp_path: Path) -> None:
    visit = b'{"at": "2026-11-20T12:00:00+00:00", "site": "6", "val": 4}'
    log = tmp_path / "pipeline.log"
    process = target.start_pipeline(log, "--follow", "--batch-timeout-ms", "100")
    target.produce([visit] * 10)
    target.wait_until_loaded(10)
    target.query(
        "INSERT INTO exhibition (exhibition_name, exhibition_description, department_id,"
        " floor_id, exhibition_start_date, public_id)"
        " SELECT 'Deep Time', 'Fossils of the first animals.', department_id, floor_id,"
        " DATE '2024-05-01', 'EXH_06' FROM department, floor"
        " WHERE department_name = 'Paleontology' AND floor_name = '2' RETURNING 1"
    )
    time.sleep(6)  # past the reference refresh interval
    target.produce([visit] * 10)
    target.wait_until_loaded(20)
    assert stop(process) == 0, log.read_text()[-3000:]
    assert target.query("SELECT reason_code, count(*) FROM rejected_message GROUP BY 1") == [
        ("invalid_site", 10)
    ]
    assert target.query(
        "SELECT count(*) FROM rating_interaction JOIN exhibition USING (exhibition_id)"
        " WHERE public_id = 'EXH_06'"
    ) == [(10,)]


def test_a_rebalance_while_the_database_is_down_expels_no_one(
    target: Target, tmp_path: Path
) -> None:
    """Rebalance callbacks must not wait for the database: members that give up or take
    partitions while it is down would miss the group's deadline and be expelled in a loop."""
    report = target.history(100_000, seed=27)
    group = ("--follow", "--group-id", f"{target.topic}-group", "--batch-size", "500")
    poll_interval = {"KAFKA_MAX_POLL_INTERVAL_MS": "10000"}
    logs = [tmp_path / f"member{n}.log" for n in range(3)]
    processes = [target.start_pipeline(log, *group, env=poll_interval) for log in logs]
    try:
        deadline = time.monotonic() + 60
        while not all("assigned" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, "the members never all had partitions"
            time.sleep(0.2)
        service("down", "postgres")
        try:
            processes[0].kill()  # its partitions move to the others once its session expires
            processes[0].wait()
            before = [log.read_text().count("assigned") for log in logs[1:]]
            deadline = time.monotonic() + 60
            while [log.read_text().count("assigned") for log in logs[1:]] == before:
                assert time.monotonic() < deadline, "the group did not rebalance"
                time.sleep(0.2)
            time.sleep(25)  # the outage goes on, well past two poll intervals after it
            assert all(p.poll() is None for p in processes[1:]), "a member gave up"
            during = "".join(log.read_text() for log in logs[1:])
        finally:
            service("up", "postgres")
        assigned = [log.read_text().count("assigned") for log in logs[1:]]
        assert all(n <= b + 2 for n, b in zip(assigned, before, strict=True)), "reassigned"
        # The callback did not wait for the database: it took the partitions paused.
        assert "paused: no start offsets yet" in during
        target.wait_until_loaded(report["sent"])
        for process in processes[1:]:
            assert stop(process) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    after = "".join(log.read_text() for log in logs[1:])
    assert "maximum poll interval" not in after.lower(), "the group expelled a member"
    assert_exactly_once(target, report)
