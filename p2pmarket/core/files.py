"""Durable files: atomic writes and sqlite opened the way docs/design.md section 4 asks.

Every store in p2pmarket goes through :func:`open_db`: WAL journal,
``synchronous=FULL``, so a committed transaction survives SIGKILL and power
loss before anything that depends on it is sent.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so a crash leaves the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def open_db(path: Path | str) -> sqlite3.Connection:
    """Open (creating) a sqlite database in WAL mode with full fsync on commit.

    ``":memory:"`` gives a throw-away database for tests. Autocommit is off:
    use ``with conn:`` blocks so each logical change is one transaction.
    """
    if str(path) != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), isolation_level="DEFERRED", check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn
