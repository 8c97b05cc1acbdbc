"""Partition maintenance and retention: what `lmnh-schema maintain` asks of the database, and
how it tells what was done.

The work is one SQL procedure, `lmnh_maintain` (lmnh/schema.sql, "Partitions and retention"),
so that pg_cron, where a database has it, runs exactly what the command runs: it makes the
months ahead, moves rows that landed in a DEFAULT partition into their month, and drops the
months of raw rejects and load minutes past their retention once their counts are in the daily
rollups. Every lock is asked for under lock_timeout and a step not granted one is tried again
after a pause, then skipped until the next run: maintenance never queues the pipeline or the
dashboards behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from lmnh.config import DatabaseSettings, RetentionSettings
from lmnh.database import classify, connect, require_schema
from lmnh.errors import ExitCode, FatalError, PermanentError

Action = Literal["made", "moved", "dropped", "skipped"]
ACTIONS: tuple[Action, ...] = get_args(Action)
LOCK_TIMEOUT_S = 3.0
ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class Step:
    """One step the procedure took: a partition made (`rows` moved into it from DEFAULT:
    "moved" when any), dropped (`rows` it held, counted in the rollup first), or skipped (its
    lock was not granted in time)."""

    action: Action
    table: str
    partition: str
    rows: int


def parse_report(report: Sequence[Any]) -> tuple[Step, ...]:
    """The procedure's report (a JSON array of {"step", "table", "partition", "rows"}) as
    steps; ValueError for anything else, which would be a schema of another version."""
    steps = []
    for entry in report:
        if not isinstance(entry, dict) or entry.get("step") not in ACTIONS:
            raise ValueError(f"not a maintenance step: {entry!r}")
        table, partition, rows = entry.get("table"), entry.get("partition"), entry.get("rows")
        if not isinstance(table, str) or not isinstance(partition, str):
            raise ValueError(f"not a maintenance step: {entry!r}")
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise ValueError(f"not a maintenance step: {entry!r}")
        steps.append(Step(cast(Action, entry["step"]), table, partition, rows))
    return tuple(steps)


def describe(step: Step) -> str:
    """A step as the command prints it."""
    if step.action == "made":
        return f"made {step.partition}"
    rows = f"{step.rows:,} row{'' if step.rows == 1 else 's'}"
    if step.action == "moved":
        return f"made {step.partition}: moved {rows} into it from {step.table}_default"
    if step.action == "dropped":
        counted = "rejected_daily" if step.table == "rejected_message" else "load_daily"
        return f"dropped {step.partition}: {rows}, their counts kept in {counted}"
    return f"skipped {step.partition}: its lock was not granted in time (the next run does it)"


def summary(steps: Sequence[Step]) -> str:
    """One line: how many partitions were made, moved into, dropped and skipped."""
    if not steps:
        return "maintenance: nothing to do"
    counts = {action: sum(step.action == action for step in steps) for action in ACTIONS}
    return "maintenance: " + ", ".join(f"{counts[action]} {action}" for action in ACTIONS)


def maintain(
    database: DatabaseSettings,
    retention: RetentionSettings,
    *,
    lock_timeout_s: float = LOCK_TIMEOUT_S,
    attempts: int = ATTEMPTS,
    application_name: str = "lmnh-maintain",
) -> tuple[Step, ...]:
    """CALL lmnh_maintain with `retention` on a connection of its own, in autocommit (the
    procedure commits each step itself). Returns what it did. A database at another schema
    version is refused (`FatalError`, exit 6); one that refuses the call, exit 8."""
    conn = connect(database, application_name=application_name)
    try:
        require_schema(conn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                "CALL lmnh_maintain(%s, %s, %s, %s, %s, NULL)",
                (
                    retention.rejected_days,
                    retention.load_minute_days,
                    retention.months_ahead,
                    max(1, round(lock_timeout_s * 1000)),
                    attempts,
                ),
            )
            [(report,)] = cur.fetchall()
        return parse_report(report)
    except Exception as error:
        classified = classify(error)
        if isinstance(classified, PermanentError):  # the database refused it outright
            raise FatalError(
                f"maintenance refused: {classified}", ExitCode.DATABASE_REFUSED
            ) from error
        raise classified from error
    finally:
        conn.close()
