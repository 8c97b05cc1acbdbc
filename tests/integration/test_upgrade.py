"""The upgrade of a loaded database from an earlier release, while kiosks keep sending.

A release from before versioned migrations, built from git, makes the database with its own
schema command, loads a simulated history with its own pipeline and follows live traffic.
This checkout's pipeline refuses that database (no schema version); `lmnh-schema apply`
upgrades it while the old pipeline loads and the messages keep arriving; the old pipeline is
stopped and this checkout's goes on from where it stopped: every message stored exactly once,
the dashboards' numbers for the history unchanged.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from dashboard import queries
from dashboard.filters import Filters
from lmnh.config import Settings
from lmnh.database import applied_migrations, connect
from lmnh.errors import ExitCode
from lmnh.schema_version import APPLY_COMMAND, EXPECTED
from tests.integration.conftest import fresh_target
from tests.integration.dashboard_support import count_the_facts
from tests.integration.support import (
    NO_ENV_FILE,
    PYTHON,
    ROOT,
    Target,
    high_watermarks,
    run,
    start_live_simulator,
    stop_simulator,
    stored_coordinates,
    wait_until,
)

pytestmark = pytest.mark.integration

# The last commit before versioned migrations that the benchmarks also compare against: its
# schema is made by `python -m stack schema` from the three idempotent files, with no ledger.
EARLIER_RELEASE = "3bf749a"
HISTORY = 3000
PARTITIONS = 6
# The history's London dates (tests.integration.support.HISTORY_UNTIL, 60 days back): the live
# kiosks send today's, after them.
HISTORY_FILTERS = Filters(start=date(2026, 9, 1), end=date(2026, 11, 20))
CHARTS = (
    queries.rating_over_time,
    queries.popularity,
    queries.top_rated,
    queries.request_share,
    queries.requests_by_time_of_day,
    queries.requests_by_floor,
    queries.requests_by_exhibition,
    queries.request_heatmap,
)


@pytest.fixture
def earlier_release(tmp_path: Path) -> Path:
    """The earlier release's files, from git (an archive: the checkout's git state is not
    touched)."""
    code = tmp_path / f"at-{EARLIER_RELEASE}"
    code.mkdir()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", EARLIER_RELEASE],
        cwd=ROOT,
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive.stdout, check=True)
    return code


@pytest.fixture
def bare_target(settings: Settings) -> Iterator[Target]:
    yield from fresh_target(settings, schema=False)


def _in(code: Path, target: Target, *args: str) -> subprocess.CompletedProcess[str]:
    """One of the earlier release's commands, from its own files."""
    return subprocess.run(
        [PYTHON, *args],
        cwd=code,
        env={**target.env, "PYTHONPATH": str(code)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _upgrade(target: Target) -> int:
    """`lmnh-schema apply` of this checkout; the messages loaded then."""
    upgraded = run([sys.executable, "-m", "lmnh.schema", "apply"], target.env)
    assert upgraded.returncode == 0, upgraded.stderr[-2000:]
    conn = connect(target.settings.database)
    try:
        assert applied_migrations(conn) == list(EXPECTED)
    finally:
        conn.close()
    return target.loaded()


def _charts(target: Target, *, from_facts: bool = False) -> dict[str, Any]:
    """The charts of the history; `from_facts`: counted from the facts (an earlier release
    lacks rollups that this checkout's charts read)."""
    conn = connect(target.settings.database)
    try:
        with conn, conn.cursor() as cur:
            if from_facts:
                count_the_facts(cur)
            return {chart.__name__: chart(cur, HISTORY_FILTERS) for chart in CHARTS}
    finally:
        conn.close()


def test_a_loaded_database_of_an_earlier_release_upgrades_while_messages_arrive(
    earlier_release: Path, bare_target: Target, tmp_path: Path
) -> None:
    target = bare_target
    made = _in(earlier_release, target, "-m", "stack", "schema", "--env-file", NO_ENV_FILE)
    assert made.returncode == 0, made.stderr[-2000:]
    history = target.history(HISTORY, 22)
    assert history["sent"] == HISTORY
    loaded = _in(
        earlier_release,
        target,
        "kafka_pipeline.py",
        "--topic",
        target.topic,
        "--from-beginning",
        "--env-file",
        NO_ENV_FILE,
        "--idle-timeout",
        "3",
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert target.loaded() == HISTORY
    charts_before = _charts(target, from_facts=True)
    assert charts_before["popularity"], "the history shows on the dashboards"

    live_log = tmp_path / "simulator.log"
    simulator = start_live_simulator(target, live_log, rate=100, seed=23)
    old_log = tmp_path / "old-pipeline.log"
    with old_log.open("ab") as sink:
        # --from-beginning, as that release's unit ran it: without, it started a partition its
        # database had never loaded at the newest message, and one that the history happened
        # to leave empty would lose its first live messages.
        following = subprocess.Popen(
            [
                PYTHON,
                "kafka_pipeline.py",
                "--topic",
                target.topic,
                "--env-file",
                NO_ENV_FILE,
                "--follow",
                "--from-beginning",
            ],
            cwd=earlier_release,
            env={**target.env, "PYTHONPATH": str(earlier_release)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: target.loaded() > HISTORY + 100, 120, "the old release follows", 0.2)
        refused = target.pipeline("--limit", "1", check=False)
        assert refused.returncode == ExitCode.SCHEMA_MISSING, refused.stderr[-2000:]
        assert f"run `{APPLY_COMMAND}`" in refused.stderr

        # The upgrade, while the old release loads and the kiosks send.
        upgraded_at = _upgrade(target)
        wait_until(lambda: target.loaded() > upgraded_at + 100, 120, "the old one goes on", 0.2)
    finally:
        following.send_signal(signal.SIGTERM)
        assert following.wait(90) == 0, old_log.read_text()[-2000:]
    stopped_at = target.database_offsets()

    new_log = tmp_path / "new-pipeline.log"
    pipeline = target.start_pipeline(new_log, "--follow")
    try:
        wait_until(lambda: target.loaded() > sum(stopped_at.values()) + 100, 120, "resumed", 0.2)
        live = stop_simulator(simulator, live_log)
        total = HISTORY + live["sent"]
        target.wait_until_loaded(total, 120)
    finally:
        if simulator.poll() is None:
            simulator.kill()
        pipeline.send_signal(signal.SIGTERM)
        assert pipeline.wait(90) == 0, new_log.read_text()[-2000:]

    coordinates = stored_coordinates(target)
    assert len(coordinates) == len(set(coordinates)), "a message was stored twice"
    # Every offset of every partition, from 0 to its end, once: nothing lost, and the new
    # pipeline began each partition exactly where the old one had stopped.
    ends = high_watermarks(target, PARTITIONS)
    assert sorted(coordinates) == [(p, o) for p in sorted(ends) for o in range(ends[p])]
    assert len(coordinates) == total
    assert _charts(target) == charts_before
    print(
        f"upgrade from {EARLIER_RELEASE}: history {HISTORY}, loaded at the upgrade {upgraded_at},"
        f" when the old release stopped {sum(stopped_at.values())}, in all {total}; the charts"
        f" of the history ({', '.join(charts_before)}) unchanged"
    )
