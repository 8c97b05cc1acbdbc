"""deploy/prometheus/ against a real Prometheus (Debian's prometheus package, which
./run_tests.sh installs as root): the rules and the configuration pass promtool's checks, every
alert passes its unit tests, and Prometheus scraping a running pipeline sees exactly what the
simulator sent and the database holds, while /health says 200 as the pipeline loads and 503
once storing has stalled on a locked table."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lmnh.database import connect
from lmnh.museum import KIOSK_REFERENCE, in_opening_hours
from simulator.traffic import report_counts
from tests.deploy.conftest import get_json
from tests.integration.support import (
    ROOT,
    Target,
    copy_waits_on_a_lock,
    database_counts,
    free_port,
    start_live_simulator,
    stop_simulator,
    wait_until,
)

RULES = ROOT / "deploy" / "prometheus"
# A valid rating (EXH_01, 3 "Good"), during opening hours, in the past.
RATING = b'{"at": "2026-11-20T12:00:00+00:00", "site": "1", "val": 3}'


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is missing: Debian's prometheus package (./run_tests.sh as root)")
    return path


def promtool(*args: str, cwd: Path = RULES) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, check=False
    )


def installed(config: Path) -> None:
    """deploy/prometheus/'s configuration and rules in `config`, with the file that holds the
    dashboard's scrape token, as an installation has them."""
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(RULES / name, config / name)
    (config / "dashboard-metrics-token").write_text("a-scrape-token-of-at-least-32-characters")


def test_the_rules_and_the_configuration_pass_promtool_checks(tmp_path: Path) -> None:
    rules = promtool("check", "rules", "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    installed(tmp_path)
    config = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert config.returncode == 0, config.stdout + config.stderr


def test_every_alert_fires_and_holds_back_in_its_promtool_unit_tests() -> None:
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = re.findall(r"^\s*- alert: (\w+)$", (RULES / "alerts.yml").read_text(), re.M)
    tests = (RULES / "alerts.test.yml").read_text()
    for alert in alerts:
        cases = re.findall(rf"alertname: {alert}\n\s*exp_alerts:(.*)", tests)
        assert "" in cases, f"{alert} has no case where it fires"
        assert " []" in cases, f"{alert} has no case where it does not fire"
    assert len(alerts) == 8


def status_of(url: str) -> int:
    """The HTTP status of a GET, 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - local http
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


@dataclass(frozen=True)
class Prometheus:
    url: str
    pipeline_port: int  # where its lmnh-pipeline job scrapes

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        status, body = get_json(
            f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
        )
        assert status == 200, body
        return [(r["metric"], float(r["value"][1])) for r in body["data"]["result"]]

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return result[0][1] if len(result) == 1 else None

    def by(self, label: str, promql: str) -> dict[str, float]:
        return {metric[label]: value for metric, value in self.query(promql)}


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Prometheus]:
    """deploy/prometheus/'s configuration and rules, run by a real Prometheus (1 s scrapes and
    rule evaluations), with its storage in a temporary folder and the pipeline's target on a
    free port."""
    binary = tool("prometheus")
    config = tmp_path / "prometheus"
    (config / "targets").mkdir(parents=True)
    installed(config)
    pipeline_port, port = free_port(), free_port()
    targets = [{"targets": [f"127.0.0.1:{pipeline_port}"]}]
    (config / "targets" / "lmnh-pipeline.json").write_text(json.dumps(targets))
    (config / "targets" / "lmnh-dashboard.json").write_text("[]")
    with (tmp_path / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        ready = f"{url}/-/ready"
        wait_until(
            lambda: process.poll() is not None or status_of(ready) == 200,
            30,
            "Prometheus is ready",
            0.2,
        )
        assert process.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
        yield Prometheus(url, pipeline_port)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.integration
def test_prometheus_sees_what_the_pipeline_stored_and_health_follows_storing(
    target: Target, prometheus: Prometheus, tmp_path: Path
) -> None:
    health = f"http://127.0.0.1:{prometheus.pipeline_port}/health"
    log = tmp_path / "pipeline.log"
    process = target.start_pipeline(
        log,
        "--follow",
        "--metrics-port",
        str(prometheus.pipeline_port),
        "--health-stall-seconds",
        "3",
    )
    try:
        wait_until(lambda: get_json(health)[0] == 200, 60, "the pipeline is healthy", 0.2)
        report = load_live_traffic_checking_health(target, health, tmp_path)
        target.wait_until_loaded(report["sent"])
        expected = report_counts(report)
        assert database_counts(target) == expected
        assert_prometheus_sees(prometheus, target, expected, report["sent"])

        stall_on_a_locked_table(target, health, prometheus)
        wait_until(lambda: get_json(health)[0] == 200, 15, "healthy once stored", 0.2)
        target.wait_until_loaded(report["sent"] + len(STALLED))
        ratings = sum(expected["ratings"].values()) + len(STALLED)
        wait_until(
            lambda: prometheus.by("kind", STORED).get("rating") == ratings,
            10,
            "Prometheus sees the ratings stored after the stall",
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


STORED = "lmnh_pipeline_messages_stored_total"
STALLED = [RATING] * 50


def load_live_traffic_checking_health(target: Target, health: str, tmp_path: Path) -> Any:
    """Live kiosk traffic for a few seconds, /health asked all along: 200 each time, while the
    database's count grows. Returns the simulator's report."""
    simulator = start_live_simulator(target, tmp_path / "simulator.log", rate=1000, seed=61)
    try:
        wait_until(lambda: target.loaded() > 0, 30, "the pipeline stored a first batch")
        loaded_before = target.loaded()
        answers = []
        for _ in range(8):
            answers.append(get_json(health))
            time.sleep(0.25)
        loaded_after = target.loaded()
    finally:
        report = stop_simulator(simulator, tmp_path / "simulator.log")
    assert loaded_after > loaded_before, "the pipeline was not loading meanwhile"
    assert [status for status, _ in answers] == [200] * len(answers), answers
    assert {body["group"] for _, body in answers} == {"member"}
    return report


def assert_prometheus_sees(
    prometheus: Prometheus, target: Target, expected: dict[str, Any], sent: int
) -> None:
    """Through Prometheus's API: the counters equal the simulator's report (and so what the
    database holds), the consumer's gauges say caught up, and every rule evaluates."""
    consumed = "sum(lmnh_pipeline_messages_consumed_total)"
    wait_until(lambda: prometheus.value(consumed) == sent, 20, "Prometheus scraped it all")
    # A batch is counted as stored once the loop has handed over the next (or found none),
    # a moment after its commit: a scrape may fall in between.
    stored = {
        "rating": sum(expected["ratings"].values()),
        "request": sum(expected["requests"].values()),
    }
    wait_until(lambda: prometheus.by("kind", STORED) == stored, 10, "Prometheus sees it stored")
    rejected = prometheus.by("reason", "lmnh_pipeline_messages_rejected_total")
    assert {code: n for code, n in rejected.items() if n} == expected["rejected"]
    assert prometheus.value("lmnh_pipeline_batch_size_messages_sum") == sent
    # Per exhibition: the facts the simulator sent, the rejects by the exhibition the database
    # says they named; every known exhibition exported, at 0 when it had none.
    sites = "lmnh_pipeline_site_messages_total"
    by_site = database_sites(target)
    wait_until(
        lambda: (
            {(m["exhibition"], m["outcome"]): n for m, n in prometheus.query(sites) if n} == by_site
        ),
        10,
        "Prometheus sees each exhibition's messages",
    )
    stored_by_site: dict[str, int] = {}
    for kind in ("ratings", "requests"):
        for (public_id, _value), n in expected[kind].items():
            stored_by_site[public_id] = stored_by_site.get(public_id, 0) + n
    assert {site: n for (site, outcome), n in by_site.items() if outcome == "stored"} == (
        stored_by_site
    )
    exported = {(m["exhibition"], m["outcome"]) for m, _ in prometheus.query(sites)}
    assert len(exported) == 2 * (len(KIOSK_REFERENCE.exhibition_start) + 1)  # and unknown
    assert prometheus.value('up{job="lmnh-pipeline"}') == 1
    assert prometheus.value("lmnh_pipeline_consumer_assigned") == 1
    partitions = target.settings.topic_partitions
    assert prometheus.value("lmnh_pipeline_assigned_partitions") == partitions
    lag = "sum(lmnh_pipeline_consumer_lag_messages)"
    wait_until(lambda: prometheus.value(lag) == 0, 10, "the lag is zero once caught up")
    assert len(prometheus.query("lmnh_pipeline_consumer_lag_messages")) == partitions
    _, rules = get_json(f"{prometheus.url}/api/v1/rules")
    evaluated = [rule for group in rules["data"]["groups"] for rule in group["rules"]]
    assert len(evaluated) == 14
    assert [rule for rule in evaluated if rule["health"] != "ok"] == []
    # A recording rule's first sample appears one evaluation after its input series does.
    wait_until(
        lambda: prometheus.value("lmnh:museum_open") is not None, 10, "the rule has a sample"
    )
    open_before = in_opening_hours(datetime.now(UTC))
    museum_open = prometheus.value("lmnh:museum_open")
    if open_before == in_opening_hours(datetime.now(UTC)):  # not at 08:45 or 18:15 sharp
        assert museum_open == int(open_before)


def database_sites(target: Target) -> dict[tuple[str, str], int]:
    """(exhibition, outcome) -> messages, as the database holds them: facts by their
    exhibition, rejects by the one they named ("unknown" for none)."""
    conn = connect(target.settings.database)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT e.public_id, 'stored', count(*) FROM ("
                "  SELECT exhibition_id FROM rating_interaction"
                "  UNION ALL SELECT exhibition_id FROM request_interaction) AS f"
                " JOIN exhibition AS e USING (exhibition_id) GROUP BY 1"
                " UNION ALL SELECT coalesce(named_exhibition, 'unknown'), 'rejected', count(*)"
                " FROM rejected_message GROUP BY 1"
            )
            return {(site, outcome): int(n) for site, outcome, n in cur.fetchall()}
    finally:
        conn.close()


def stall_on_a_locked_table(target: Target, health: str, prometheus: Prometheus) -> None:
    """A batch waits on a locked table past --health-stall-seconds (3 s): /health answers 503
    saying the pipeline is in its group but stalled, and since when, and Prometheus sees it
    unhealthy and how long messages have waited.
    The lock is taken by a test connection; the shared server is never stopped."""
    locker = connect(target.settings.database)
    try:
        with locker.cursor() as cur:
            cur.execute("LOCK TABLE rating_interaction IN ACCESS EXCLUSIVE MODE")
        target.produce(STALLED)
        wait_until(lambda: copy_waits_on_a_lock(target), 30, "the COPY waits on the lock")
        wait_until(lambda: get_json(health)[0] == 503, 15, "/health says it stalled", 0.2)
        status, body = get_json(health)
        assert (status, body["group"], body["storing"]) == (503, "member", False), body
        assert body["status"] == "stalled", body
        assert body["batch_waiting_seconds"] >= 3, body
        assert body["unstored_wait_seconds"] >= 3, body
        stalled_for = datetime.now(UTC) - datetime.fromisoformat(body["stalled_since"])
        assert stalled_for.total_seconds() >= 3, body
        assert body["consumer_lag"] == len(STALLED), body
        healthy = "lmnh_pipeline_healthy"
        wait_until(lambda: prometheus.value(healthy) == 0, 10, "Prometheus sees it", 0.2)
        waited = "lmnh_pipeline_unstored_wait_seconds"
        wait_until(lambda: (prometheus.value(waited) or 0) >= 3, 10, "Prometheus sees the wait")
    finally:
        locker.rollback()
        locker.close()
