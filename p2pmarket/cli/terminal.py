"""Terminal output shared by the commands: the two consoles, JSON documents, and
resource amounts for people (and their units for machines). Nothing is animated
unless stdout is a terminal (:func:`animated`)."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from p2pmarket.api.server import jsonable

out = Console(highlight=False, soft_wrap=True,
              width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False)


def dump(doc: Any) -> None:
    """``--json`` output: sorted keys, bytes as hex (as the control API sends them),
    anything else not JSON as its ``str``."""
    print(json.dumps(jsonable(doc), indent=2, sort_keys=True, default=str))


def human(rtype: str, amount: int) -> str:
    """A resource amount in its base unit (MHz, KiB, bit/s) for people."""
    if rtype == "cpu":
        return f"{amount / 1000:g} GHz" if amount >= 1000 else f"{amount} MHz"
    if rtype in ("memory", "disk"):
        for unit, size in (("TiB", 1 << 30), ("GiB", 1 << 20), ("MiB", 1 << 10)):
            if amount >= size:
                return f"{amount / size:.4g} {unit}"
        return f"{amount} KiB"
    if rtype.startswith("net"):
        return f"{amount / 1e6:g} Mbit/s"
    return str(amount)


def unit_of(rtype: str) -> str:
    """The base unit of a resource type's amounts in leases and offers."""
    if rtype == "cpu":
        return "MHz"
    if rtype in ("memory", "disk"):
        return "KiB"
    if rtype.startswith("net"):
        return "bit/s"
    return "units"


def animated(json_out: bool) -> bool:
    """Whether to show live progress: only on a terminal, never with ``--json``."""
    return not json_out and out.is_terminal
