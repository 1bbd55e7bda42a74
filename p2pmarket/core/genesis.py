"""The genesis of a network (pure): what every node of it agrees on.

The genesis file names the network: its notary committee (3f+1 keys with their
URLs), mint key, bootstrap peers, the node-id puzzle difficulty and, for a private
deployment, ``shared_prefixes``: networks (CIDR) whose addresses are free of the
DHT's per-prefix caps (docs/design.md section 3), because many honest hosts share a
prefix there (one site's LAN, a testnet's 198.18.0.0/15). The open network leaves it
empty. Every node of
a network holds the same file; the hash of its canonical form is the network id.
:func:`p2pmarket.core.config.load_genesis` reads it from disk.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass
from typing import Any

from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import PUBLIC_KEY_SIZE
from p2pmarket.core.wire import digest, pack


class ConfigError(P2PMarketError):
    """Bad settings or genesis file."""


@dataclass(frozen=True)
class NotaryInfo:
    key: bytes
    url: str


@dataclass(frozen=True)
class BootstrapPeer:
    host: str
    dht_port: int
    url: str


@dataclass(frozen=True)
class Genesis:
    """What every node of one network agrees on."""

    network: str
    mint_key: bytes
    notaries: tuple[NotaryInfo, ...]
    f: int = 0
    bootstrap: tuple[BootstrapPeer, ...] = ()
    puzzle_bits: int = 0
    shared_prefixes: tuple[str, ...] = ()
    """CIDR networks free of the DHT's per-prefix caps (a private deployment)."""

    def __post_init__(self) -> None:
        for net in self.shared_prefixes:
            try:
                ipaddress.ip_network(net)
            except ValueError:
                raise ConfigError("genesis: shared_prefixes must be CIDR networks",
                                  net) from None
        if len(self.mint_key) != PUBLIC_KEY_SIZE:
            raise ConfigError("genesis: mint key must be 32 bytes")
        if self.f < 0 or not self.notaries:
            raise ConfigError("genesis: need at least one notary and f >= 0")
        if len(self.notaries) < 3 * self.f + 1:
            raise ConfigError("genesis: a committee tolerating f faults needs 3f+1 notaries",
                              {"f": self.f, "notaries": len(self.notaries)})
        if len({n.key for n in self.notaries}) != len(self.notaries):
            raise ConfigError("genesis: notary keys must be distinct")

    @property
    def quorum(self) -> int:
        """Signatures a certificate needs: 2f+1 for a committee of exactly 3f+1; a larger
        committee needs the smallest q with 2q - n > f, so that any two quorums still
        share an honest notary."""
        return max(2 * self.f + 1, (len(self.notaries) + self.f) // 2 + 1)

    @property
    def notary_keys(self) -> frozenset[bytes]:
        return frozenset(n.key for n in self.notaries)

    @property
    def network_id(self) -> bytes:
        return digest(pack(self.to_doc()))[:16]

    def to_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "network": self.network,
            "mint_key": self.mint_key.hex(),
            "f": self.f,
            "puzzle_bits": self.puzzle_bits,
            "notaries": [{"key": n.key.hex(), "url": n.url} for n in self.notaries],
            "bootstrap": [asdict(b) for b in self.bootstrap],
        }
        if self.shared_prefixes:   # absent when empty: older network ids stay the same
            doc["shared_prefixes"] = list(self.shared_prefixes)
        return doc

    @classmethod
    def from_doc(cls, doc: Any) -> Genesis:
        try:
            return cls(
                network=str(doc["network"]),
                mint_key=bytes.fromhex(doc["mint_key"]),
                f=int(doc.get("f", 0)),
                puzzle_bits=int(doc.get("puzzle_bits", 0)),
                notaries=tuple(NotaryInfo(bytes.fromhex(n["key"]), str(n["url"]))
                               for n in doc["notaries"]),
                bootstrap=tuple(BootstrapPeer(str(b["host"]), int(b["dht_port"]), str(b["url"]))
                                for b in doc.get("bootstrap", [])),
                shared_prefixes=tuple(str(n) for n in doc.get("shared_prefixes", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"genesis file is malformed: {exc}") from None
