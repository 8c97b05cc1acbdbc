"""The metrics without services: the health rule, the counts a stored batch adds, the metrics
server's answers, and the dashboard's request metrics (labelled by route template only)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from dashboard.app import create_app
from kafka_pipeline import parse_args
from lmnh.config import load_config
from lmnh.errors import ConfigError
from lmnh.events import KafkaMessage, Reason, Rejection
from lmnh.health import REBALANCE_GRACE_S, GroupState, LoadState, judge
from lmnh.metrics import MetricsServer, PipelineMetrics
from lmnh.store import WriteResult

NOW = 1000.0
STALL_S = 60.0


def group(
    *,
    member: bool = True,
    left_at: float | None = None,
    lag: int = 0,
    behind_since: float | None = None,
    unpositioned: tuple[int, ...] = (),
) -> GroupState:
    partitions = (0, 1) if member else ()
    return GroupState(member, left_at, partitions, unpositioned, {0: lag, 1: 0}, behind_since)


def load(last_commit_at: float | None = None, waiting_since: float | None = None) -> LoadState:
    return LoadState(last_commit_at, waiting_since)


@pytest.mark.parametrize(
    ("state", "loading", "in_group", "storing"),
    [
        # Caught up and idle for an hour, or never having stored anything: healthy.
        (group(), load(last_commit_at=NOW - 3600), True, True),
        (group(), load(), True, True),
        # Loading: a batch in flight and lag, with a commit a moment ago.
        (group(lag=5000, behind_since=NOW - 600), load(NOW - 0.3, NOW - 0.5), True, True),
        # A batch arriving after a long quiet spell is not a stall.
        (group(lag=10, behind_since=NOW - 1), load(NOW - 3600, NOW - 0.5), True, True),
        # A batch waiting 61 s with no commit meanwhile: stalled.
        (group(lag=10, behind_since=NOW - 61), load(NOW - 3600, NOW - 61), True, False),
        # Lag for 61 s (partitions paused for the database) and no commit: stalled.
        (group(lag=10, behind_since=NOW - 61), load(NOW - 3600), True, False),
        (group(unpositioned=(1,), behind_since=NOW - 61), load(), True, False),
        # Joining, rebalancing, gone.
        (group(member=False), load(), False, True),
        (group(member=False, left_at=NOW - 5), load(), True, True),
        (group(member=False, left_at=NOW - REBALANCE_GRACE_S - 1), load(), False, True),
    ],
)
def test_the_health_rule(
    state: GroupState, loading: LoadState, in_group: bool, storing: bool
) -> None:
    health = judge(state, loading, NOW, STALL_S)
    assert (health.in_group, health.storing) == (in_group, storing)
    assert health.healthy == (in_group and storing) == health.body["healthy"]
    json.dumps(health.body)  # the answer of /health


def sample(metrics: PipelineMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_a_stored_batch_is_counted_once_per_batch() -> None:
    metrics = PipelineMetrics()
    message = KafkaMessage("lmnh", 0, 7, b"\x00", None)
    aside = Rejection(Reason.UNSTORABLE, "refused")
    metrics.consumed(10)
    metrics.stored(
        WriteResult(
            ratings=5,
            requests=2,
            rejected=Counter({"invalid_val": 2, "unstorable": 1}),
            already_stored=0,
            set_aside=((message, aside),),
        ),
        size=10,
    )
    metrics.store_took(0.2)
    metrics.retried()
    assert sample(metrics, "lmnh_pipeline_messages_consumed_total") == 10
    assert sample(metrics, "lmnh_pipeline_messages_stored_total", kind="rating") == 5
    assert sample(metrics, "lmnh_pipeline_messages_stored_total", kind="request") == 2
    assert sample(metrics, "lmnh_pipeline_messages_rejected_total", reason="invalid_val") == 2
    assert sample(metrics, "lmnh_pipeline_messages_rejected_total", reason="unstorable") == 1
    # Every reason code is there from the start, at zero.
    assert sample(metrics, "lmnh_pipeline_messages_rejected_total", reason="empty") == 0
    assert sample(metrics, "lmnh_pipeline_messages_set_aside_total") == 1
    assert sample(metrics, "lmnh_pipeline_batch_size_messages_sum") == 10
    assert sample(metrics, "lmnh_pipeline_store_duration_seconds_count") == 1
    assert sample(metrics, "lmnh_pipeline_database_retries_total") == 1
    # Before the consumer is watched: not in a group, so not healthy.
    assert sample(metrics, "lmnh_pipeline_healthy") == 0
    assert sample(metrics, "lmnh_pipeline_consumer_assigned") == 0


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - local
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.fixture
def served() -> Iterator[tuple[PipelineMetrics, str]]:
    metrics = PipelineMetrics()
    server = MetricsServer(metrics, "127.0.0.1", 0)
    try:
        yield metrics, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def test_the_server_answers_metrics_and_health(served: tuple[PipelineMetrics, str]) -> None:
    metrics, url = served
    status, content_type, body = get(f"{url}/health")
    assert (status, content_type) == (503, "application/json")
    assert json.loads(body)["group"] == "joining"

    now = time.monotonic()
    state = group(lag=3, behind_since=now)
    metrics.watch(lambda: state, lambda: load(last_commit_at=now), "lmnh", STALL_S)
    status, _, body = get(f"{url}/health")
    assert status == 200, body
    status, content_type, body = get(f"{url}/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert 'lmnh_pipeline_consumer_lag_messages{partition="0",topic="lmnh"} 3.0' in body
    assert "lmnh_pipeline_healthy 1.0" in body
    assert get(f"{url}/nothing")[0] == 404


def test_a_taken_port_is_a_usage_error(served: tuple[PipelineMetrics, str]) -> None:
    _, url = served
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
        MetricsServer(PipelineMetrics(), "127.0.0.1", port)


def test_the_dashboard_labels_requests_by_route_template_only() -> None:
    app = create_app(load_config({}).database)  # no route below touches the database

    async def request(method: str, path: str, query: bytes = b"") -> tuple[int, bytes]:
        scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query,
            "root_path": "",
            "headers": [(b"host", b"dashboard")],
            "client": ("127.0.0.1", 1),
            "server": ("dashboard", 80),
        }
        received: list[dict[str, Any]] = []
        asked = False

        async def receive() -> dict[str, Any]:
            nonlocal asked
            if not asked:
                asked = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.sleep(3600)  # the client never hangs up
            raise AssertionError

        async def send(message: dict[str, Any]) -> None:
            received.append(message)

        await app(scope, receive, send)
        status = next(m["status"] for m in received if m["type"] == "http.response.start")
        return status, b"".join(m.get("body", b"") for m in received)

    async def visit() -> bytes:
        assert (await request("GET", "/api/charts/pie", b"x=1"))[0] == 404
        assert (await request("GET", "/api/charts/tart"))[0] == 404
        assert (await request("GET", "/no/such/page"))[0] == 404
        assert (await request("BREW", "/exhibitions"))[0] == 405
        assert (await request("GET", "/static/dashboard.css"))[0] == 200
        status, body = await request("GET", "/metrics")
        assert status == 200
        return body

    lines = asyncio.run(visit()).decode().splitlines()
    counted = sorted(line for line in lines if line.startswith("lmnh_dashboard_requests_total"))
    assert counted == [
        'lmnh_dashboard_requests_total{method="GET",route="/api/charts/{name}",status="404"} 2.0',
        'lmnh_dashboard_requests_total{method="GET",route="/static/{path}",status="200"} 1.0',
        'lmnh_dashboard_requests_total{method="GET",route="unmatched",status="404"} 1.0',
        'lmnh_dashboard_requests_total{method="other",route="/exhibitions",status="405"} 1.0',
    ]
    assert any(
        line.startswith('lmnh_dashboard_request_duration_seconds_count{method="GET",route="/api')
        for line in lines
    )


def test_the_metrics_server_is_off_unless_asked_for_and_loopback_by_default() -> None:
    args = parse_args([])
    assert args.metrics_port is None
    args = parse_args(["--metrics-port", "9108"])
    assert (args.metrics_host, args.metrics_port, args.health_stall_seconds) == (
        "127.0.0.1",
        9108,
        60.0,
    )
    for bad in (["--metrics-port", "70000"], ["--health-stall-seconds", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
