"""Helpers shared by the ledger tests (import as ``ledger_helpers``)."""

from __future__ import annotations

from typing import Any

from p2pmarket.ledger.notary import NotaryService

CORE = ("minted", "balances", "pending", "early", "ok")


def core(supply: dict[str, Any]) -> dict[str, Any]:
    """The supply figures the conservation invariant is about."""
    return {k: supply[k] for k in CORE}


def dump(service: NotaryService, skip: tuple[str, ...] = ()) -> list[str]:
    """The notary's whole database as SQL (to show a refusal changed nothing),
    leaving out the rows of the tables named in ``skip``."""
    return [line for line in service.conn.iterdump()
            if not any(f'INSERT INTO "{t}"' in line for t in skip)]
