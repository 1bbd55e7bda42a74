"""The ledger's error class and the strict checks its wire parsers share."""

from __future__ import annotations

from typing import Any

from p2pmarket.core.errors import P2PMarketError


class LedgerError(P2PMarketError):
    """A refused ledger operation or malformed ledger data.

    ``value`` is machine-readable: usually the offending field's name or a small
    map (``{"expected": ..., "got": ...}``); for a conflicting entry at a
    certified seq it holds the conflicting authenticator (evidence).
    """


def check_map(doc: Any, what: str, keys: frozenset[str] | set[str]) -> dict[str, Any]:
    """``doc`` as a dict with exactly ``keys`` (all str)."""
    if not isinstance(doc, dict):
        raise LedgerError(f"{what} must be a map", what)
    if set(doc) != set(keys):
        got = sorted(str(k) for k in doc)[:16]
        raise LedgerError(f"{what} has the wrong fields", {"expected": sorted(keys), "got": got})
    return doc


def check_int(value: Any, name: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise LedgerError(f"{name} must be an integer in [{lo}, {hi}]", name)
    return value


def check_bytes(value: Any, name: str, size: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise LedgerError(f"{name} must be {size} bytes", name)
    return value


def check_str(value: Any, name: str, max_len: int) -> str:
    if not isinstance(value, str) or len(value) > max_len:
        raise LedgerError(f"{name} must be a string of at most {max_len} characters", name)
    return value
