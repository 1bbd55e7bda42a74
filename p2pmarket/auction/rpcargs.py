"""Argument checks shared by the host's RPC handlers (clear error dicts, seed 5/2)."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from decimal import Decimal, InvalidOperation
from typing import Any

from p2pmarket.auction import HostError

PPM = 1_000_000
US_PER_S = 1_000_000
MAX_INTERVAL_S = 10 * 365 * 24 * 3600


def check_args(args: dict[str, Any], required: AbstractSet[str],
               optional: AbstractSet[str] = frozenset()) -> None:
    missing = sorted(required - set(args))
    if missing:
        raise HostError(f"missing argument {missing[0]!r}", missing)
    unknown = sorted(str(k) for k in set(args) - required - optional)
    if unknown:
        raise HostError(f"unknown argument {unknown[0]!r}", unknown)


def interval_arg(value: Any) -> int:
    """``interval_s`` (whole seconds) in µs."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_INTERVAL_S:
        raise HostError(f"interval_s must be an integer from 1 to {MAX_INTERVAL_S}",
                        repr(value)[:40])
    return value * US_PER_S


def account_id_arg(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise HostError("account_id must be a short string", repr(value)[:40])
    return value


def ratio_arg(value: Any) -> int:
    """A contingency ratio: ppm (int) or a decimal string ``"0.25"``; 0 .. 1."""
    if isinstance(value, bool):
        raise HostError("contingency must be a ratio from 0 to 1", repr(value))
    if isinstance(value, int):
        ppm = value
    elif isinstance(value, str):
        try:
            ppm = int(Decimal(value.strip()) * PPM)
        except (InvalidOperation, ValueError):
            raise HostError("contingency must be a ratio from 0 to 1", value[:40]) from None
    else:
        raise HostError("contingency must be a ratio from 0 to 1", type(value).__name__)
    if not 0 <= ppm <= PPM:
        raise HostError("contingency must be a ratio from 0 to 1", value)
    return ppm
