"""The NAT room's error class: :class:`NatError`, with a short machine-readable
``code`` next to the message and value (``malformed``, ``signature``, ``expired``,
``peer_rate``, ``held``, ...: each module that raises it names its codes). Pure."""

from __future__ import annotations

from typing import Any

from p2pmarket.core.errors import P2PMarketError


class NatError(P2PMarketError):
    """A refused registration, attestation or relay operation."""

    def __init__(self, message: str, value: Any = None, *, code: str = "malformed") -> None:
        super().__init__(message, value)
        self.code = code

    def to_dict(self) -> dict[str, Any]:
        """The error dict, with the code: ``{error, error_value, code}``."""
        return {**super().to_dict(), "code": self.code}


__all__ = ["NatError"]
