"""What a namespace testnet does to the machine: the commands it runs, and taking it down.

:func:`down` needs nothing but the state file (:mod:`.state`): it cleans up after a
runner that was killed at any point, and after one that finished.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from p2pmarket.testnet import procs, state
from p2pmarket.testnet.state import TestnetError

CMD_TIMEOUT_S = 30.0


def existing_namespaces() -> list[str]:
    """Every named network namespace on this machine (``ip netns list``)."""
    listed = run(["ip", "netns", "list"]).stdout.splitlines()
    return [line.split()[0] for line in listed if line.strip()]


def run(argv: list[str] | tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    """Run one of the testnet's commands (``ip``, ``iptables``, ...); its failure
    raises with the command and what it said."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True,
                              timeout=CMD_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TestnetError(f"{' '.join(argv)}: {exc}", list(argv)) from None
    if done.returncode != 0:
        raise TestnetError(f"{' '.join(argv)} failed: {done.stderr.strip()}", list(argv))
    return done


def down(root: Path) -> int:
    """Stop every process the state file lists (checked by command line; also those
    started but not yet given a pid, found by ``ip netns pids``), delete every
    namespace it lists (which removes their veths and iptables rules), then the state
    file. Idempotent. Returns how many processes were running."""
    root = root.resolve()
    if not state.exists(root):
        return 0
    st = state.load(root)
    alive = set(existing_namespaces())
    candidates: list[tuple[int, str, str]] = []
    for p in st.processes:
        pids = {p.pid} if p.pid else set()
        if p.namespace in alive:
            pids |= {int(x) for x in run(["ip", "netns", "pids", p.namespace]).stdout.split()}
        candidates += [(pid, p.program, p.arg) for pid in sorted(pids)]
    stopped = procs.stop_all(candidates)
    for ns in reversed(st.namespaces):
        if ns in alive:
            run(["ip", "netns", "del", ns])
    (root / state.STATE_FILE).unlink(missing_ok=True)
    return stopped
