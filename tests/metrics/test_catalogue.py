"""docs/monitoring.md, the catalogue and the Grafana dashboard agree: the doc's table is
the catalogue row for row (name, type, labels), names follow Prometheus' conventions,
and every query of docs/grafana-p2pmarket.json reads a family the catalogue lists."""

from __future__ import annotations

import json
import re

from p2pmarket.metrics.catalogue import COUNTER, GAUGE, HISTOGRAM, METRICS
from tests.metrics.helpers import ROOT, Row, documented

SERIES_SUFFIXES = ("_bucket", "_sum", "_count")


def test_the_doc_table_is_the_catalogue() -> None:
    assert documented() == [Row(m.name, m.kind, m.labels) for m in METRICS]


def test_names_follow_the_conventions() -> None:
    for m in METRICS:
        assert re.fullmatch(r"p2pmarket_[a-z0-9_]+", m.name), m.name
        assert m.kind in (COUNTER, GAUGE, HISTOGRAM)
        assert m.name.endswith("_total") == (m.kind == COUNTER), m.name
        assert not m.name.endswith(("_ms", "_kib", "_mib", "_micro")), m.name
        assert m.help.strip() and len(set(m.labels)) == len(m.labels)
    assert len({m.name for m in METRICS}) == len(METRICS)
    families = {m.name.removesuffix("_total") for m in METRICS}
    for prefix in ("p2pmarket_rpc_", "p2pmarket_dht_lookup_", "p2pmarket_auction_tick_"):
        assert any(f.startswith(prefix) for f in families), prefix


def test_the_grafana_dashboard_reads_only_catalogued_families() -> None:
    board = json.loads((ROOT / "docs" / "grafana-p2pmarket.json").read_text())
    names = {m.name for m in METRICS}
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    used = set()
    for expr in exprs:
        for name in re.findall(r"\bp2pmarket_[a-z0-9_]+", expr):
            base = name
            for suffix in SERIES_SUFFIXES:
                if name.endswith(suffix) and name.removesuffix(suffix) in names:
                    base = name.removesuffix(suffix)
            assert base in names, (name, expr)
            used.add(base)
    for family in ("p2pmarket_rpc_requests_total", "p2pmarket_dht_lookup_duration_seconds",
                   "p2pmarket_auction_tick_duration_seconds"):
        assert family in used
