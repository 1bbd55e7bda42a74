"""The dashboard's pages as HTML, pure: each takes the docs the node's control API gives
(JSON-friendly: bytes as hex) and ``now``, and returns the page's ``<main>`` content.

Every figure a page shows sits in an element with ``data-figure="<name>"`` (the
browser tests read them); charts are drawn by :mod:`~p2pmarket.web.svg`; every string
goes through :mod:`~p2pmarket.web.html`, so what came from the network shows as text.
Prices are shown in credits per second for the whole resource (``format_credits`` of
the µcredits the API gives), shares in percent; charts plot each bucket's last value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from p2pmarket.core.money import format_credits
from p2pmarket.web.html import Safe, el, join
from p2pmarket.web.svg import Line, line_chart, stacked_chart

US = 1_000_000
PPM = 1_000_000


@dataclass(frozen=True)
class Window:
    name: str
    seconds: int
    step: str


WINDOWS = (Window("1h", 3600, "minute"), Window("6h", 6 * 3600, "minute"),
           Window("1d", 86400, "minute"), Window("90d", 90 * 86400, "hour"))
DEFAULT_WINDOW = WINDOWS[0]
PAGES = (("market", "/ui/", "Market"), ("host", "/ui/host", "Host"),
         ("wallet", "/ui/wallet", "Wallet"))


def window_named(name: str | None) -> Window:
    return next((w for w in WINDOWS if w.name == name), DEFAULT_WINDOW)


def credits(micro: Any) -> str:
    return format_credits(int(micro)) if isinstance(micro, int) else "–"


def amount(rtype: str, value: Any) -> str:
    """A resource amount in its base unit (MHz, KiB, bit/s) for people."""
    if not isinstance(value, int):
        return "–"
    if rtype == "cpu":
        return f"{value / 1000:g} GHz" if value >= 1000 else f"{value} MHz"
    if rtype in ("memory", "disk"):
        for unit, size in (("TiB", 1 << 30), ("GiB", 1 << 20), ("MiB", 1 << 10)):
            if value >= size:
                return f"{value / size:.4g} {unit}"
        return f"{value} KiB"
    if rtype.startswith("net"):
        return f"{value / 1e6:g} Mbit/s"
    return str(value)


def percent(ppm: Any) -> str:
    return f"{ppm / 10_000:.1f} %" if isinstance(ppm, int | float) else "–"


def clock(ts: Any) -> str:
    if not isinstance(ts, int) or ts <= 0:
        return "–"
    return datetime.fromtimestamp(ts / US, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def short(hex_id: Any, n: int = 12) -> str:
    text = str(hex_id or "")
    return text if len(text) <= n else text[:n] + "…"


def figure(name: str, text: str, value: object = None) -> Safe:
    return el("span", text, class_="figure", data_figure=name,
              data_value=None if value is None else str(value))


def card(title: str, rows: Iterable[tuple[str, Safe | str]]) -> Safe:
    return el("section", el("h3", title),
              el("dl", [(el("dt", k), el("dd", v)) for k, v in rows]), class_="card")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], name: str,
          empty: str = "none") -> Safe:
    body = [el("tr", [el("td", c) for c in r]) for r in rows]
    if not body:
        return el("p", empty, class_="empty", data_table=name)
    return el("table", el("thead", el("tr", [el("th", h) for h in headers])),
              el("tbody", body), data_table=name)


def points(doc: Mapping[str, Any] | None, scale: float = 1.0) -> tuple[tuple[int, float], ...]:
    if not doc:
        return ()
    return tuple((int(p["t"]), p["last"] * scale) for p in doc.get("points", []))


def header(page: str, node_id: str, now: int, window: Window, public: bool) -> Safe:
    nav = [el("a", label, href=f"{href}?window={window.name}",
              class_="active" if name == page else None) for name, href, label in PAGES]
    windows = [el("a", w.name, href=f"?window={w.name}",
                  class_="active" if w == window else None) for w in WINDOWS]
    return el("header", el("strong", "p2pmarket"), el("nav", nav),
              el("span", "node ", el("code", short(node_id, 16)), class_="node"),
              el("span", "window: ", windows, class_="windows"),
              el("span", "public view" if public else "", class_="badge") if public else None)


def updated(now: int) -> Safe:
    return el("p", "as of ", figure("now", clock(now), now), class_="updated")


def _credits_fmt(v: float) -> str:
    return format_credits(round(v))


# -- the market ---------------------------------------------------------------------


def market_main(market: Mapping[str, Any], history: Mapping[str, Mapping[str, Any]],
                now: int, window: Window) -> Safe:
    """``market``: the ``market`` control call's doc; ``history``: series name
    (``cpu``, ``cpu.low``) -> the ``history`` call's doc."""
    prices: Mapping[str, Mapping[str, int]] = market.get("prices", {})
    hosts: list[Mapping[str, Any]] = list(market.get("hosts", []))
    t0 = now - window.seconds * US
    cards = [card(res, [
        ("hosts", figure(f"market-hosts-{res}", str(p["hosts"]), p["hosts"])),
        ("capacity", figure(f"market-capacity-{res}", amount(res, p["capacity"]),
                            p["capacity"])),
        ("cheapest", figure(f"market-low-{res}", credits(p["low"]), p["low"])),
        ("median", figure(f"market-median-{res}", credits(p["median"]), p["median"])),
        ("dearest", figure(f"market-high-{res}", credits(p["high"]), p["high"]))])
        for res, p in prices.items()]
    charts = [el("figure", line_chart(
        [Line("median", points(history.get(res))), Line("cheapest",
                                                        points(history.get(f"{res}.low")))],
        t0, now, f"{res}: market price (credits/s)", _credits_fmt, least=1),
        data_chart=f"market-{res}")
        for res in prices]
    types = list(prices)
    rows = []
    for h in hosts:
        reach = str(h.get("reach", "")) + ("" if h.get("reachable", True) else ", unreachable")
        cells: list[object] = [
            el("span", el("code", short(h.get("node_id"))),
               " (this node)" if h.get("own") else "", class_="host-id"),
            el("span", str(h.get("url", "")), class_="host-url"), reach,
            percent(h.get("availability_ppm"))]
        for res in types:
            ad = h.get("resources", {}).get(res)
            cells.append("–" if ad is None else f"{amount(res, ad['capacity'])} at "
                         f"{credits(ad['price'])}/s")
        rows.append(cells)
    read = market.get("at")
    summary = (f"{len(hosts)} hosts read from the DHT at {clock(read)}" if read
               else "the market has not been read yet")
    return join([
        el("h1", "Market"), updated(now), el("p", figure("market-read", summary, read)),
        el("div", cards, class_="cards"), el("div", charts, class_="charts"),
        el("h2", "Hosts"),
        table(["host", "url", "reachability", "availability", *types], rows, "hosts",
              "no hosts found yet")])


# -- the host ------------------------------------------------------------------------


def host_main(status: Mapping[str, Any], own: Mapping[str, Mapping[str, Any]],
              alloc: Mapping[str, Mapping[str, Mapping[str, Any]]],
              witnesses: Mapping[str, Any], now: int, window: Window) -> Safe:
    """``status``: ``host_status``; ``own``: resource -> its ``own`` history; ``alloc``:
    resource -> account id -> its share history; ``witnesses``: ``audit_witnesses``."""
    market: Mapping[str, Mapping[str, int]] = status.get("market", {})
    min_prices = status.get("config", {}).get("min_prices", {})
    t0 = now - window.seconds * US
    cards = [card(res, [
        ("price", figure(f"own-price-{res}", credits(m["price"]) + "/s", m["price"])),
        ("capacity", figure(f"own-capacity-{res}", amount(res, m["capacity"]),
                            m["capacity"])),
        ("free", figure(f"own-free-{res}", amount(res, m["free"]), m["free"])),
        ("min price", figure(f"own-min-{res}", credits(min_prices.get(res)),
                             min_prices.get(res)))])
        for res, m in market.items() if m.get("capacity")]
    charts = [el("figure", line_chart([Line("price", points(own.get(res)))], t0, now,
                                      f"{res}: this host's price (credits/s)", _credits_fmt,
                                      least=1),
                 data_chart=f"own-{res}") for res, m in market.items() if m.get("capacity")]
    stacks = [el("figure", stacked_chart(
        [Line(short(aid, 10), points(doc)) for aid, doc in sorted(per.items())], t0, now,
        f"{res}: allocation shares", lambda v: f"{v / 10_000:g} %", top=PPM),
        data_chart=f"alloc-{res}") for res, per in alloc.items()]
    accounts = [[el("code", short(a.get("account_id"))), el("code", short(a.get("holder"))),
                 str(a.get("state", "")),
                 figure(f"account-balance-{a.get('account_id')}", credits(a.get("balance")),
                        a.get("balance")),
                 ", ".join(sorted(a.get("bids", {}))),
                 ", ".join(f"{r} {amount(r, v)}" for r, v in sorted(
                     a.get("allocation", {}).items()))]
                for a in status.get("accounts", [])]
    vms = []
    for v in status.get("vms", []):
        used = v.get("usage") or {}
        vms.append([str(v.get("name", "")), el("code", short(v.get("account_id"))),
                    figure(f"vm-state-{v.get('account_id')}", str(v.get("state", ""))),
                    str(v.get("vcpus", "")), amount("memory", v.get("memory_kib")),
                    f"{used['cpu_ns'] / 1e9:.1f} s" if "cpu_ns" in used else "–",
                    amount("memory", used.get("rss_kib")) if used else "–"])
    seen = [[el("code", short(w.get("witness"))), str(w.get("url", "")),
             figure(f"witness-state-{w.get('witness')}", str(w.get("state", "?"))),
             f"seq {w.get('audited_seq', '–')}, head {short(w.get('head') or '–', 8)}",
             clock(w.get("last_audit")), str(w.get("proofs", "–")),
             str(w.get("error") or "")]
            for w in witnesses.get("witnesses", [])]
    return join([
        el("h1", "This host"), updated(now), el("div", cards, class_="cards"),
        el("div", charts, stacks, class_="charts"),
        el("h2", "Accounts ", figure("accounts", str(len(accounts)), len(accounts))),
        table(["account", "holder", "state", "balance", "bids", "allocation"], accounts,
              "accounts", "no accounts"),
        el("h2", "Virtual machines"),
        table(["domain", "account", "state", "vcpus", "memory", "cpu used", "rss"], vms,
              "vms", "no virtual machines"),
        el("h2", "Audit: what the witnesses say"),
        table(["witness", "url", "state", "audited / head", "last audit", "proofs", "error"],
              seen, "witnesses", witnesses.get("error") or "no witnesses found yet")])


# -- the wallet ----------------------------------------------------------------------


def spend_lines(entries: Sequence[Mapping[str, Any]], now: int) -> tuple[Line, Line]:
    """The balance after each entry, and the credits spent so far (the sum of the
    negative deltas), over time; both held until ``now``."""
    balance, spent, total = [], [], 0
    for e in entries:
        ts = int(e.get("ts", 0))
        balance.append((ts, float(e.get("balance", 0))))
        total += max(0, -int(e.get("delta", 0)))
        spent.append((ts, float(total)))
    if entries and now > balance[-1][0]:
        balance.append((now, balance[-1][1]))
        spent.append((now, spent[-1][1]))
    return Line("balance", tuple(balance)), Line("spent", tuple(spent))


def wallet_main(status: Mapping[str, Any], entries: Sequence[Mapping[str, Any]],
                leases: Mapping[str, Any], now: int, window: Window) -> Safe:
    """``status``: the node's ``status``; ``entries``: ``history`` (its chain);
    ``leases``: ``wallet_leases``."""
    balance_line, spent_line = spend_lines(entries, now)
    spent = int(spent_line.points[-1][1]) if spent_line.points else 0
    received = sum(max(0, int(e.get("delta", 0))) for e in entries)
    t0 = now - window.seconds * US
    cards = [card("wallet", [
        ("balance", figure("wallet-balance", credits(status.get("balance")),
                           status.get("balance"))),
        ("spent", figure("wallet-spent", credits(spent), spent)),
        ("received", figure("wallet-received", credits(received), received)),
        ("entries", figure("wallet-entries", str(len(entries)), len(entries)))])]
    charts = [el("figure", line_chart([balance_line], t0, now, "balance (credits)",
                                      _credits_fmt, least=1), data_chart="wallet-balance"),
              el("figure", line_chart([spent_line], t0, now, "spent so far (credits)",
                                      _credits_fmt, least=1), data_chart="wallet-spent")]
    rows = [[str(e.get("seq")), str(e.get("kind")), clock(e.get("ts")), credits(e.get("delta")),
             credits(e.get("balance")), el("code", short(e.get("counterparty") or "")),
             str(e.get("memo", "")), "yes" if e.get("certified") else "no"]
            for e in list(entries)[-20:][::-1]]
    lease_rows = [[el("code", short(x.get("lease_id"))), str(x.get("url", "")),
                   el("code", short(x.get("account_id"))),
                   ", ".join(f"{r} {amount(r, v)}" for r, v in sorted(
                       (x.get("resources") or {}).items())),
                   clock(x.get("end")), credits(x.get("balance")), str(x.get("error") or "")]
                  for x in leases.get("leases", [])]
    wallet = leases.get("wallet")
    return join([
        el("h1", "Wallet"), updated(now), el("div", cards, class_="cards"),
        el("div", charts, class_="charts"),
        el("h2", "Latest entries of the node's chain"),
        table(["seq", "kind", "time", "amount", "balance", "counterparty", "memo",
               "certified"], rows, "entries", "no entries yet"),
        el("h2", "Leases", el("small", f" of {wallet}") if wallet else None),
        table(["lease", "host", "account", "resources", "ends", "balance", "error"],
              lease_rows, "leases", "no wallet dir named (setting dashboard_wallet)"
              if wallet is None else "no leases")])


def login_main(message: str, next_path: str) -> Safe:
    return el("section", el("h1", "p2pmarket dashboard"),
              el("p", message, class_="message"),
              el("form", el("label", "control token ",
                            el("input", type="password", name="token", autofocus=True,
                               autocomplete="current-password")),
                 el("input", type="hidden", name="next", value=next_path),
                 el("button", "Sign in", type="submit"), method="post", action="/ui/login"),
              el("p", "The token is in api.token in the node's data dir.", class_="hint"),
              class_="login")


__all__ = ["DEFAULT_WINDOW", "WINDOWS", "Window", "header", "host_main", "login_main",
           "market_main", "spend_lines", "wallet_main", "window_named"]
