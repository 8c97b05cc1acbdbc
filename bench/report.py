"""Pure helpers for the benchmark's report: percentiles, the summary line, the printed table."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# The pipeline's last line, e.g. "consumed 1000000, stored 830064 (...), 37.5 s, 26750 msg/s
# while loading".
_SUMMARY = re.compile(r"^consumed (\d+), .*, ([0-9.]+) s, (\d+) msg/s while loading$")


@dataclass(frozen=True, slots=True)
class Summary:
    """What the pipeline's summary line says about its own run."""

    consumed: int
    seconds: float
    rate: float  # its own "msg/s while loading": first batch in to last commit


def parse_summary(stdout: str) -> Summary | None:
    """The pipeline's summary from its standard output, or None when no line matches."""
    for line in reversed(stdout.splitlines()):
        match = _SUMMARY.match(line.strip())
        if match:
            return Summary(int(match[1]), float(match[2]), float(match[3]))
    return None


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile: the smallest value with at least `share` of all values at or
    below it (share 0.5 is the median, 1.0 the maximum). Needs at least one value."""
    if not values:
        raise ValueError("no values")
    if not 0.0 < share <= 1.0:
        raise ValueError("share must be above 0 and at most 1")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(share * len(ordered))) - 1]


def rate(messages: int, seconds: float) -> float:
    """Messages per second; 0 when no time passed."""
    return messages / seconds if seconds > 0 else 0.0


def format_table(rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """Rows as fixed-width columns, two spaces apart; `right[i]` right-aligns column i (for
    numbers). The first row is the header, underlined with dashes."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(right))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(width) if align else cell.ljust(width)
            for cell, width, align in zip(cells, widths, right, strict=True)
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])


def thousands(value: float) -> str:
    """A count or a rate as people read it: 26,750."""
    return f"{value:,.0f}"


def mib(kib: int) -> str:
    """ru_maxrss (KiB on Linux) in MiB, one decimal."""
    return f"{kib / 1024:.1f} MiB"


def parse_sizes(text: str) -> list[int]:
    """`--memory`: a comma list of message counts ("100000,1000000"); empty means none."""
    sizes = []
    for part in text.replace("_", "").split(","):
        if part.strip():
            size = int(part)
            if size <= 0:
                raise ValueError(f"{part.strip()} is not a positive message count")
            sizes.append(size)
    return sizes


# Lists in the results, each item labelled by itself.
PEERS = "peers"
COMPARED = "compared"
_CONTENDERS = (
    ("baseline", "baseline (original design)"),
    ("ours", "ours (kafka_pipeline.py)"),
    ("ours_scaled_out", "ours, 2 processes in one group"),
    (COMPARED, ""),
    (PEERS, ""),
    ("database_ceiling", "ceiling: database (COPY)"),
    ("database_ceiling_2", "ceiling: database (COPY), 2 conn."),
    ("kafka_ceiling", "ceiling: Kafka (consume)"),
)


def rows_in_order(result: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(label, figures) of every contender the run measured, in the table's order."""
    contenders = result["contenders"]
    rows: list[tuple[str, Mapping[str, Any]]] = []
    for key, label in _CONTENDERS:
        if key == PEERS:  # the table says what each does; the JSON, how it was run too
            rows.extend(
                (peer["label"], {**peer, "how": f"{peer['delivery']}; {peer['per_message']}"})
                for peer in result.get("peers") or []
            )
        elif key == COMPARED:
            rows.extend((f"ours at {ours['revision']}", ours) for ours in result.get(key) or [])
        elif key in contenders:
            rows.append((label, contenders[key]))
    return rows


def ratios(
    contenders: Mapping[str, Any],
    peers: Sequence[Mapping[str, Any]] | None,
    compared: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The run's derived figures: ours against the baseline, the lower ceiling (the database's
    over as many connections as ours writes over, or Kafka's), the fastest peer, and ours at
    other revisions."""
    ours = contenders["ours"]["messages_per_second"]
    ceiling_name, ceiling = min(
        (("the database", contenders["database_ceiling"]), ("Kafka", contenders["kafka_ceiling"])),
        key=lambda item: item[1]["messages_per_second"],
    )
    figures: dict[str, Any] = {
        "ours_rate": "the pipeline's own msg/s while loading",
        "ours_over_baseline": round(ours / contenders["baseline"]["messages_per_second"], 2),
        "ours_over_min_ceiling_percent": round(100 * ours / ceiling["messages_per_second"], 1),
        "limiting_ceiling": ceiling_name,
    }
    scaled = contenders.get("ours_scaled_out")
    if scaled and "database_ceiling_2" in contenders:
        figures["scaled_out_over_ceiling_2_percent"] = round(
            100
            * scaled["messages_per_second"]
            / contenders["database_ceiling_2"]["messages_per_second"],
            1,
        )
    if peers:
        fastest = max(peers, key=lambda peer: peer["messages_per_second"])
        figures["ours_over_fastest_peer"] = round(ours / fastest["messages_per_second"], 2)
        figures["fastest_peer"] = fastest["label"]
        if scaled:
            figures["scaled_out_over_fastest_peer"] = round(
                scaled["messages_per_second"] / fastest["messages_per_second"], 2
            )
    if compared:
        figures["ours_over_revision"] = {
            before["revision"]: round(ours / before["messages_per_second"], 2)
            for before in compared
        }
    return figures


def render(result: Mapping[str, Any]) -> str:
    """The run's figures as one fixed-width table, then the derived figures below it."""
    rows = [["contender", "messages", "seconds", "msg/s", "peak RSS", "how"]]
    for label, figures in rows_in_order(result):
        rss = figures.get("peak_rss_kib")
        rows.append(
            [
                label,
                thousands(figures["messages"]),
                f"{figures['seconds']:.1f}",
                thousands(figures["messages_per_second"]),
                mib(rss) if rss else "",
                figures["how"],
            ]
        )
    lines = [format_table(rows, [False, True, True, True, True, False]), ""]

    facts: list[list[str]] = [["figure", "value"]]
    ratios = result["ratios"]
    if ratios.get("ours_over_baseline") is not None:
        facts.append(["ours ÷ baseline", f"{ratios['ours_over_baseline']:.1f}x"])
    if ratios.get("ours_over_min_ceiling_percent") is not None:
        facts.append(
            [
                "ours ÷ min(ceilings)",
                f"{ratios['ours_over_min_ceiling_percent']:.1f}%"
                f" (the lower ceiling is {ratios['limiting_ceiling']})",
            ]
        )
    if ratios.get("ours_over_fastest_peer") is not None:
        facts.append(
            [
                "ours ÷ fastest peer",
                f"{ratios['ours_over_fastest_peer']:.2f}x (the fastest is"
                f" {ratios['fastest_peer']})",
            ]
        )
    if ratios.get("scaled_out_over_fastest_peer") is not None:
        facts.append(
            ["ours, 2 processes ÷ fastest peer", f"{ratios['scaled_out_over_fastest_peer']:.2f}x"]
        )
    if ratios.get("scaled_out_over_ceiling_2_percent") is not None:
        facts.append(
            [
                "ours, 2 processes ÷ COPY ceiling, 2 conn.",
                f"{ratios['scaled_out_over_ceiling_2_percent']:.1f}%",
            ]
        )
    for revision, ratio in (ratios.get("ours_over_revision") or {}).items():
        facts.append([f"ours ÷ ours at {revision}", f"{ratio:.2f}x"])
    freshness = result.get("freshness")
    if freshness:
        facts.append(
            [
                f"freshness ({thousands(freshness['rate'])} msg/s, {freshness['seconds']:g} s)",
                f"p50 {freshness['p50_ms']:.0f} ms, p99 {freshness['p99_ms']:.0f} ms,"
                f" max {freshness['max_ms']:.0f} ms"
                f" (production to commit, {freshness['resolution_ms']:.0f} ms polls)",
            ]
        )
    if result.get("memory"):
        series = ", ".join(
            f"{thousands(point['messages'])}: {mib(point['peak_rss_kib'])}"
            for point in result["memory"]
        )
        facts.append(["peak RSS of ours by run size", series])
    machine = result["machine"]
    facts.append(
        [
            "machine",
            f"{machine['cores']} cores ({machine['cpu_model']}), {machine['memory_gib']} GiB;"
            f" Python {machine['python']}, confluent-kafka {machine['confluent_kafka']}"
            f" (librdkafka {machine['librdkafka']}), PostgreSQL {machine['postgresql']},"
            f" Kafka {machine['kafka']}",
        ]
    )
    lines.append(format_table(facts, [False, False]))
    return "\n".join(lines)
