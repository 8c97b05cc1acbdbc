"""Errors named by what the caller should do about them.

Invalid *input* is not an exception here: validation returns a `Rejection`, which is counted
and stored. Exceptions are for the run itself: fix the configuration, wait and retry, or stop.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes, documented in the README."""

    OK = 0
    UNEXPECTED = 1
    CONFIG = 2
    BROKER_UNREACHABLE = 3
    AUTHENTICATION = 4
    DATABASE_UNREACHABLE = 5
    SCHEMA_MISSING = 6
    TOPIC_MISSING = 7
    DATABASE_REFUSED = 8
    INTERRUPTED = 130


class PipelineError(Exception):
    """Root of the project's own errors."""


class ConfigError(PipelineError):
    """The configuration is wrong; every problem is listed so it can be fixed in one go."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class TransientError(PipelineError):
    """A service is down or busy: back off, retry, commit nothing meanwhile."""


class DatabaseBehind(PipelineError):
    """The database holds less than this run stored: it lost its latest transactions (a
    failover to a standby that had not received them, a restore). Nothing is stored; the
    partitions start again from where the database says, so what it lost is loaded again."""


class PermanentError(PipelineError):
    """This write can never succeed as it is (the data itself is refused): retrying is useless,
    so the batch is split to set the offending message aside and store the rest."""


class FatalError(PipelineError):
    """The run cannot go on; `exit_code` says which kind of failure it is."""

    def __init__(self, message: str, exit_code: ExitCode) -> None:
        self.exit_code = exit_code
        super().__init__(message)
