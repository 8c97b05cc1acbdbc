"""How `python -m dashboard.bench` cuts its generated interactions into chunks (pure)."""

from __future__ import annotations

from itertools import pairwise

import pytest

from dashboard.bench import REQUEST_SHARE, chunks


@pytest.mark.parametrize(
    ("rows", "days", "size"),
    [(10_000_000, 730, 1_000_000), (100_000_000, 730, 1_000_000), (4_000, 365, 1_000_000)],
)
def test_every_interaction_once_and_every_day_covered(rows: int, days: int, size: int) -> None:
    cut = chunks(rows, days, size)
    assert cut[0].first == 0
    assert cut[-1].last == rows - 1
    assert all(later.first == earlier.last + 1 for earlier, later in pairwise(cut))
    assert all(chunk.last - chunk.first < size for chunk in cut)
    requests = sum(chunk.last - chunk.first + 1 for chunk in cut if chunk.kind == "request")
    assert requests == round(rows * REQUEST_SHARE)
    for kind in ("request", "rating"):
        stretches = [(c.days_back, c.days_back + c.day_span) for c in cut if c.kind == kind]
        assert stretches[0][0] == 0
        assert stretches[-1][1] == days
        # Consecutive stretches meet or share a day: none is left without interactions.
        assert all(later[0] <= earlier[1] for earlier, later in pairwise(stretches))
