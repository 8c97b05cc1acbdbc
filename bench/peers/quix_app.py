"""The Quix Streams peer: what a Quix Streams user would write to load the kiosk feed into
PostgreSQL. An Application with a JSON value deserializer, a filter step (`shape_ok`) and
Quix's own PostgreSQLSink, all at their defaults except reading the topic from its start.

It runs on Quix's own virtualenv (see bench/peers/quix.py), never the project's, so it
imports nothing from the project: `shape_ok` is defined here, and bench/peers/records.py
takes it from here so that both peers store exactly the same messages.

Usage: python quix_app.py --broker HOST:PORT --topic TOPIC --group GROUP --table TABLE
       --state-dir DIR
The database is named by libpq's variables PGHOST, PGPORT, PGDATABASE, PGUSER and PGPASSWORD,
so that no password shows on a command line. SIGTERM stops it (Quix's own handler).
"""

from __future__ import annotations

import argparse
import os
import sys

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def shape_ok(value: object) -> bool:
    """Whether a decoded message has the shape a peer stores: an object whose `at` and `site`
    are strings, `val` an integer and `type` absent, null or an integer (of 64 bits: the
    columns are bigint; a bool is not an integer). Only the shape: no value is checked
    against the feed's rules, as a user who trusts the feed would write it."""
    if not isinstance(value, dict):
        return False
    kind = value.get("type")
    return (
        type(value.get("at")) is str
        and type(value.get("site")) is str
        and _int64(value.get("val"))
        and (kind is None or _int64(kind))
    )


def _int64(value: object) -> bool:
    return type(value) is int and _INT64_MIN <= value <= _INT64_MAX


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Kiosk messages to PostgreSQL with Quix Streams")
    parser.add_argument("--broker", required=True, help="bootstrap servers")
    parser.add_argument("--topic", required=True, help="the kiosk messages' topic")
    parser.add_argument("--group", required=True, help="consumer group")
    parser.add_argument("--table", required=True, help="the table the sink writes")
    parser.add_argument("--state-dir", required=True, help="Quix's state folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported here so that the project (which has no Quix) can import `shape_ok`.
    from quixstreams import Application  # type: ignore[import-not-found]  # noqa: PLC0415
    from quixstreams.sinks.community.postgresql import (  # type: ignore[import-not-found]  # noqa: PLC0415
        PostgreSQLSink,
    )

    app = Application(
        broker_address=args.broker,
        consumer_group=args.group,
        # Quix starts at the newest message by default; the peer loads the topic's history.
        auto_offset_reset="earliest",
        state_dir=args.state_dir,
    )
    sink = PostgreSQLSink(
        host=os.environ["PGHOST"],
        port=int(os.environ["PGPORT"]),
        dbname=os.environ["PGDATABASE"],
        user=os.environ["PGUSER"],
        password=os.environ["PGPASSWORD"],
        table_name=args.table,
    )
    messages = app.dataframe(app.topic(args.topic, value_deserializer="json"))
    messages = messages.filter(shape_ok)
    messages.sink(sink)
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
