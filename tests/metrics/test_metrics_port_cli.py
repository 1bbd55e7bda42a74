"""``p2pmarket node --metrics-port``: the flag reaches the setting, and a port in use is
one error line with nothing left listening (like the node's other ports)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from p2pmarket.cli import testnet
from p2pmarket.core.config import Settings
from p2pmarket.core.genesis import ConfigError


def test_the_setting_is_a_port() -> None:
    assert Settings.load(None, env={"P2PMARKET_METRICS_PORT": "9400"}).metrics_port == 9400
    assert Settings.load(None, env={}).metrics_port == 0
    with pytest.raises(ConfigError, match="must be a port"):
        Settings.load(None, env={}, flags={"metrics_port": 70000})


def test_a_metrics_port_in_use_is_one_error_line(tmp_path: Path) -> None:
    [path] = testnet.create(tmp_path, 1)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "p2pmarket", "node", "--data-dir",
                               str(path), "--metrics-port", str(port)],
                              capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot listen for the metrics (TCP) on 127.0.0.1:"), last
    assert "Traceback" not in done.stderr
