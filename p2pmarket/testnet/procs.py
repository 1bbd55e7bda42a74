"""The processes a testnet started: recognising them by their command line, stopping them.

A pid alone may have been reused by the time a testnet is taken down, so a process
is only signalled while ``/proc/<pid>/cmdline`` still names the program and one
exact argument it was started with (a node's data dir, tinyproxy's config file).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

STOP_TIMEOUT_S = 15.0
KILL_WAIT_S = 2.0
CMDLINE_TRIES = 20


def runs(pid: int, program: str, arg: str) -> bool:
    """True if ``pid`` is alive, its command line mentions ``program`` and has ``arg``
    as one of its arguments."""
    cmdline = command_line(pid)
    return (cmdline is not None and program.encode() in b" ".join(cmdline)
            and arg.encode() in cmdline)


def command_line(pid: int) -> list[bytes] | None:
    """The arguments of a live process; None for none or a zombie. A process in the
    middle of an exec shows an empty command line for a moment: read it again."""
    for _ in range(CMDLINE_TRIES):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        if raw:
            return raw.split(b"\0")
        if stat.rpartition(")")[2].split()[:1] in (["Z"], ["X"]):
            return None
        time.sleep(0.005)
    return None


def is_our_node(pid: int, data_dir: str) -> bool:
    """True if ``pid`` is alive and is a p2pmarket node on ``data_dir``."""
    return runs(pid, "p2pmarket", data_dir)


def reap(pid: int) -> bool:
    """Collect our own child if it exited (no-op for processes we did not fork)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return done == pid


def stop_all(procs: Iterable[tuple[int, str, str]], timeout_s: float = STOP_TIMEOUT_S,
             sig: signal.Signals = signal.SIGTERM) -> int:
    """Stop each ``(pid, program, arg)`` that still :func:`runs`: ``sig`` to all of
    them, then SIGKILL to those still there after ``timeout_s``. Returns how many
    were running."""
    running = [(pid, program, arg) for pid, program, arg in procs if runs(pid, program, arg)]
    for pid, _, _ in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
    deadline = time.monotonic() + timeout_s
    left = running
    while left and time.monotonic() < deadline:
        left = [p for p in left if not reap(p[0]) and runs(*p)]
        if left:
            time.sleep(0.05)
    for pid, program, arg in left:
        if runs(pid, program, arg):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + KILL_WAIT_S
    while left and time.monotonic() < deadline:   # SIGKILL is not refused: wait briefly
        left = [p for p in left if not reap(p[0]) and runs(*p)]
        if left:
            time.sleep(0.02)
    return len(running)


def stop_pid(pid: int, data_dir: str, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM our node, wait, SIGKILL if it will not go. True if it was running."""
    return stop_all([(pid, "p2pmarket", data_dir)], timeout_s) == 1
