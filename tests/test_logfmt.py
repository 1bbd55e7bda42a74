"""``--log-format json``: one JSON object per line with the node id and the event
name; the setting is checked; a node's own log calls carry their event names."""

from __future__ import annotations

import json
import logging

import pytest

from p2pmarket.core.config import Settings
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.logfmt import JsonFormatter, use_format


def record(msg: str, *args: object, event: str | None = None,
           exc: bool = False) -> logging.LogRecord:
    rec = logging.LogRecord("p2pmarket.host.runner", logging.WARNING, __file__, 1, msg,
                            args, None)
    rec.created = 1_800_000_000.25
    if event is not None:
        rec.event = event
    if exc:
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            import sys
            rec.exc_info = sys.exc_info()
    return rec


def test_a_json_line_has_the_fields_in_order() -> None:
    line = JsonFormatter("ab" * 8).format(record("tick %d failed", 7,
                                                 event="auction.tick_failed"))
    assert line == ('{"event": "auction.tick_failed", "level": "warning", '
                    '"logger": "p2pmarket.host.runner", "msg": "tick 7 failed", '
                    '"node": "abababababababab", "ts": "2027-01-15T08:00:00.250Z"}')
    doc = json.loads(JsonFormatter("n").format(record("x", exc=True)))
    assert doc["event"] == "" and "RuntimeError: boom" in doc["exc"]


def test_use_format_sets_every_root_handler() -> None:
    root = logging.getLogger()
    handler = logging.StreamHandler()
    root.addHandler(handler)
    saved = [(h, h.formatter) for h in root.handlers]   # pytest's own handlers too
    try:
        use_format("json", bytes.fromhex("cd" * 32))
        assert isinstance(handler.formatter, JsonFormatter)
        assert handler.formatter.node == "cd" * 8
        use_format("plain", bytes.fromhex("cd" * 32))
        assert "cdcdcdcdcdcd" in handler.format(record("hello"))
        with pytest.raises(ValueError):
            use_format("xml", b"\0" * 32)
    finally:
        root.removeHandler(handler)
        for h, f in saved:
            h.setFormatter(f)


def test_the_setting_is_plain_or_json() -> None:
    assert Settings().with_overrides({"log_format": "json"}).check().log_format == "json"
    with pytest.raises(P2PMarketError, match="plain or json"):
        Settings().with_overrides({"log_format": "yaml"}).check()


def test_every_event_logged_is_documented_and_every_documented_one_logged() -> None:
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    used = {m for path in (root / "p2pmarket").rglob("*.py")
            for m in re.findall(r'extra=\{"event": "([a-z_.]+)"\}', path.read_text())}
    doc = (root / "docs" / "monitoring.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_.]+)` \|", doc.split("## Logs")[1], re.M))
    assert used == documented and len(used) >= 10
