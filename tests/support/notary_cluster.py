"""A committee of notary processes on 127.0.0.1, for fault tests and benchmarks.

Each notary is a :mod:`tests.support.notary_server` process with its own key file
and database under ``root``. The servers read a genesis whose URLs are
placeholders (a notary needs only the keys); :attr:`NotaryCluster.genesis` has
the real URLs once every notary listens. A killed notary restarts on its port.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from p2pmarket.core.config import save_genesis
from p2pmarket.core.genesis import Genesis, NotaryInfo
from p2pmarket.core.identity import Identity
from p2pmarket.core.keyfile import save_key
from p2pmarket.ledger.errors import LedgerError

START_TIMEOUT_S = 20.0


class NotaryCluster:
    def __init__(self, root: Path, f: int = 1, mint: Identity | None = None,
                 network: str = "cluster") -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.mint = mint or Identity.generate()
        self.notaries = [Identity.generate() for _ in range(3 * f + 1)]
        for i, ident in enumerate(self.notaries):
            save_key(ident, self.key_file(i))
        self.base = Genesis(network=network, mint_key=self.mint.public_key, f=f,
                            notaries=tuple(NotaryInfo(n.public_key, f"http://notary{i}.invalid")
                                           for i, n in enumerate(self.notaries)))
        save_genesis(self.base, root / "genesis.json")
        self.ports: dict[int, int] = {}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def key_file(self, i: int) -> Path:
        return self.root / f"notary{i}.key"

    def db(self, i: int) -> Path:
        return self.root / f"notary{i}.sqlite"

    @property
    def genesis(self) -> Genesis:
        """The genesis with every notary's real URL (all must have started once)."""
        return replace(self.base, notaries=tuple(
            NotaryInfo(n.key, f"http://127.0.0.1:{self.ports[i]}")
            for i, n in enumerate(self.base.notaries)))

    def start(self, i: int, *extra: str) -> int:
        """Start notary ``i`` (on its old port if it had one); returns the port."""
        if i in self.procs and self.procs[i].poll() is None:
            raise LedgerError("notary already running", i)
        cmd = [sys.executable, "-m", "tests.support.notary_server", "--key-file",
               str(self.key_file(i)), "--genesis", str(self.root / "genesis.json"),
               "--db", str(self.db(i)), "--port", str(self.ports.get(i, 0)), *extra]
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.root / f"notary{i}.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env)
        self.procs[i] = proc
        assert proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, left))
            if not ready:
                self.kill(i)
                raise LedgerError("notary did not start", {"notary": i})
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                self.kill(i)
                raise LedgerError("notary exited while starting", {"notary": i})
            line += chunk
        self.ports[i] = int(json.loads(line.decode())["port"])
        return self.ports[i]

    def start_all(self) -> Genesis:
        for i in range(len(self.notaries)):
            self.start(i)
        return self.genesis

    def pid(self, i: int) -> int:
        return self.procs[i].pid

    def alive(self, i: int) -> bool:
        return i in self.procs and self.procs[i].poll() is None

    def kill(self, i: int) -> None:
        """SIGKILL notary ``i`` by its pid and reap it."""
        proc = self.procs.get(i)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        if proc is not None:
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    def wait_exit(self, i: int, timeout: float) -> bool:
        try:
            self.procs[i].wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def stop(self, i: int) -> None:
        proc = self.procs.get(i)
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def stop_all(self) -> None:
        for i in list(self.procs):
            self.stop(i)
