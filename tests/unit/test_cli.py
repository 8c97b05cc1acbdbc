"""The one mapping from what went wrong to the exit code, shared by every program."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmnh.cli import exit_code_for, fail, run
from lmnh.errors import (
    ConfigError,
    ExitCode,
    FatalError,
    PermanentError,
    PipelineError,
    TransientError,
)
from stack import StackError


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (KeyboardInterrupt(), ExitCode.INTERRUPTED),
        (ConfigError(["a", "b"]), ExitCode.CONFIG),
        (FatalError("topic gone", ExitCode.TOPIC_MISSING), ExitCode.TOPIC_MISSING),
        (FatalError("refused", ExitCode.DATABASE_REFUSED), ExitCode.DATABASE_REFUSED),
        (TransientError("database unreachable"), ExitCode.DATABASE_UNREACHABLE),
        (PermanentError("22001 value too long"), ExitCode.UNEXPECTED),
        (StackError("cannot start the broker"), ExitCode.UNEXPECTED),
        (PipelineError("anything else of ours"), ExitCode.UNEXPECTED),
    ],
)
def test_each_kind_of_failure_has_one_exit_code(error: BaseException, code: ExitCode) -> None:
    assert exit_code_for(error) == code


def test_a_configuration_error_lists_every_problem_on_its_own_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = fail("prog", ConfigError(["DB_PORT is not a number", "SASL_USERNAME is missing"]))
    assert code == ExitCode.CONFIG
    assert capsys.readouterr().err.splitlines() == [
        "prog: configuration error: DB_PORT is not a number",
        "prog: configuration error: SASL_USERNAME is missing",
    ]


def test_run_turns_our_errors_and_a_second_signal_into_one_line_and_a_code(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def broker_gone() -> int:
        raise FatalError("Kafka at k:9092 did not answer", ExitCode.BROKER_UNREACHABLE)

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert run("prog", broker_gone) == ExitCode.BROKER_UNREACHABLE
    assert capsys.readouterr().err == "prog: error: Kafka at k:9092 did not answer\n"
    assert run("prog", interrupted, interrupted="batch abandoned") == ExitCode.INTERRUPTED
    assert capsys.readouterr().err == "prog: interrupted: batch abandoned\n"
    assert run("prog", lambda: ExitCode.OK) == ExitCode.OK


def test_run_lets_a_bug_keep_its_traceback() -> None:
    def bug() -> int:
        raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        run("prog", bug)


_STOPPING = """
import logging, os, signal, sys, threading, time
from lmnh.cli import stop_on_signals

stop = threading.Event()
stop_on_signals(stop, logging.getLogger("t"), "stopping", report_after_s={after})

def finishing_the_batch_in_hand():
    os.kill(os.getpid(), signal.SIGTERM)
    while not stop.is_set():
        time.sleep(0.01)
    time.sleep({busy})

finishing_the_batch_in_hand()
"""


@pytest.mark.parametrize(("busy", "reported"), [(1.5, True), (0.0, False)])
def test_a_stop_that_lasts_writes_where_every_thread_is(busy: float, reported: bool) -> None:
    """Still running past the report's time after the first signal: every thread's stack on
    stderr, naming what the program was doing; a stop that ends before writes none."""
    program = _STOPPING.format(after=0.5, busy=busy)
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert ("in finishing_the_batch_in_hand" in done.stderr) is reported, done.stderr
    assert ("Thread 0x" in done.stderr) is reported, done.stderr
