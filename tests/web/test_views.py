"""The dashboard's pages and charts, pure: every string from the network is escaped
(text, attributes, chart labels), the figures are the docs' values, the charts draw
what they are given."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from p2pmarket.web.html import Safe, el, join
from p2pmarket.web.svg import Line, clip, line_chart, nice_step, stacked_chart, value_ticks
from p2pmarket.web.views import DEFAULT_WINDOW, host_main, market_main, spend_lines, wallet_main

S = 1_000_000
NOW = 1_800_000_000 * S
EVIL = '<script>alert(1)</script><img src=x onerror="alert(2)"><b>bold</b>"\'&'


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(markup: str) -> Tags:
    p = Tags()
    p.feed(markup)
    return p


def test_strings_and_attributes_are_escaped() -> None:
    out = el("p", EVIL, title=EVIL, data_x=EVIL).text
    p = parsed(out)
    assert p.tags == ["p"] and "".join(p.text) == EVIL
    assert join([EVIL, Safe("<i>ok</i>"), 3, None]).text.count("<i>") == 1


def market_doc() -> dict[str, object]:
    return {"at": NOW, "prices": {"cpu": {"hosts": 2, "capacity": 6000, "low": 10,
                                          "median": 10, "high": 2_500_000}},
            "hosts": [{"node_id": "ab" * 20, "url": EVIL, "reach": EVIL, "reachable": False,
                       "availability_ppm": 990_000, "own": False,
                       "resources": {"cpu": {"capacity": 2000, "price": 10, "hour_avg": 9}}},
                      {"node_id": "cd" * 20, "url": "http://127.0.0.1:1", "reach": "public",
                       "reachable": True, "availability_ppm": 1_000_000, "own": True,
                       "resources": {"cpu": {"capacity": 4000, "price": 2_500_000,
                                             "hour_avg": 1}}}]}


def test_a_host_record_with_html_shows_as_text() -> None:
    history = {"cpu": {"points": [{"t": NOW - 120 * S, "last": 10}, {"t": NOW, "last": 12}]}}
    out = market_main(market_doc(), history, NOW, DEFAULT_WINDOW).text
    p = parsed(out)
    assert "script" not in p.tags and "img" not in p.tags and "b" not in p.tags
    assert EVIL in "".join(p.text)
    assert 'data-figure="market-high-cpu" data-value="2500000">2.5<' in out
    assert "99.0 %" in out and "(this node)" in out


def test_the_host_and_wallet_pages_show_the_docs_figures() -> None:
    status = {"market": {"cpu": {"capacity": 4000, "price": 1_500_000, "free": 1000}},
              "config": {"min_prices": {"cpu": 3}},
              "accounts": [{"account_id": EVIL, "holder": "ee" * 32, "state": "active",
                            "balance": 7_000_000, "bids": {"cpu": {}},
                            "allocation": {"cpu": 3000}}],
              "vms": [{"name": EVIL, "account_id": "a1", "state": "running", "vcpus": 1,
                       "memory_kib": 262144, "usage": {"cpu_ns": 2_000_000_000,
                                                       "rss_kib": 1024}}]}
    alloc = {"cpu": {EVIL: {"points": [{"t": NOW - 60 * S, "last": 750_000}]}}}
    witnesses = {"witnesses": [{"witness": "ff" * 20, "url": EVIL, "state": "trusted",
                                "audited_seq": 5, "head": 5, "proofs": 0}]}
    out = host_main(status, {}, alloc, witnesses, NOW, DEFAULT_WINDOW).text
    p = parsed(out)
    assert "script" not in p.tags and "img" not in p.tags
    assert ">1.5/s<" in out and 'data-figure="accounts" data-value="1">1<' in out
    assert "trusted" in out and "polygon" in out
    entries = [{"seq": 0, "kind": "RECV", "ts": NOW - 90 * S, "delta": 5_000_000,
                "balance": 5_000_000, "memo": EVIL},
               {"seq": 1, "kind": "SEND", "ts": NOW - 30 * S, "delta": -1_250_000,
                "balance": 3_750_000, "memo": "x"}]
    balance, spent = spend_lines(entries, NOW)
    assert spent.points[-1] == (NOW, 1_250_000) and balance.points[-1] == (NOW, 3_750_000)
    out = wallet_main({"balance": 3_750_000}, entries, {"wallet": EVIL, "leases": []}, NOW,
                      DEFAULT_WINDOW).text
    assert "script" not in parsed(out).tags
    assert 'data-figure="wallet-spent" data-value="1250000">1.25<' in out


def test_the_charts() -> None:
    assert nice_step(97) == 20 and value_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert clip(((1, 1.0), (5, 2.0), (10, 3.0), (20, 4.0)), 6, 15) == ((6, 2.0), (10, 3.0))
    svg = line_chart([Line(EVIL, ((NOW - 600 * S, 5.0), (NOW, 7.0)))], NOW - 3600 * S, NOW,
                     EVIL).text
    p = parsed(svg)
    assert set(p.tags) <= {"svg", "title", "text", "line", "polyline", "circle", "rect"}
    assert 'data-last="7.0"' in svg and "style=" not in svg
    assert "no samples yet" in line_chart([], 0, 10, "t").text
    stack = stacked_chart([Line("a", ((NOW - 60 * S, 400_000.0), (NOW, 500_000.0))),
                           Line("b", ((NOW, 300_000.0),))], NOW - 3600 * S, NOW, "s",
                          top=1_000_000).text
    assert stack.count("<polygon") == 2
    ys = [float(y) for y in re.findall(r",([0-9.]+)", stack.split("<polygon")[2])]
    assert min(ys) >= 30   # stacked under the top of the plot area
