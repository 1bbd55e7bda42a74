"""A wallet on disk: a key, a local copy of its chain, the network's genesis, leases.

Layout of a wallet dir (default ``~/.p2pmarket/wallet``)::

    wallet.key      Ed25519 key (mode 0600)
    genesis.json    the network this wallet belongs to
    ledger.sqlite   this wallet's hash chain with its certificates
    leases.json     leases bought, as signed envelopes (hex msgpack)
    pending.json    purchases not finished yet (paid, or about to be, without an account)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pmarket.core.config import load_genesis, save_genesis
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.files import write_atomic
from p2pmarket.core.genesis import Genesis
from p2pmarket.core.identity import Identity
from p2pmarket.core.keyfile import load_key, save_key


class WalletDirError(P2PMarketError):
    """No wallet, or a damaged one."""


def read_map(path: Path) -> dict[str, Any]:
    """A wallet dir's JSON map file (``{}`` if absent; :class:`WalletDirError` if
    damaged)."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        raise WalletDirError(f"{path} is damaged") from None
    if not isinstance(doc, dict):
        raise WalletDirError(f"{path} is damaged")
    return doc


def write_map(path: Path, doc: dict[str, Any]) -> None:
    """Write a wallet dir's JSON map file atomically, readable by its owner only."""
    write_atomic(path, json.dumps(doc, indent=1).encode(), mode=0o600)


def default_wallet_path() -> Path:
    env = os.environ.get("P2PMARKET_WALLET")
    return Path(env) if env else Path.home() / ".p2pmarket" / "wallet"


@dataclass(frozen=True)
class WalletDir:
    root: Path

    @property
    def key_path(self) -> Path:
        return self.root / "wallet.key"

    @property
    def genesis_path(self) -> Path:
        return self.root / "genesis.json"

    @property
    def ledger_db(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def leases_path(self) -> Path:
        return self.root / "leases.json"

    @property
    def pending_path(self) -> Path:
        """Purchases paid for but not yet acknowledged by their host."""
        return self.root / "pending.json"

    def exists(self) -> bool:
        return self.key_path.exists()

    def create(self, genesis: Genesis, identity: Identity | None = None) -> Identity:
        if self.exists():
            raise WalletDirError(f"a wallet already exists in {self.root}", str(self.root))
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        ident = identity or Identity.generate()
        save_genesis(genesis, self.genesis_path)
        save_key(ident, self.key_path)
        return ident

    def identity(self) -> Identity:
        if not self.exists():
            raise WalletDirError(
                f"no wallet in {self.root} (create one with `p2pmarket wallet new`)",
                str(self.root))
        return load_key(self.key_path)

    def genesis(self) -> Genesis:
        return load_genesis(self.genesis_path)

    def leases(self) -> dict[str, dict[str, str]]:
        """lease id -> {host_key, url, account_id, lease (hex of the signed envelope)}."""
        doc = read_map(self.leases_path)
        if not all(isinstance(v, dict) for v in doc.values()):
            raise WalletDirError(f"{self.leases_path} is damaged")
        return {str(k): {str(a): str(b) for a, b in v.items()} for k, v in doc.items()}

    def pending(self) -> dict[str, dict[str, Any]]:
        """purchase id -> {host_key, url, payment (cert wire, hex msgpack, or None before
        the payment), bids, interval_s} plus, for purchases made on a quote (the id is
        the quote's), {memo, amount, quote (the signed quote, hex msgpack)}: written
        durably before paying and again after, before asking the host
        (:func:`p2pmarket.client.buyer.resume_pending` finishes them)."""
        return read_map(self.pending_path)

    def set_pending(self, payment_id: str, record: dict[str, Any] | None) -> None:
        pending = self.pending()
        if record is None:
            pending.pop(payment_id, None)
        else:
            pending[payment_id] = record
        write_map(self.pending_path, pending)

    def save_lease(self, lease_id: str, record: dict[str, str]) -> None:
        leases = self.leases()
        leases[lease_id] = record
        write_map(self.leases_path, leases)
