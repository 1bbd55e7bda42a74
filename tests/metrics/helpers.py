"""Scraping a node's ``/metrics`` over HTTP and reading it with prometheus-client's
own parser; the families docs/monitoring.md's table lists."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "docs" / "monitoring.md"
ROW = re.compile(r"^\| `(p2pmarket_\w+)` \| (\w+) \| ([^|]*) \|")


@dataclass(frozen=True)
class Row:
    name: str
    kind: str
    labels: tuple[str, ...]


def documented() -> list[Row]:
    """The rows of docs/monitoring.md's metric table, in order."""
    rows = []
    for line in MONITORING.read_text().splitlines():
        if (m := ROW.match(line)) is not None:
            labels = tuple(x.strip().strip("`") for x in m.group(3).split(",")
                           if x.strip().strip("`") and x.strip() != "—")
            rows.append(Row(m.group(1), m.group(2), labels))
    return rows


@dataclass(frozen=True)
class Scrape:
    """One scrape: family name -> type, and every sample's value by (name, labels)."""

    types: dict[str, str]
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        """A sample's value (0 when absent: a labelled counter not moved yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over the samples of ``name`` whose labels include ``labels``."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)


async def scrape(url: str) -> Scrape:
    """GET ``url`` (a node's base URL, or its metrics listener's) + ``/metrics``."""
    async with aiohttp.ClientSession() as session, \
            session.get(url.rstrip("/") + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
        text = await resp.text()
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return Scrape(types, samples)
