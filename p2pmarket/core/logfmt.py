"""The node's log lines: plain text by default, or with ``--log-format json`` one JSON
object per line for a log shipper.

A JSON line is ``{ts, level, logger, node, event, msg}`` (and ``exc`` with the
traceback when there is one): ``ts`` is UTC in RFC 3339 with milliseconds, ``node``
the node id (hex, first 16 digits), ``event`` the record's stable event name (a
log call passes ``extra={"event": "auction.tick_failed"}``; the documented list is
in docs/monitoring.md, "Logs") or ``""`` for a line without one, and ``msg`` the
formatted message. Keys are sorted, so lines diff and grep well.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

FORMATS = ("plain", "json")
PLAIN = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(
                   timespec="milliseconds").replace("+00:00", "Z"),
               "level": record.levelname.lower(), "logger": record.name, "node": self.node,
               "event": str(getattr(record, "event", "")), "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, sort_keys=True, default=str)


def use_format(fmt: str, node_id: bytes) -> None:
    """Give every handler of the root logger the ``fmt`` formatter (``plain``: the
    default lines, with the node id in front)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format is one of {FORMATS}: {fmt!r}")
    node = node_id.hex()[:16]
    formatter = (JsonFormatter(node) if fmt == "json"
                 else logging.Formatter(f"%(asctime)s {node[:12]} %(levelname)s "
                                        "%(name)s: %(message)s"))
    for handler in logging.getLogger().handlers:
        handler.setFormatter(formatter)


__all__ = ["FORMATS", "PLAIN", "JsonFormatter", "use_format"]
