"""The one backoff schedule for waiting on a service that may come back (the database at start,
a batch that meets a transient failure, the local server starting)."""

from __future__ import annotations

from collections.abc import Iterator


def delays(first_s: float, max_s: float) -> Iterator[float]:
    """Seconds to wait before each retry: `first_s`, doubling, then `max_s` for ever. The
    caller decides when to give up (a deadline, a stop flag), since only it knows why it waits."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2, max_s)
