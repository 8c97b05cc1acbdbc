"""The metrics without services: the health rule, the counts a stored batch adds (by exhibition
too), the metrics server's answers, and the dashboard's request metrics (labelled by route
template only)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dashboard.app import create_app
from kafka_pipeline import parse_args
from lmnh.config import AccessSettings, Secret, load_config
from lmnh.errors import ConfigError
from lmnh.events import KafkaMessage, RatingEvent, Reason, Rejection, RequestEvent
from lmnh.health import REBALANCE_GRACE_S, GroupState, LoadState, judge
from lmnh.metrics import UNKNOWN_SITE, MetricsServer, PipelineMetrics, site_counts
from lmnh.museum import KIOSK_REFERENCE, Reference
from lmnh.store import CopyBatch, WriteResult, copy_batch
from lmnh.validation import named_exhibition, validate

NOW = 1000.0
WALL_NOW = 1_795_183_200.0  # NOW on the Unix clock: 2026-11-20T14:00:00Z
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
    ("state", "loading", "in_group", "status", "waited"),
    [
        # Caught up and idle for an hour, or never having stored anything: healthy.
        (group(), load(last_commit_at=NOW - 3600), True, "ok", None),
        (group(), load(), True, "ok", None),
        # Loading: a batch in flight and lag, with a commit a moment ago.
        (group(lag=5000, behind_since=NOW - 600), load(NOW - 0.3, NOW - 0.5), True, "ok", 0.3),
        # A batch arriving after a long quiet spell is not a stall.
        (group(lag=10, behind_since=NOW - 1), load(NOW - 3600, NOW - 0.5), True, "ok", 1.0),
        # A batch waiting 61 s with no commit meanwhile: stalled.
        (group(lag=10, behind_since=NOW - 61), load(NOW - 3600, NOW - 61), True, "stalled", 61.0),
        # A write that never ends (a silent connection), the lag not measured since.
        (group(), load(NOW - 3600, NOW - 90), True, "stalled", 90.0),
        # Lag for 61 s (partitions paused for the database) and no commit: stalled.
        (group(lag=10, behind_since=NOW - 61), load(NOW - 3600), True, "stalled", 61.0),
        (group(unpositioned=(1,), behind_since=NOW - 61), load(), True, "stalled", 61.0),
        # Waiting since long ago, but the last commit was 60 s ago: stalled since then.
        (group(lag=10, behind_since=NOW - 600), load(NOW - 60), True, "stalled", 60.0),
        # Joining, rebalancing, gone; stalled says more than gone.
        (group(member=False), load(), False, "joining", None),
        (group(member=False, left_at=NOW - 5), load(), True, "ok", None),
        (group(member=False, left_at=NOW - REBALANCE_GRACE_S - 1), load(), False, "left", None),
        (
            group(member=False, left_at=NOW - 100, behind_since=NOW - 100),
            load(),
            False,
            "stalled",
            100.0,
        ),
    ],
)
def test_the_health_rule(
    state: GroupState, loading: LoadState, in_group: bool, status: str, waited: float | None
) -> None:
    health = judge(state, loading, NOW, STALL_S, WALL_NOW)
    assert (health.in_group, health.storing) == (in_group, status != "stalled")
    assert health.healthy == (status == "ok") == health.body["healthy"]
    assert health.body["status"] == status
    assert health.unstored_wait_s == (None if waited is None else pytest.approx(waited))
    assert health.body["unstored_wait_seconds"] == waited
    json.dumps(health.body)  # the answer of /health


def test_a_stall_says_since_when_on_the_wall_clock() -> None:
    health = judge(group(lag=10, behind_since=NOW - 75), load(NOW - 3600), NOW, STALL_S, WALL_NOW)
    assert (health.body["status"], health.body["storing"]) == ("stalled", False)
    assert health.body["stalled_since"] == "2026-11-20T13:58:45+00:00"
    # The moment the threshold is reached, not before.
    assert judge(group(), load(None, NOW - STALL_S), NOW, STALL_S, WALL_NOW).body["status"] == (
        "stalled"
    )
    waiting = judge(group(), load(None, NOW - STALL_S + 0.001), NOW, STALL_S, WALL_NOW)
    assert (waiting.body["status"], waiting.body["stalled_since"]) == ("ok", None)


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


# The reference as loaded from the database: with its keys, which a batch's COPY text needs.
REFERENCE = Reference(
    KIOSK_REFERENCE.exhibition_start,
    KIOSK_REFERENCE.rating_values,
    KIOSK_REFERENCE.request_values,
    exhibition_ids={public_id: n + 1 for n, public_id in enumerate(KIOSK_REFERENCE.sites.values())},
    rating_ids={value: value + 10 for value in KIOSK_REFERENCE.rating_values},
    request_ids={value: value + 20 for value in KIOSK_REFERENCE.request_values},
)
JUDGED = datetime(2026, 11, 20, 14, 0, tzinfo=UTC)


def batch_of(values: list[bytes | None], topic: str = "lmnh") -> CopyBatch:
    """A batch as the pipeline builds one: validated, then turned into COPY text."""
    messages = [KafkaMessage(topic, n % 3, n, value, None) for n, value in enumerate(values)]
    outcomes = [validate(m.value, REFERENCE, JUDGED) for m in messages]
    return copy_batch(messages, outcomes, REFERENCE, JUDGED)


def counted_one_by_one(batch: CopyBatch) -> tuple[Counter[str], Counter[str]]:
    """What site_counts must find, worked out message by message."""
    stored: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    for message, outcome in zip(batch.messages, batch.outcomes, strict=True):
        if isinstance(outcome, RatingEvent | RequestEvent):
            stored[outcome.exhibition_public_id] += 1
        else:
            rejected[named_exhibition(message.value, REFERENCE) or UNKNOWN_SITE] += 1
    return stored, rejected


RATING_01 = b'{"at": "2026-11-20T12:00:00+00:00", "site": "1", "val": 3}'
REQUEST_03 = b'{"at": "2026-11-20T12:00:00+00:00", "site": "3", "val": -1, "type": 1}'


def test_a_batch_is_counted_by_the_exhibition_each_message_came_from() -> None:
    batch = batch_of(
        [
            RATING_01,
            RATING_01,
            REQUEST_03,
            b'{"at": "2026-11-20T12:00:00+00:00", "site": "1", "val": 9}',  # names EXH_01
            b'{"at": "2026-11-20T23:00:00+00:00", "site": "3", "val": 1}',  # out of hours
            b'{"at": "2026-11-20T12:00:00+00:00", "site": "99", "val": 1}',  # unknown site
            b"not json",  # names none
            None,  # no value at all
            # Tabs in the bytes (not JSON: names none), and in a value that a reason naming
            # EXH_01 quotes: escaped there, never a field of their own.
            b'{"at": "2026-11-20T12:00:00+00:00", "site": "1", "val": "\tEXH_02\tlmnh\t"}',
            rb'{"at": "2026-11-20T12:00:00+00:00", "site": "1", "val": "\tEXH_02\tlmnh\t"}',
        ],
        topic="lmnh",
    )
    counts = site_counts(batch)
    assert counts.stored == {"EXH_01": 2, "EXH_03": 1}
    assert counts.rejected == {"EXH_01": 2, "EXH_03": 1, UNKNOWN_SITE: 4}


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.binary(max_size=40),
            st.builds(
                lambda site, val, hour: (
                    f'{{"at": "2026-11-20T{hour:02d}:00:00+00:00", "site": {site}, "val": {val}}}'
                ).encode(),
                st.sampled_from(['"0"', '"1"', '"5"', '"05"', '"99"', "1", '"\t"', '"1\n"']),
                st.sampled_from(["0", "4", "9", '"x\tEXH_01\tlmnh\t"', "null"]),
                st.integers(0, 23),
            ),
        ),
        max_size=30,
    ),
    st.sampled_from(["lmnh", "EXH_01", "kiosks.v2"]),
)
def test_counting_on_the_copy_text_finds_what_counting_each_message_does(
    values: list[bytes | None], topic: str
) -> None:
    batch = batch_of(values, topic)
    counts = site_counts(batch)
    stored, rejected = counted_one_by_one(batch)
    assert (counts.stored, counts.rejected) == (stored, rejected)


def test_every_known_exhibition_is_exported_from_zero_and_hostile_sites_are_unknown() -> None:
    metrics = PipelineMetrics()
    site = "lmnh_pipeline_site_messages_total"
    assert sample(metrics, site, exhibition="EXH_01", outcome="stored") is None  # before a batch
    hostile = [f'{{"site": "{n}", "val": 1}}'.encode() for n in range(100, 400)]
    metrics.stored_by_site(batch_of([RATING_01, REQUEST_03, *hostile]))
    metrics.stored_by_site(batch_of([RATING_01, b'{"site": "1"}']))
    exported = {
        (s.labels["exhibition"], s.labels["outcome"]): s.value
        for family in metrics.registry.collect()
        if family.name == "lmnh_pipeline_site_messages"
        for s in family.samples
        if s.name == site
    }
    expected = dict.fromkeys(
        (
            (public_id, outcome)
            for public_id in [*REFERENCE.exhibition_ids, UNKNOWN_SITE]
            for outcome in ("stored", "rejected")
        ),
        0.0,
    )
    expected |= {
        ("EXH_01", "stored"): 2.0,
        ("EXH_03", "stored"): 1.0,
        ("EXH_01", "rejected"): 1.0,
        (UNKNOWN_SITE, "rejected"): 300.0,
    }
    assert exported == expected


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

    # A batch has waited two minutes for a write that does not end: stalled, and since when.
    stuck = load(last_commit_at=now - 3600, waiting_since=now - 120)
    metrics.watch(group, lambda: stuck, "lmnh", STALL_S)
    status, _, body = get(f"{url}/health")
    answer = json.loads(body)
    assert (status, answer["status"], answer["storing"]) == (503, "stalled", False), answer
    since = datetime.fromisoformat(answer["stalled_since"])
    assert abs((datetime.now(UTC) - since).total_seconds() - 120) < 5, answer
    waited = sample(metrics, "lmnh_pipeline_unstored_wait_seconds")
    assert waited is not None and 120 <= waited < 125
    assert sample(metrics, "lmnh_pipeline_healthy") == 0


def test_a_taken_port_is_a_usage_error(served: tuple[PipelineMetrics, str]) -> None:
    _, url = served
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(ConfigError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
        MetricsServer(PipelineMetrics(), "127.0.0.1", port)


def test_the_dashboard_labels_requests_by_route_template_only() -> None:
    """Anonymous requests (refused before any route runs: nothing below touches the database)
    and Prometheus's scrape with its token."""
    scrape_token = "a-scrape-token-of-at-least-32-characters"  # noqa: S105 - the test's own
    access = AccessSettings(metrics_token=Secret(scrape_token))
    app = create_app(load_config({}).database, access=access)

    async def request(
        method: str, path: str, query: bytes = b"", token: str = ""
    ) -> tuple[int, bytes]:
        authorization = [(b"authorization", f"Bearer {token}".encode())] if token else []
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
            "headers": [(b"host", b"dashboard"), *authorization],
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
        assert (await request("GET", "/api/charts/pie", b"x=1"))[0] == 401
        assert (await request("GET", "/api/charts/tart"))[0] == 401
        assert (await request("GET", "/no/such/page"))[0] == 401
        assert (await request("BREW", "/exhibitions"))[0] == 401
        assert (await request("GET", "/static/dashboard.css"))[0] == 200
        status, body = await request("GET", "/metrics", token=scrape_token)
        assert status == 200
        return body

    lines = asyncio.run(visit()).decode().splitlines()
    counted = sorted(line for line in lines if line.startswith("lmnh_dashboard_requests_total"))
    assert counted == [
        'lmnh_dashboard_requests_total{method="GET",route="/api/charts/{name}",status="401"} 2.0',
        'lmnh_dashboard_requests_total{method="GET",route="/static/{path}",status="200"} 1.0',
        'lmnh_dashboard_requests_total{method="GET",route="unmatched",status="401"} 1.0',
        'lmnh_dashboard_requests_total{method="other",route="/exhibitions",status="401"} 1.0',
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
