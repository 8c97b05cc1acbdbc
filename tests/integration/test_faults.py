"""Faults that real deployments see, each against the real local stack, each ending with an
exact check against the simulator's report: every message stored once, in a fact table or in
rejected_message.

Each test first proves that its fault hit work in flight: at the moment of the fault the
database holds some messages but not all of them (or, under live traffic, messages are still
arriving), so no test can pass because loading had finished before its fault. The default run
injects each fault at a modest scale; the cases marked slow (run with --full) do more."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lmnh.database import connect
from tests.integration.support import (
    Target,
    assert_exactly_once,
    consumed,
    copy_waits_on_a_lock,
    stack,
    start_live_simulator,
    stop_simulator,
    wait_for_members,
    wait_mid_run,
    wait_until,
)

pytestmark = pytest.mark.integration

_TICKS_PER_SECOND = 100  # /proc's clock ticks on Linux
# What the pipeline's consumer group allows between polls in the tests that block it; Kafka's
# clients accept no less than the session timeout, 10 s.
POLL_INTERVAL = {"KAFKA_MAX_POLL_INTERVAL_MS": "10000"}
# How many messages a run of the kill test may store before its kill at most, before the
# overshoot of one poll: five runs use well under half of its 60,000 messages.
KILL_WITHIN = 5_000


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def stop(process: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(timeout=timeout_s)


def end_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """Kill what still runs: a failed assertion must not leave pipelines behind."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()


def service(action: str, name: str) -> None:
    code, output = stack(action, name)
    assert code == 0, output


def assigned(log: Path) -> int:
    """How many partition assignments a member has logged."""
    return log.read_text().count("assigned")


@pytest.mark.parametrize(
    ("kills", "messages"),
    [
        pytest.param(5, 60_000, id="5-kills"),
        pytest.param(20, 300_000, id="20-kills", marks=pytest.mark.slow),
    ],
)
def test_pipeline_killed_at_random_points_loses_and_doubles_nothing(
    target: Target, tmp_path: Path, kills: int, messages: int
) -> None:
    report = target.history(messages, seed=21)
    rng = random.Random()
    for run in range(kills):
        before = target.loaded()
        # Each run in a group of its own: the database, not the group, says where a partition
        # resumes, and a run in the killed one's group would first wait out its session (10 s).
        process = target.start_pipeline(
            tmp_path / "pipeline.log",
            "--group-id",
            f"{target.topic}-run{run}",
            "--batch-size",
            "200",
        )
        # The fault's timing: a random point of the run, by rows stored rather than by time, and
        # within the first KILL_WITHIN messages, so that a fast run cannot finish the topic
        # before its kill (at 60k msg/s, 0.4 s was once the whole rest of it).
        kill_at = before + rng.randint(1, KILL_WITHIN)
        wait_until(lambda at=kill_at: target.loaded() >= at, 60, f"{kill_at} were stored", 0.002)
        assert process.poll() is None, "the run ended by itself before the kill"
        process.kill()
        process.wait()
        loaded = target.loaded()
        assert before < loaded < report["sent"], f"kill {run + 1} did not land mid-run"
        print(f"kill {run + 1}: {loaded} of {report['sent']} stored")  # shown with -rP
    # The rest, in one last run that resumes where the database says and reads nothing twice.
    remaining = report["sent"] - target.loaded()
    final = target.pipeline("--group-id", f"{target.topic}-final", "--limit", str(remaining))
    assert consumed(final.stdout) == remaining
    assert_exactly_once(target, report)


@pytest.mark.usefixtures("local_postgres")
def test_database_restart_mid_run_is_waited_out_without_committing_ahead(
    target: Target, tmp_path: Path
) -> None:
    report = target.history(60_000, seed=22)
    group = f"{target.topic}-group"
    log = tmp_path / "pipeline.log"
    process = target.start_pipeline(log, "--group-id", group, "--batch-size", "500")
    wait_mid_run(target, report["sent"])
    service("down", "postgres")
    try:
        used = cpu_seconds(process.pid)
        time.sleep(6)  # the outage's length: several of the backoff's retries
        assert process.poll() is None, "the pipeline gave up while the database was away"
        assert cpu_seconds(process.pid) - used < 1.5, "the pipeline spun while waiting"
        committed_while_down = target.committed_offsets(group)
    finally:
        service("up", "postgres")
    stored = target.database_offsets()
    for partition, offset in committed_while_down.items():
        assert offset <= stored[partition], "Kafka was committed ahead of the database"
    assert process.wait(timeout=180) == 0, log.read_text()[-3000:]
    # A write failed while the database was away: the outage hit a batch in flight.
    assert "retrying in" in log.read_text()
    assert target.committed_offsets(group) == target.database_offsets()
    assert_exactly_once(target, report)


@pytest.mark.usefixtures("local_postgres")
def test_database_down_at_start_up_is_waited_for(target: Target, tmp_path: Path) -> None:
    report = target.history(5_000, seed=23)
    log = tmp_path / "pipeline.log"
    service("down", "postgres")
    try:
        process = target.start_pipeline(log, "--startup-timeout", "90")
        wait_until(
            lambda: "waiting up to" in log.read_text() or process.poll() is not None,
            60,
            "the pipeline waits for the database",
        )
        assert process.poll() is None, log.read_text()
    finally:
        service("up", "postgres")
    assert process.wait(timeout=120) == 0, log.read_text()[-3000:]
    assert_exactly_once(target, report)


@pytest.mark.usefixtures("local_kafka")
def test_broker_restart_mid_run_is_ridden_out(target: Target, tmp_path: Path) -> None:
    """Kiosk traffic goes on through the restart (the kiosks' producer buffers it): whatever
    the machine's speed, the broker leaves while messages are still arriving."""
    log = tmp_path / "pipeline.log"
    traffic = tmp_path / "simulator.log"
    simulator = start_live_simulator(target, traffic, 2000, seed=24)
    process = target.start_pipeline(log, "--follow", "--batch-size", "500")
    try:
        wait_until(lambda: target.loaded() > 0, 60, "the pipeline stored a first batch")
        service("down", "kafka")
        try:
            assert simulator.poll() is None, "the traffic ended before the broker left"
            time.sleep(3)  # the outage's length
            assert process.poll() is None, log.read_text()[-3000:]
            stored_during_outage = target.loaded()
        finally:
            service("up", "kafka")
        # Fails unless the traffic went on through the restart.
        report = stop_simulator(simulator, traffic)
        assert stored_during_outage < report["sent"]
        target.wait_until_loaded(report["sent"])
        assert stop(process) == 0, log.read_text()[-3000:]
    finally:
        end_all([process])
        if simulator.poll() is None:
            simulator.kill()
            simulator.wait()
    assert "Kafka brokers unreachable" in log.read_text(), "the pipeline never missed the broker"
    assert_exactly_once(target, report)


@pytest.mark.parametrize(
    ("members", "rate"),
    [
        pytest.param(3, 2000, id="3-members"),
        pytest.param(5, 4000, id="5-members", marks=pytest.mark.slow),
    ],
)
def test_rebalance_under_load_keeps_the_totals_exact(
    target: Target, tmp_path: Path, members: int, rate: int
) -> None:
    """Members join one by one, then the first is killed, all while kiosk traffic arrives."""
    group = f"{target.topic}-group"
    options = ("--follow", "--group-id", group, "--batch-size", "500")
    traffic = tmp_path / "simulator.log"
    simulator = start_live_simulator(target, traffic, rate, seed=25)
    logs = [tmp_path / f"member{n}.log" for n in range(members)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for joined, log in enumerate(logs, start=1):
            processes.append(target.start_pipeline(log, *options))
            wait_for_members(target, group, joined)  # the group rebalanced to take it in
        assert target.loaded() > 0, "nothing was stored before the kill"
        processes[0].kill()
        processes[0].wait()
        # Its partitions move to the others once its session (10 s) has expired.
        wait_for_members(target, group, members - 1)
        # Fails unless the traffic went on through every rebalance, the kill included.
        report = stop_simulator(simulator, traffic)
        target.wait_until_loaded(report["sent"])
        for process in processes[1:]:
            assert stop(process) == 0
    finally:
        end_all(processes)
        if simulator.poll() is None:
            simulator.kill()
            simulator.wait()
    texts = [log.read_text() for log in logs]
    assert sum(text.count("revoked") for text in texts) >= members, "the group did not rebalance"
    assert "maximum poll interval" not in "".join(texts).lower()
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
        # Every table a batch may write: a first batch of one request or reject (the first
        # message is taken alone) must wait too.
        cur.execute(
            "LOCK TABLE rating_interaction, request_interaction, rejected_message"
            " IN ACCESS EXCLUSIVE MODE"
        )
    process = target.start_pipeline(log, "--follow", "--group-id", group, env=POLL_INTERVAL)
    try:
        try:
            wait_until(
                lambda: copy_waits_on_a_lock(target), 60, "the pipeline's COPY waits on the lock"
            )
            assert target.loaded() == 0
            peak = 0.0
            # The lock's hold: 15 s from the COPY's first wait, past the 10 s poll interval.
            held_until = time.monotonic() + 15
            while time.monotonic() < held_until:
                assert process.poll() is None, log.read_text()[-3000:]
                peak = max(peak, rss_mb(process.pid))
                time.sleep(0.5)
            assert copy_waits_on_a_lock(target), "the COPY stopped waiting during the hold"
            assert target.loaded() == 0, "something was stored through the lock"
            assert target.committed_offsets(group) == {}, "offsets committed before storing"
        finally:
            locker.rollback()
            locker.close()
        target.wait_until_loaded(report["sent"])
        assert stop(process) == 0, log.read_text()[-3000:]
    finally:
        end_all([process])
    output = log.read_text()
    assert "maximum poll interval" not in output.lower(), "the group expelled the pipeline"
    assert peak < 300, f"memory grew to {peak:.0f} MB while waiting"
    assert_exactly_once(target, report)


def test_a_new_exhibition_is_picked_up_without_a_restart(target: Target, tmp_path: Path) -> None:
    visit = b'{"at": "2026-11-20T12:00:00+00:00", "site": "6", "val": 4}'
    log = tmp_path / "pipeline.log"

    def new_exhibition_ratings() -> int:
        rows = target.query(
            "SELECT count(*) FROM rating_interaction JOIN exhibition USING (exhibition_id)"
            " WHERE public_id = 'EXH_06'"
        )
        return int(rows[0][0])

    process = target.start_pipeline(log, "--follow", "--batch-timeout-ms", "100")
    try:
        target.produce([visit] * 10)
        target.wait_until_loaded(10)
        target.query(
            "INSERT INTO exhibition (exhibition_name, exhibition_description, department_id,"
            " floor_id, exhibition_start_date, public_id)"
            " SELECT 'Deep Time', 'Fossils of the first animals.', department_id, floor_id,"
            " DATE '2024-05-01', 'EXH_06' FROM department, floor"
            " WHERE department_name = 'Paleontology' AND floor_name = '2' RETURNING 1"
        )
        # The pipeline reloads its reference data when a message names an unknown exhibition,
        # at most every 5 s: send one visit at a time until one is stored as a rating.
        probes = 0

        def picked_up() -> bool:
            nonlocal probes
            target.produce([visit])
            probes += 1
            target.wait_until_loaded(10 + probes)
            return new_exhibition_ratings() > 0

        wait_until(picked_up, 30, "a visit to the new exhibition was stored", 0.2)
        target.produce([visit] * 10)
        target.wait_until_loaded(20 + probes)
        assert stop(process) == 0, log.read_text()[-3000:]
    finally:
        end_all([process])
    assert "reference data changed: 7 exhibitions" in log.read_text()
    # The visits before the exhibition existed, and the probes sent before it was picked up.
    assert target.query("SELECT reason_code, count(*) FROM rejected_message GROUP BY 1") == [
        ("invalid_site", 10 + probes - 1)
    ]
    assert new_exhibition_ratings() == 11


@pytest.mark.usefixtures("local_postgres")
def test_a_rebalance_while_the_database_is_down_expels_no_one(
    target: Target, tmp_path: Path
) -> None:
    """Rebalance callbacks must not wait for the database: members that give up or take
    partitions while it is down would miss the group's deadline and be expelled in a loop."""
    group = f"{target.topic}-group"
    options = ("--follow", "--group-id", group, "--batch-size", "500")
    traffic = tmp_path / "simulator.log"
    simulator = start_live_simulator(target, traffic, 1000, seed=27)
    logs = [tmp_path / f"member{n}.log" for n in range(3)]
    processes = [target.start_pipeline(log, *options, env=POLL_INTERVAL) for log in logs]
    try:
        wait_for_members(target, group, 3)
        wait_until(
            lambda: all(assigned(log) for log in logs), 60, "every member logged its partitions"
        )
        wait_until(lambda: target.loaded() > 0, 60, "the members stored a first batch")
        service("down", "postgres")
        try:
            processes[0].kill()  # its partitions move to the others once its session expires
            processes[0].wait()
            before = [assigned(log) for log in logs[1:]]
            wait_until(
                lambda: all(assigned(log) > b for log, b in zip(logs[1:], before, strict=True)),
                60,
                "the survivors took the dead member's partitions",
                0.2,
            )
            time.sleep(14)  # the outage's length after the rebalance: past a 10 s poll interval
            assert all(p.poll() is None for p in processes[1:]), "a member gave up"
            during = "".join(log.read_text() for log in logs[1:])
        finally:
            service("up", "postgres")
        # Fails unless kiosk traffic went on through the whole outage: there was work in flight.
        report = stop_simulator(simulator, traffic)
        after_outage = [assigned(log) for log in logs[1:]]
        assert all(n <= b + 2 for n, b in zip(after_outage, before, strict=True)), "reassigned"
        # The callback did not wait for the database: it took the partitions paused.
        assert "paused: no start offsets yet" in during
        target.wait_until_loaded(report["sent"])
        for process in processes[1:]:
            assert stop(process) == 0
    finally:
        end_all(processes)
        if simulator.poll() is None:
            simulator.kill()
            simulator.wait()
    after = "".join(log.read_text() for log in logs[1:])
    assert "maximum poll interval" not in after.lower(), "the group expelled a member"
    assert_exactly_once(target, report)
