"""Run a command and write its exact peak RSS (ru_maxrss, KiB) to a file.

Why a separate, tiny process: Linux carries a process's peak RSS across fork and exec, so a
child started straight from the benchmark (which holds hundreds of MB of prepared rows) would
report at least the benchmark's own peak. Started from this launcher, whose RSS is a few MB,
the figure is the command's own. Keep the imports minimal for that reason.

Usage: python -I -S bench/peak_rss.py REPORT_FILE COMMAND [ARG...]
SIGINT and SIGTERM are passed on to the command; the exit code is the command's (128 + N when
signal N ended it).
"""

import os
import signal
import sys


def main(argv: list[str]) -> int:
    report, command = argv[1], argv[2:]
    pid = os.fork()
    if pid == 0:
        try:
            os.execv(command[0], command)  # noqa: S606 - the benchmark's own command line
        finally:
            os._exit(127)

    def forward(signum: int, _frame: object) -> None:
        os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    _, status, usage = os.wait4(pid, 0)
    with open(report, "w", encoding="utf-8") as out:
        out.write(f"{usage.ru_maxrss}\n")
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
