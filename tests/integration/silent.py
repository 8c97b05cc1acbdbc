"""Faults that do not announce themselves, made for real on this machine.

- `silenced(pid, ports)`: every packet of the TCP connections that process `pid` holds to
  `ports` is dropped (nftables, both directions), as a failover, a forgetful NAT or a pulled
  cable does; nothing is closed, and new connections still pass.
- `frozen(pids)`: processes stopped with SIGSTOP, their sockets open: their kernel still
  acknowledges data and keepalives, and nothing answers.

Both need root (CI and sessions run as root); `require_nft` skips a test, saying why, where
nftables cannot be used.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from tests.integration.support import Target


def require_nft() -> None:
    """Skip unless nftables can add and remove a table here."""
    if shutil.which("nft") is None:
        pytest.skip("nft (Debian's nftables) is not installed: run_tests.sh installs it as root")
    probe = f"lmnh_probe_{uuid.uuid4().hex[:8]}"
    made = subprocess.run(
        ["nft", "add", "table", "inet", probe], capture_output=True, text=True, check=False
    )
    if made.returncode != 0:
        pytest.skip(f"nftables cannot be used here: {made.stderr.strip()}")
    subprocess.run(["nft", "delete", "table", "inet", probe], check=True)


def connections(pid: int, ports: Iterable[int]) -> list[tuple[int, int]]:
    """(local port, remote port) of each established TCP connection of process `pid` (its
    threads included) to one of `ports` on this machine."""
    wanted = set(ports)
    inodes = _socket_inodes(pid)
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
                if state != "01" or inode not in inodes:  # 01: ESTABLISHED
                    continue
                local_port = int(local.rsplit(":", 1)[1], 16)
                remote_port = int(remote.rsplit(":", 1)[1], 16)
                if remote_port in wanted:
                    found.append((local_port, remote_port))
    return found


@contextmanager
def silenced(pid: int, ports: Iterable[int]) -> Iterator[list[tuple[int, int]]]:
    """Drop every packet of process `pid`'s connections to `ports`, both ways, until the end
    of the block. Yields the connections silenced (local port, remote port)."""
    silent = connections(pid, ports)
    assert silent, f"process {pid} holds no connection to ports {sorted(set(ports))}"
    table = f"lmnh_silent_{uuid.uuid4().hex[:8]}"
    rules = "".join(
        f"tcp sport {local} tcp dport {remote} drop\ntcp sport {remote} tcp dport {local} drop\n"
        for local, remote in silent
    )
    script = (
        f"table inet {table} {{\n chain output {{\n"
        f"  type filter hook output priority -10; policy accept;\n{rules} }}\n}}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)
    try:
        yield silent
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], check=True)


@contextmanager
def frozen_database(target: Target) -> Iterator[None]:
    """Every process of the target's PostgreSQL server stopped: connections stay open and
    nothing answers, not even a cancel request or a new connection."""
    [(data_directory,)] = target.query("SHOW data_directory")
    postmaster = int((Path(data_directory) / "postmaster.pid").read_text().split()[0])
    with frozen(process_tree(postmaster)):
        yield


@contextmanager
def frozen(pids: Iterable[int]) -> Iterator[None]:
    """Processes stopped (SIGSTOP) until the end of the block, then continued."""
    stopped = list(pids)
    _signal_all(stopped, signal.SIGSTOP)
    try:
        yield
    finally:
        _signal_all(stopped, signal.SIGCONT)


def process_tree(pid: int) -> list[int]:
    """`pid` and its children (a PostgreSQL server's postmaster and its backends)."""
    tree = [pid]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            tree.append(int(entry.name))
    return tree


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


def _signal_all(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        with suppress(ProcessLookupError):  # a process that ended meanwhile
            os.kill(pid, signum)
