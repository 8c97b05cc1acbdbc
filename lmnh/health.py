"""Whether the pipeline is working, judged from what it knows of itself: the rule behind
`/health` and the `lmnh_pipeline_healthy` gauge (pure: no I/O, no clock of its own).

Healthy means both:

- **in its group**: the consumer holds an assignment its group gave it (possibly of no
  partitions, when the group has more members than the topic has partitions), or gave one up
  less than `REBALANCE_GRACE_S` ago (a rebalance revokes everything, then assigns anew within
  seconds). Before its first assignment it is joining, and not yet healthy.
- **storing**: not stalled. Stalled: messages have waited to be stored for `stall_s` seconds or
  more (a fetched batch waiting for its transaction, consumer lag on an assigned partition, or
  a partition waiting for the database to say where it resumes), and no batch was committed to
  the database in that time. Caught up and idle is healthy, however long it lasts, and so is a
  busy pipeline that commits batch after batch while its lag stays above zero. A write blocked
  on a connection that went silent, or retried after one, is a batch waiting: it stalls too.

The answer says which (`status`: ok, stalled, joining or left) and, once stalled, since when.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Longer than an eager rebalance takes (the group's 10 s session timeout, then a join).
REBALANCE_GRACE_S = 30.0


@dataclass(frozen=True, slots=True)
class GroupState:
    """The consumer's side, as the Kafka source sees it now."""

    member: bool  # holds an assignment from its group, possibly empty
    left_at: float | None  # monotonic time it last gave up or lost its assignment, if it did
    partitions: tuple[int, ...]  # assigned partitions
    unpositioned: tuple[int, ...]  # assigned, paused until the database says where they resume
    lag: Mapping[int, int]  # partition -> high watermark minus the next offset to load
    behind_since: float | None  # monotonic time since which lag or unpositioned has been nonzero


@dataclass(frozen=True, slots=True)
class LoadState:
    """The storing side, as the pipeline sees it now (monotonic times)."""

    last_commit_at: float | None  # the last batch's database commit
    waiting_since: float | None  # when the batch waiting for its transaction was fetched
    last_commit_unix: float | None = None  # the last commit again, as Unix time


NOT_STARTED = GroupState(
    member=False, left_at=None, partitions=(), unpositioned=(), lag={}, behind_since=None
)


@dataclass(frozen=True, slots=True)
class Health:
    in_group: bool
    storing: bool
    # Seconds that messages have waited to be stored with no batch committed meanwhile: the
    # stall's clock (None while nothing waits). Stalled once it reaches the threshold.
    unstored_wait_s: float | None
    body: Mapping[str, Any]  # the JSON `/health` answers with

    @property
    def healthy(self) -> bool:
        return self.in_group and self.storing


def judge(
    group: GroupState, load: LoadState, now: float, stall_s: float, wall_now: float
) -> Health:
    """Apply the module's rule to the two sides' states at monotonic time `now`, which is
    `wall_now` in Unix time (to say since when, in the answer, on a clock people read)."""
    if group.member:
        membership = "member"
    elif group.left_at is not None and now - group.left_at < REBALANCE_GRACE_S:
        membership = "rebalancing"
    elif group.left_at is not None:
        membership = "left"
    else:
        membership = "joining"
    lag = sum(max(0, behind) for behind in group.lag.values())
    waits = [t for t in (load.waiting_since, group.behind_since) if t is not None]
    # The stall's clock starts when the wait began, or at the last commit during it.
    wait_started = max(min(waits), load.last_commit_at or 0.0) if waits else None
    waited = None if wait_started is None else max(0.0, now - wait_started)
    storing = waited is None or waited < stall_s
    in_group = membership in {"member", "rebalancing"}
    if not storing:
        status = "stalled"
    elif not in_group:
        status = membership
    else:
        status = "ok"
    stalled_since = None
    if not storing and waited is not None:
        stalled_since = datetime.fromtimestamp(wall_now - waited, UTC).isoformat()
    body = {
        "healthy": in_group and storing,
        "status": status,
        "group": membership,
        "partitions": list(group.partitions),
        "storing": storing,
        "stalled_since": stalled_since,
        "unstored_wait_seconds": None if waited is None else round(waited, 3),
        "last_commit_seconds_ago": _age(load.last_commit_at, now),
        "batch_waiting_seconds": _age(load.waiting_since, now),
        "consumer_lag": lag,
        "partitions_without_start_offset": list(group.unpositioned),
        "stall_seconds": stall_s,
    }
    return Health(in_group, storing, waited, body)


def _age(since: float | None, now: float) -> float | None:
    return None if since is None else round(now - since, 3)
