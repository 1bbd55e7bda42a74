"""Credits on the command line, micro-credits everywhere else.

All amounts inside p2pmarket are integers in micro-credits (docs/design.md section
2: no floats in signed content). People type and read credits with up to six
decimals.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from p2pmarket.core.errors import P2PMarketError

MICRO = 1_000_000
MAX_AMOUNT = 2**62


class AmountError(P2PMarketError):
    """An amount that is not a positive number of credits."""


def parse_credits(text: str) -> int:
    """``"12.5"`` -> 12_500_000 micro-credits; refuses zero, negatives, >6 decimals."""
    try:
        value = Decimal(text.strip())
    except (InvalidOperation, AttributeError):
        raise AmountError(f"not an amount of credits: {text!r}", text) from None
    if not value.is_finite() or value <= 0:
        raise AmountError(f"amount must be positive: {text!r}", text)
    micro = value * MICRO
    if micro != micro.to_integral_value():
        raise AmountError(f"at most 6 decimals: {text!r}", text)
    if micro > MAX_AMOUNT:
        raise AmountError(f"amount too large: {text!r}", text)
    return int(micro)


def format_credits(micro: int) -> str:
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{frac:06d}".rstrip("0").rstrip(".") if frac else f"{sign}{whole}"
