"""The fault harness: break a running testnet on purpose, heal it, check the market.

A :class:`Harness` drives a testnet through a :class:`~.backend.Backend` (network
namespaces or Docker Compose) with the ``p2pmarket`` CLI run at its sites: buyers
mint, buy, top up, rebid and cancel (each completed transfer recorded), and each
fault method injects one fault, checks that the market goes on through it, heals it
and waits (bounded, polling) until the nodes are back. :meth:`Harness.check` then
gathers what the nodes report and returns the violations of the invariants
(:mod:`.invariants`). Every wait is bounded in time; nothing sleeps for a fixed
length to let something happen.

The faults (docs/design.md section 9): :meth:`~Harness.crash_host` (SIGKILL mid-lease,
restart: chain, balance, accounts and leases intact, the lease refreshes),
:meth:`~Harness.cut_notary` (transfers go on with 3 of 4, the fourth catches up),
:meth:`~Harness.cut_witness`, :meth:`~Harness.cut_relay`, :meth:`~Harness.cut_dht`
(lookups still succeed), :meth:`~Harness.fill_disk` (a clear error, nothing
corrupted). Each returns a :class:`Fault` record.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from p2pmarket.core.errors import P2PMarketError
from p2pmarket.testnet.backend import Backend
from p2pmarket.testnet.invariants import Observation, Transfer, Violation, chains_of, violations
from p2pmarket.testnet.topology import HTTP_PORT

T = TypeVar("T")
CLI_TIMEOUT_S = 120.0
READY_S = 90.0
HEAL_S = 120.0   # how long the market may take to heal (CI runs two suites on 2 cores)
POLL_S = 0.5
# what a buyer's refusal of a host's quote says when it is far above the host's advert
# (client.quotecheck; nothing paid)
STALE_ADVERT = "it advertises"
OBSERVERS = 8                    # CLI commands run at once to observe the testnet
BIDS = ("cpu:1,0.1,1", "memory:1,64MiB,256MiB")
PLAIN = ("status", "bank")     # commands with no --json (status prints JSON anyway)
DHT_CLIENT = ["0.0.0.0", 1]      # the DHT address a relayed or proxied node reports


class FaultError(P2PMarketError):
    """The market did not get through a fault as it should (the message says how)."""


@dataclass(frozen=True)
class Fault:
    """One fault injected and healed."""

    kind: str
    target: str
    seconds: float                     # from injection to healed and ready
    details: dict[str, Any] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target,
                "seconds": round(self.seconds, 2), **self.details}


def until(what: str, timeout_s: float, check: Callable[[], T | None]) -> T:
    """Poll ``check()`` until it gives something true; :class:`FaultError` naming
    ``what`` and the last answer when ``timeout_s`` is out."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise FaultError(f"{what}: not within {timeout_s:.0f}s (last: {got!r})"[:2000])
        time.sleep(POLL_S)


class Harness:
    """Buyers, faults and checks over one running testnet."""

    def __init__(self, backend: Backend, seed: int = 0) -> None:
        self.backend = backend
        self.topology = backend.topology
        self.rng = random.Random(seed)
        self.completed: list[Transfer] = []
        self.faults: list[Fault] = []
        self._keys: dict[str, str] = {}
        self._ids: dict[str, str] = {}
        self.minted = self._minted_before()
        """What the notaries must say was minted: what they said when the harness
        started (a testnet may have been used before), plus what it minted since."""

    def _minted_before(self) -> int:
        """The first notary's count of the credits minted so far (0 on a new testnet);
        :class:`FaultError` if it does not answer."""
        notary = self.topology.notaries[0].name
        supply = until(f"{notary}'s supply", 60.0,
                       lambda: (lambda d: d if "minted" in d else None)(
                           self.status(notary, "supply")))
        return int(supply["minted"])

    # -- the CLI at a site -----------------------------------------------------------

    def cli(self, site: str, *args: str, check: bool = True,
            timeout_s: float = CLI_TIMEOUT_S) -> Any:
        """``p2pmarket ARGS --json`` at ``site`` (no ``--json`` for :data:`PLAIN`): the
        parsed output; with ``check``, :class:`FaultError` on a non-zero exit."""
        flag = [] if args[0] in PLAIN else ["--json"]
        try:
            done = self.backend.p2pmarket(site, [*args, *flag], timeout_s)
        except subprocess.TimeoutExpired:
            raise FaultError(f"`p2pmarket {' '.join(args[:2])}` at {site} timed out",
                             site) from None
        if check and done.returncode != 0:
            raise FaultError(f"`p2pmarket {' '.join(args[:2])}` at {site} failed: "
                             f"{(done.stderr or done.stdout)[-1500:]}", site)
        try:
            return json.loads(done.stdout) if done.stdout.strip() else {
                "error": done.stderr[-1500:], "exit": done.returncode}
        except ValueError:
            return {"error": done.stdout[-1500:], "exit": done.returncode}

    def status(self, site: str, what: str = "node") -> dict[str, Any]:
        """A node's ``p2pmarket status`` (``{"error": ...}`` if it does not answer)."""
        doc = self.cli(site, "status", "--data-dir", self.backend.data_dir(site),
                       "--what", what, check=False, timeout_s=20)
        return doc if isinstance(doc, dict) else {"error": repr(doc)}

    def wallet(self, buyer: str, *args: str, check: bool = True) -> Any:
        """A wallet command of a buyer (or the mint) at its site."""
        site = self.backend.mint_site if buyer == self.topology.mint else buyer
        return self.cli(site, *args, "--wallet", self.backend.wallet_dir(buyer), check=check)

    def key(self, name: str) -> str:
        """The public key (hex) of a node, a buyer or the mint."""
        if name not in self._keys:
            if name == self.topology.mint or self.topology.site(name).role == "buyer":
                self._keys[name] = str(self.wallet(name, "wallet", "show")["key"])
            else:
                st = until(f"{name} answers", READY_S, lambda: _ok(self.status(name)))
                self._keys[name], self._ids[name] = str(st["key"]), str(st["node_id"])
        return self._keys[name]

    def node_id(self, site: str) -> str:
        self.key(site)
        return self._ids[site]

    def site_of_url(self, url: str) -> str:
        """The site a node URL (its own, or a router's port forward) is at."""
        where = {f"http://{s.address}:{HTTP_PORT}": s.name for s in self.topology.sites}
        where.update({f"http://{r.address}:{HTTP_PORT}": r.forward
                      for r in self.topology.routers if r.forward is not None})
        if url.rstrip("/") not in where:
            raise FaultError(f"no site at {url}", url)
        return where[url.rstrip("/")]

    # -- the market ------------------------------------------------------------------

    def mint(self, buyer: str, credits: int) -> None:
        site = self.backend.mint_site
        self.cli(site, "bank", "mint", "--mint-wallet",
                 self.backend.wallet_dir(self.topology.mint), "--to", self.key(buyer),
                 "--amount", str(credits))
        self.minted += credits * 1_000_000
        self.completed.append(Transfer(self.key(self.topology.mint), self.key(buyer),
                                       credits * 1_000_000, "mint"))

    def buy(self, buyer: str, hosts: Sequence[str], budget: str = "2",
            check: bool = True) -> dict[str, Any]:
        """``p2pmarket buy`` from ``hosts``; each purchase recorded as a completed
        transfer. The report (with ``check``, :class:`FaultError` unless every host
        sold).

        With ``check``, a purchase refused before paying because a host quoted far
        above the price the buyer read in the DHT (its advert not yet current after a
        sale just made: a stale read, nothing paid) is tried again, as a buyer would,
        for up to :data:`HEAL_S`."""
        args = ["buy", "--budget", budget, "--duration", "1h", "--hosts", str(len(hosts)),
                *BIDS]
        for h in hosts:
            args += ["--host", self.node_id(h)]
        deadline = time.monotonic() + HEAL_S
        while True:
            report: dict[str, Any] = self.wallet(buyer, *args, check=False)
            if not (check and STALE_ADVERT in str(report.get("error", ""))
                    and time.monotonic() < deadline):
                break
            time.sleep(POLL_S)
        by_id = {self.node_id(h): h for h in hosts}
        for p in report.get("purchases", []):
            self.completed.append(Transfer(self.key(buyer), self.key(by_id[p["host"]]),
                                           int(p["paid"]), "buy"))
        if check and (report.get("skipped") or report.get("unfinished")
                      or len(report.get("purchases", [])) != len(hosts)):
            raise FaultError(f"{buyer} could not buy from {list(hosts)}: "
                             f"{json.dumps(report)[:1500]}", buyer)
        return report

    def leases(self, buyer: str) -> list[dict[str, Any]]:
        doc = self.wallet(buyer, "leases", check=False)
        found: list[dict[str, Any]] = doc.get("leases", [])
        return found

    def lease_current(self, buyer: str, lease_id: str) -> dict[str, Any] | None:
        """The lease as its host reports it now, or None while only a stored copy is
        shown."""
        for x in self.leases(buyer):
            if x.get("lease_id") == lease_id and x.get("source") == "current":
                return x
        return None

    def topup(self, buyer: str, lease_id: str, host: str, credits: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.wallet(buyer, "topup", lease_id, credits)
        self.completed.append(Transfer(self.key(buyer), self.key(host), int(doc["paid"]),
                                       "topup"))
        return doc

    def rebid(self, buyer: str, lease_id: str, bids: Sequence[str]) -> dict[str, Any]:
        doc: dict[str, Any] = self.wallet(buyer, "rebid", lease_id, *bids)
        return doc

    def cancel(self, buyer: str, lease_id: str, host: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.wallet(buyer, "cancel", lease_id)
        if doc.get("status") == "done" and doc.get("refunded"):
            self.completed.append(Transfer(self.key(host), self.key(buyer),
                                           int(doc["refunded"]), "refund"))
        return doc

    # -- waiting and checking --------------------------------------------------------

    def wait_ready(self, sites: Sequence[str] | None = None,
                   timeout_s: float = READY_S) -> None:
        for site in sites if sites is not None else [s.name for s in self.topology.nodes]:
            until(f"{site} ready", timeout_s,
                  lambda s=site: self.status(s).get("ready"))    # type: ignore[misc]

    def wait_listed(self, buyer: str, host: str, timeout_s: float = READY_S) -> None:
        """Until ``buyer``'s market lookup lists ``host`` (after a restart its record
        and its reachability come back)."""
        until(f"{host} listed at {buyer}", timeout_s, lambda: self.node_id(host) in {
            h["node_id"] for h in self.wallet(buyer, "hosts", check=False).get("hosts", [])})

    def observe(self, settled: bool = True) -> Observation:
        """What the nodes report now (asked all at once): every notary's supply, every
        buyer's, the mint's and every host's chain, every node's audit status."""
        topo = self.topology
        wallets = [b.name for b in topo.buyers] + [topo.mint]
        hosts = [s.name for s in topo.nodes if s.role == "host"]
        for name in wallets + hosts:
            self.key(name)
        with ThreadPoolExecutor(OBSERVERS) as pool:
            chains = {self.key(n): pool.submit(self.wallet, n, "wallet", "history",
                                               check=False) for n in wallets}
            chains.update({self.key(h): pool.submit(self.status, h, "history")
                           for h in hosts})
            audits = {s.name: pool.submit(self._audit, s.name) for s in topo.nodes}
            supplies = {n.name: pool.submit(self.status, n.name, "supply")
                        for n in topo.notaries}
            return Observation(
                minted=self.minted, supplies={k: f.result() for k, f in supplies.items()},
                chains=chains_of({k: f.result().get("history", [])
                                  for k, f in chains.items()}),
                completed=tuple(self.completed),
                audits={k: f.result() for k, f in audits.items()},
                honest=frozenset(self.node_id(h) for h in hosts), settled=settled)

    def _audit(self, site: str) -> dict[str, Any]:
        doc = self.cli(site, "audit", "status", "--data-dir", self.backend.data_dir(site),
                       check=False, timeout_s=20)
        if "witnesses" not in doc:
            return {"error": str(doc.get("error"))}
        rows = [h for w in doc["witnesses"] for h in w.get("hosts", [])]
        return {"hosts": rows}

    def check(self, timeout_s: float = HEAL_S) -> list[Violation]:
        """The violations once the market has settled: observed until none is left or
        ``timeout_s`` is out (a notary catching up, a witness re-auditing), then the
        last ones found."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = violations(self.observe())
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(POLL_S)

    def _record(self, kind: str, target: str, started: float, **details: Any) -> Fault:
        fault = Fault(kind, target, time.monotonic() - started, details)
        self.faults.append(fault)
        return fault

    # -- the faults ------------------------------------------------------------------

    def crash_host(self, host: str, buyer: str) -> Fault:
        """SIGKILL ``host`` while ``buyer`` holds a lease on it, start it again: its
        chain, balance, accounts and leases are as before, the lease refreshes."""
        lease_id = self.buy(buyer, [host])["purchases"][0]["lease"]["lease_id"]
        until(f"{host} holds the lease", HEAL_S,
              lambda: self.lease_current(buyer, lease_id))
        before = self._host_view(host)
        started = time.monotonic()
        self.backend.kill(host)
        self.backend.start(host)
        self.wait_ready([host])
        after = self._host_view(host)
        for what in ("history", "balance", "accounts", "leases"):
            if after[what] != before[what]:
                raise FaultError(f"{host} lost its {what} in a crash: "
                                 f"{before[what]!r} -> {after[what]!r}"[:2000], host)
        for aid, fund in after["funds"].items():   # spent while it was down, no more
            if not 0 <= fund <= before["funds"][aid]:
                raise FaultError(f"{host}'s account {aid} went from {before['funds'][aid]} "
                                 f"to {fund} in a crash", host)
        until(f"{buyer}'s lease at {host} refreshes", HEAL_S,
              lambda: self.lease_current(buyer, lease_id))
        return self._record("crash_host", host, started, lease=lease_id)

    def _host_view(self, host: str) -> dict[str, Any]:
        accounts = self.status(host, "accounts").get("accounts", [])
        return {"history": [e["hash"] for e in self.status(host, "history")["history"]],
                "balance": self.status(host)["balance"],
                "accounts": sorted((a["account_id"], a["holder"], a["state"], a["created"],
                                    json.dumps(a["bids"], sort_keys=True))
                                   for a in accounts),
                "leases": sorted(a["account_id"] for a in accounts if a.get("lease")),
                "funds": {a["account_id"]: a["fund"] for a in accounts}}

    def cut_notary(self, notary: str, buyer: str, host: str) -> Fault:
        """Cut ``notary`` off: minting and buying go on with the others; joined again,
        it catches up on the next transfers."""
        started = time.monotonic()
        self.backend.disconnect(notary)
        try:
            self.mint(buyer, 3)
            self.buy(buyer, [host])
        finally:
            self.backend.reconnect(notary)
        self.mint(buyer, 1)      # the mint's lane catches the notary up
        until(f"{notary} caught up with the mints", HEAL_S,
              lambda: self.status(notary, "supply").get("minted") == self.minted)
        return self._record("cut_notary", notary, started)

    def answering(self, host: str, buyer: str) -> list[str]:
        """The sites of ``host``'s witnesses (asked from ``buyer`` through the DHT) that
        answer for it now (they watch it: a buyer pushed them its authenticators, or
        another witness its head)."""
        doc = self.wallet(buyer, "audit", "status", self.node_id(host), check=False)
        return [self.site_of_url(w["witness"]) for w in doc.get("witnesses", [])
                if w.get("hosts")]

    def cut_witness(self, host: str, buyer: str) -> Fault:
        """Cut one of ``host``'s witnesses off: the others still answer for it; joined
        again, it audits the host again (no one suspects it).

        A witness watches a host only once it has been pushed something about it, so
        ``buyer`` first buys from ``host`` and the fault waits for two of its
        witnesses to answer; one of those is cut."""
        self.wait_listed(buyer, host)
        self.buy(buyer, [host])

        def two_answer() -> list[str] | None:
            answering = self.answering(host, buyer)
            return answering if len(answering) >= 2 else None

        witness = until(f"two witnesses of {host} answer", HEAL_S, two_answer)[0]
        started = time.monotonic()
        self.backend.disconnect(witness)
        try:
            until(f"a witness of {host} answers with {witness} cut off", HEAL_S,
                  lambda: [w for w in self.answering(host, buyer) if w != witness])
        finally:
            self.backend.reconnect(witness)
        return self._record("cut_witness", witness, started, host=host)

    def cut_relay(self, host: str, buyer: str) -> Fault:
        """Cut the relay of a relayed ``host`` off: the host moves to another relay and
        ``buyer``'s lease on it refreshes through the new one."""
        old = until(f"{host} holds a relay", HEAL_S,
                    lambda: self.status(host).get("reach", {}).get("relay"))
        self.wait_listed(buyer, host)     # advertised at its relay's URL
        lease_id = self.buy(buyer, [host])["purchases"][0]["lease"]["lease_id"]
        relay = self.site_of_url(old)
        started = time.monotonic()
        self.backend.disconnect(relay)
        try:
            new = until(f"{host} moved off relay {relay}", HEAL_S,
                        lambda: (lambda r: r not in ("", None, old) and r)(
                            self.status(host).get("reach", {}).get("relay")))
            until(f"{buyer}'s lease at {host} refreshes", HEAL_S,
                  lambda: self.lease_current(buyer, lease_id))
        finally:
            self.backend.reconnect(relay)
        return self._record("cut_relay", relay, started, host=host, moved_to=new)

    def dht_nodes(self) -> list[str]:
        """The nodes that serve the DHT (not relayed or proxied clients)."""
        return [s.name for s in self.topology.nodes
                if self.status(s.name).get("dht_address") not in (None, DHT_CLIENT)]

    def cut_dht(self, fraction: float, buyer: str) -> Fault:
        """Cut ``fraction`` of the DHT's nodes off (at most f notaries among them):
        ``buyer`` still finds the market's hosts and their witnesses."""
        nodes = self.dht_nodes()
        n = math.ceil(fraction * len(nodes))
        notaries = [x for x in nodes if self.topology.site(x).role == "notary"]
        pool = [x for x in nodes if x not in notaries]
        self.rng.shuffle(pool)
        k = min(self.topology.f, n, len(notaries))
        cut = notaries[len(notaries) - k:] + pool[: n - k]
        started = time.monotonic()
        for x in cut:
            self.backend.disconnect(x)
        try:
            found = self.wallet(buyer, "hosts")
            ids = {h["node_id"] for h in found.get("hosts", [])}
            alive = [s.name for s in self.topology.nodes
                     if s.role == "host" and s.name not in cut]
            missing = [h for h in alive if self.node_id(h) not in ids]
            if missing:
                raise FaultError(f"with {cut} cut off, the market lookup missed {missing}",
                                 json.dumps(found)[:1500])
            for h in alive:
                self.wallet(buyer, "audit", "status", self.node_id(h))
        finally:
            for x in cut:
                self.backend.reconnect(x)
        return self._record("cut_dht", ",".join(cut), started, of=len(nodes))

    def fill_disk(self, host: str, buyer: str) -> Fault:
        """Fill ``host``'s disk: a purchase from it fails with a clear error and
        nothing is corrupted; with space again, the purchase finishes (the buyer's
        pending payment is resumed) and the host sells again."""
        self.backend.limit_disk(host)     # the node restarted on its small disk
        self.wait_listed(buyer, host)
        started = time.monotonic()
        self.backend.fill_disk(host)
        try:
            report = self.buy(buyer, [host], check=False)
            reasons = [u.get("reason", "") for u in report.get("unfinished", [])]
            reasons += [s.get("reason", "") for s in report.get("skipped", [])]
            if report.get("purchases") or not any("disk is full" in r for r in reasons):
                raise FaultError(f"a purchase from {host} with its disk full did not fail "
                                 f"clearly: {json.dumps(report)[:1500]}", host)
        finally:
            self.backend.free_disk(host)
        self.wait_ready([host])
        resumed = self.wallet(buyer, "leases", check=False)
        self.buy(buyer, [host])
        return self._record("fill_disk", host, started, error=reasons[0],
                            resumed=len(resumed.get("leases", [])))


def _ok(doc: dict[str, Any]) -> dict[str, Any] | None:
    return None if "error" in doc else doc
