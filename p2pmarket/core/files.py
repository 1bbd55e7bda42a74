"""Durable files: atomic writes and sqlite opened the way docs/design.md section 4 asks.

Every store in p2pmarket goes through :func:`open_db`: WAL journal,
``synchronous=FULL``, so a committed transaction survives SIGKILL and power
loss before anything that depends on it is sent. :func:`require_format` records which
format a store was written in and refuses one written in another.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from p2pmarket.core.errors import P2PMarketError


class FormatError(P2PMarketError):
    """A store written in a format this version does not read."""


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


_FORMATS = "CREATE TABLE IF NOT EXISTS formats (store TEXT PRIMARY KEY, version INTEGER NOT NULL)"


def require_format(conn: sqlite3.Connection, store: str, version: int,
                   tables: Iterable[str], why: str) -> None:
    """Refuse (:class:`FormatError`) a ``store`` database written in another format than
    ``version``; a new one is marked with ``version``. A database that has one of the
    store's ``tables`` but no mark was written before formats were marked (format 1).
    ``why`` says what the current format changed. Call it before creating the tables."""
    with conn:
        conn.execute(_FORMATS)
        row = conn.execute("SELECT version FROM formats WHERE store = ?", (store,)).fetchone()
        if row is None:
            names = list(tables)
            marks = ",".join("?" * len(names))
            old = names and conn.execute(
                f"SELECT 1 FROM sqlite_master WHERE type = 'table' AND name IN ({marks})",
                names).fetchone() is not None
            if not old:
                conn.execute("INSERT INTO formats (store, version) VALUES (?, ?)",
                             (store, version))
                return
            found = 1
        else:
            found = int(row[0])
    if found != version:
        raise FormatError(f"this {store} store is in format {found}; this version of "
                          f"p2pmarket reads format {version} ({why}): start a new network "
                          "or data dir", {"store": store, "format": found, "expected": version})
