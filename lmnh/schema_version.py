"""The schema version this code expects, and what to say about a database at another one.

A database's version is the list of migrations its ledger records as applied (yoyo's
`_yoyo_migration`, written by `lmnh.migrate`); this code's is the list of files in
lmnh/migrations. The pipeline and the dashboard refuse any other, with one line that names the
command to run, rather than failing later on a column that is not there.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Migrations apply in the order of their names: a four-digit number, then what they do.
EXPECTED: tuple[str, ...] = tuple(sorted(path.stem for path in MIGRATIONS_DIR.glob("*.sql")))
APPLY_COMMAND = "lmnh-schema apply"  # `python -m lmnh.schema apply` from a checkout
LEDGER = "_yoyo_migration"


def version_name(applied: Collection[str]) -> str:
    """A version as people say it: its latest migration."""
    return max(applied) if applied else "none"


def refusal(applied: Collection[str] | None, missing_tables: Sequence[str]) -> str | None:
    """Why this code, which expects the migrations `EXPECTED`, cannot use a database whose
    ledger records `applied` (None: it has no ledger) and lacks `missing_tables`; None if it
    can.

    A database without a ledger was made by a release from before migrations (or is empty):
    applying the migrations records its version. One with a migration this code does not know
    is newer than the code: applying would not help, the code must be upgraded."""
    run = f"run `{APPLY_COMMAND}`"
    if applied is None:
        if missing_tables:
            return f"schema missing: no table {', '.join(missing_tables)}: {run}"
        return f"schema version unknown (no migration ledger, {LEDGER}): {run}"
    unknown = sorted(set(applied) - set(EXPECTED))
    if unknown:
        return (
            f"schema version {version_name(applied)} is newer than this release's"
            f" {version_name(EXPECTED)} (unknown migrations: {', '.join(unknown)}):"
            " upgrade this program to the release that made it"
        )
    pending = [migration for migration in EXPECTED if migration not in applied]
    if pending:
        return (
            f"schema version {version_name(applied)}, this release needs"
            f" {version_name(EXPECTED)} (not applied: {', '.join(pending)}): {run}"
        )
    return None
