"""Total supply, checked against all mints (``p2pmarket ledger supply``).

Two views:

- :func:`network_supply` asks every notary for its figures (``notary.supply``)
  and :func:`summarize` judges them: each notary's own invariant
  ``balances + pending - early == minted`` must hold, and a quorum of notaries
  must agree on ``minted``, the total supply (a notary that lags may show less
  until it is caught up; it is reported, not counted as an error).
- :func:`audit_chains` needs no notary: given whole chains (each verified with
  :func:`verify_chain`) it adds up every MINT on the mint key's chain, every
  balance, and every SEND no chain has received yet, and checks
  ``balances + in flight == minted``. Each RECV must match the SEND it names
  (payer, seq, hash, amount, memo, payee) when the payer's chain is audited too.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.genesis import Genesis
from p2pmarket.ledger.certificate import committee_quorum
from p2pmarket.ledger.chain import MINT, SEND, Authenticator, Entry, recv_body, verify_chain
from p2pmarket.ledger.committee import NotaryTransport
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.sigcache import SigCache

FIGURES = ("minted", "balances", "pending", "early")


def adds_up(row: Mapping[str, Any]) -> bool:
    """A notary's own figures hold ``balances + pending - early == minted`` (recomputed,
    not taken from its ``ok``)."""
    if not all(isinstance(row.get(k), int) and not isinstance(row.get(k), bool)
               for k in FIGURES):
        return False
    return bool(row["balances"] + row["pending"] - row["early"] == row["minted"])


def summarize(genesis: Genesis, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Judge the notaries' supply figures, one row per notary (``error`` if it failed).

    Returns ``{supply, agree, quorum, ok, errors, notaries}``: ``supply`` the
    minted total a quorum agrees on (None if none does), ``errors`` the number of
    notaries that failed to answer or whose own figures do not add up, plus one
    if no quorum agrees. ``notaries`` repeats each row with ``status``: ``ok``,
    ``lagging`` (adds up, but has seen fewer mints), ``mismatch`` or ``error``.
    """
    quorum = committee_quorum(genesis)
    good = [r for r in rows if "error" not in r and adds_up(r)]
    counts = Counter(int(r["minted"]) for r in good)
    supply, agree = (None, 0)
    if counts:
        supply, agree = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    out = []
    errors = 0
    for row in rows:
        status = "ok"
        if "error" in row:
            status = "error"
        elif row not in good:
            status = "mismatch"
        elif supply is not None and row["minted"] != supply:
            status = "lagging" if row["minted"] < supply else "mismatch"
        errors += status in ("error", "mismatch")
        out.append({**row, "status": status})
    if agree < quorum:
        errors += 1
        supply = None
    return {"supply": supply, "agree": agree, "quorum": quorum, "ok": errors == 0,
            "errors": errors, "notaries": out}


async def network_supply(genesis: Genesis, transport: NotaryTransport) -> dict[str, Any]:
    """Every notary's figures (``notary.supply``), judged by :func:`summarize`."""

    async def ask(i: int) -> dict[str, Any]:
        notary = genesis.notaries[i]
        row: dict[str, Any] = {"notary": notary.key.hex(), "url": notary.url}
        try:
            result = await transport.call(notary, "supply", {})
        except P2PMarketError as exc:
            row["error"] = exc.message
        else:
            row.update({k: v for k, v in result.items() if k not in row})
        return row

    rows = await asyncio.gather(*(ask(i) for i in range(len(genesis.notaries))))
    return summarize(genesis, rows)


def audit_chains(chains: Mapping[bytes, tuple[Sequence[Entry], Sequence[Authenticator]]],
                 genesis: Genesis) -> dict[str, Any]:
    """Verify whole chains offline and check the total against all mints.

    ``chains`` maps each owner to its entries and authenticators (certified ones;
    a pending entry is not money yet). Returns ``{minted, balances, in_flight,
    ok, chains}``. Raises :class:`LedgerError` if a chain does not verify, a SEND
    was received twice across chains, or a RECV does not match its SEND.
    """
    cache = SigCache()
    minted = balances = 0
    sent: dict[tuple[bytes, int], Entry] = {}
    received: dict[tuple[bytes, int], Entry] = {}
    for owner, (entries, auths) in chains.items():
        if entries and entries[0].owner != owner:
            raise LedgerError("chain filed under another owner", owner)
        balances += verify_chain(entries, auths, genesis, cache)
        for entry in entries:
            if entry.kind == MINT:
                minted += entry.amount
            elif entry.kind == SEND:
                sent[(entry.owner, entry.seq)] = entry
            elif entry.receipt is not None:
                key = entry.receipt
                if key in received:
                    raise LedgerError("a SEND was received twice", {"from": key[0],
                                                                    "seq": key[1]})
                received[key] = entry
    for key, recv in received.items():  # a RECV must match the SEND it names
        send = sent.get(key)
        if send is None and key[0] not in chains:
            continue  # its payer's chain is not audited here
        if send is None or recv_body(send) != recv.body or send.body["to"] != recv.owner:
            raise LedgerError("a RECV does not match the SEND it names",
                              {"from": key[0], "seq": key[1]})
    in_flight = sum(s.amount for k, s in sent.items() if k not in received)
    return {"minted": minted, "balances": balances, "in_flight": in_flight,
            "ok": balances + in_flight == minted, "chains": len(chains)}
