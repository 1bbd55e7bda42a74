"""Asking hosts for quotes before paying them (docs/design.md section 8).

:func:`ask_quote` asks one host (``host.quote``, :mod:`p2pmarket.auction.quote`) with
a fresh random nonce, checks that the quote is signed by the key of the host's DHT
record, and judges it (:func:`p2pmarket.client.quotecheck.judge_quote`);
:func:`gather_quotes` asks the best ranked hosts and replaces each that fails by the
next one. Nothing here pays anyone.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from p2pmarket.api.client import PeerClient
from p2pmarket.auction.quote import Quote, bids_digest, verify_quote
from p2pmarket.client.discovery import HostView
from p2pmarket.client.quotecheck import Asked, QuoteRefused, judge_quote
from p2pmarket.core.clock import now_us
from p2pmarket.core.errors import P2PMarketError

Progress = Callable[[str], None]
QUOTE_TIMEOUT_S = 5.0
SPARE_QUOTES = 2


@dataclass(frozen=True)
class Quoted:
    """A host that gave an acceptable quote, with the quote's signed envelope."""

    host: HostView
    quote: Quote
    envelope: dict[str, Any]
    free_ports: tuple[int, ...] = ()
    """The leased ports the host said were free (its quote reply's ``free_ports``:
    integers 1..65535 within its record's SSH range, at most 32; others dropped)."""


@dataclass(frozen=True)
class Skipped:
    """A host not paid: why, and the share of the budget it was to get (0 when it was
    left out before the plan)."""

    host: HostView
    reason: str
    amount: int = 0


async def ask_quote(client: PeerClient, host: HostView, holder: bytes,
                    wire_bids: dict[str, Any], types: list[str], interval_s: int,
                    amount: int | None) -> Quoted:
    """A fresh quote from ``host`` that :func:`judge_quote` accepts, or
    :class:`QuoteRefused` / the host's error. Nothing is paid here."""
    nonce = secrets.token_bytes(16)
    args: dict[str, Any] = {"bids": wire_bids, "interval_s": interval_s, "nonce": nonce}
    if amount is not None:
        args["amount"] = amount
    try:
        reply = await asyncio.wait_for(
            client.call(host.record.url, host.key, "host.quote", args), QUOTE_TIMEOUT_S)
    except TimeoutError:
        raise QuoteRefused(f"no quote from {host.record.url} within {QUOTE_TIMEOUT_S:.0f} s",
                           "timeout") from None
    envelope = reply.get("quote")
    if not isinstance(envelope, dict):
        raise QuoteRefused("the host's answer holds no quote", "malformed")
    quote = verify_quote(envelope, host.key)   # signed by the key of the record
    asked = Asked(holder, nonce, bids_digest(wire_bids), interval_s, amount, tuple(types))
    judge_quote(quote, asked, host.record, now_us())
    return Quoted(host, quote, envelope, listed_ports(host, reply.get("free_ports")))


def listed_ports(host: HostView, raw: Any) -> tuple[int, ...]:
    """The free ports a quote reply lists, checked against the host's SSH range."""
    span = None if host.record.vm is None else host.record.vm.port_range()
    if span is None or not isinstance(raw, list):
        return ()
    return tuple(sorted({p for p in raw[:32] if isinstance(p, int) and not isinstance(p, bool)
                         and span[0] <= p <= span[1]}))


async def gather_quotes(client: PeerClient, hosts: list[HostView], want: int,
                        holder: bytes, wire_bids: dict[str, Any], types: list[str],
                        interval_s: int, progress: Progress,
                        extra: Callable[[HostView], dict[str, Any]] | None = None
                        ) -> tuple[list[Quoted], list[Skipped]]:
    """Acceptable quotes from up to ``want`` hosts, best ranked first: a host that does
    not answer or gives a quote the buyer refuses is replaced by the next one. Each
    round also asks :data:`SPARE_QUOTES` more hosts than it still needs, so hosts that
    never answer (each costs a timeout) delay the purchase by fewer rounds. ``extra``
    gives the bids one host gets besides ``wire_bids`` (e.g. its SSH port range)."""
    good: list[Quoted] = []
    skipped: list[Skipped] = []
    queue = list(hosts)
    while queue and len(good) < want:
        size = want - len(good) + SPARE_QUOTES
        batch, queue = queue[:size], queue[size:]
        progress(f"asking {len(batch)} host(s) for a quote")
        answers = await asyncio.gather(
            *(ask_quote(client, h, holder, {**wire_bids, **(extra(h) if extra else {})},
                        types, interval_s, None)
              for h in batch), return_exceptions=True)
        for host, answer in zip(batch, answers, strict=True):
            if isinstance(answer, Quoted):
                good.append(answer)
            elif isinstance(answer, P2PMarketError):
                skipped.append(Skipped(host, answer.message))
            else:
                raise answer
    return good[:want], skipped


__all__ = ["QUOTE_TIMEOUT_S", "SPARE_QUOTES", "Progress", "Quoted", "Skipped", "ask_quote",
           "gather_quotes"]
