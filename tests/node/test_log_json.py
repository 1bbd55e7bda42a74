"""A node process with ``--log-format json``: every line on stderr is one JSON object
naming the node, and its start and stop are the events ``node.up`` and
``node.stopping``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from p2pmarket.cli import testnet
from p2pmarket.core.keyfile import load_key


def read_until(proc: subprocess.Popen[str], event: str, lines: list[dict[str, Any]]) -> None:
    """Lines from the node's stderr (each must be JSON) until one has ``event``; the
    node's own timeouts bound this (stderr closes when it exits)."""
    assert proc.stderr is not None
    for raw in proc.stderr:
        doc = json.loads(raw)
        lines.append(doc)
        if doc["event"] == event:
            return
    raise AssertionError(f"the node exited without {event}: {lines}")


def test_a_node_logs_json_lines_with_its_id_and_events(tmp_path: Path) -> None:
    [path] = testnet.create(tmp_path, 1)
    node_id = load_key(path / "node.key").node_id.hex()[:16]
    proc = subprocess.Popen([sys.executable, "-m", "p2pmarket", "node", "--data-dir",
                             str(path), "--log-format", "json"], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
    lines: list[dict[str, Any]] = []
    try:
        read_until(proc, "node.up", lines)
        proc.send_signal(signal.SIGTERM)
        read_until(proc, "node.stopping", lines)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert {d["node"] for d in lines} == {node_id}
    assert all(set(d) >= {"ts", "level", "logger", "node", "event", "msg"} for d in lines)
    up = next(d for d in lines if d["event"] == "node.up")
    assert up["level"] == "info" and up["msg"].startswith(f"node {node_id[:12]} up")
