"""The error base class and the error-dict form (docs/design.md section 2).

Expected failures raise a subclass of :class:`P2PMarketError`, one class per
module (Tycoon note 6/6). The RPC layer turns them into
``{"error": message, "error_value": data}`` (note 5/2); anything else becomes a
generic error whose details stay in the log (note 11/14).
"""

from __future__ import annotations

import errno
from typing import Any


class P2PMarketError(Exception):
    """An anticipated failure: bad input, refused operation, unreachable peer."""

    def __init__(self, message: str, value: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.value = value

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, "error_value": self.value}


class RemoteError(P2PMarketError):
    """A peer answered with an error dict."""


def error_dict(message: str, value: Any = None) -> dict[str, Any]:
    return {"error": message, "error_value": value}


def is_error(result: Any) -> bool:
    return isinstance(result, dict) and "error" in result


INTERNAL_ERROR = error_dict("internal error", "internal")
DISK_FULL = error_dict("the node's disk is full: nothing was changed; try again later",
                       "disk_full")


def is_disk_full(exc: BaseException) -> bool:
    """An error from a full disk: ``OSError`` ENOSPC (or EDQUOT), or sqlite's
    "database or disk is full" (its ``OperationalError``, told by the message)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return type(exc).__name__ == "OperationalError" and "disk is full" in str(exc)
