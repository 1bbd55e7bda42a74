"""Settings, the data dir layout and the genesis file.

Settings come from defaults, then ``<data dir>/config.toml``, then
``P2PMARKET_<SECTION>_<KEY>`` environment variables, then command-line flags.
The genesis file names the network: its notary committee, mint key, bootstrap
peers and the node-id puzzle difficulty. Every node of a network holds the
same genesis file; its hash is the network id.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from p2pmarket.errors import P2PMarketError
from p2pmarket.files import write_atomic
from p2pmarket.identity import PUBLIC_KEY_SIZE
from p2pmarket.wire import digest, pack


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

    def __post_init__(self) -> None:
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
        return {
            "network": self.network,
            "mint_key": self.mint_key.hex(),
            "f": self.f,
            "puzzle_bits": self.puzzle_bits,
            "notaries": [{"key": n.key.hex(), "url": n.url} for n in self.notaries],
            "bootstrap": [asdict(b) for b in self.bootstrap],
        }

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
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"genesis file is malformed: {exc}") from None

    def save(self, path: Path) -> None:
        write_atomic(path, json.dumps(self.to_doc(), indent=2).encode() + b"\n")

    @classmethod
    def load(cls, path: Path) -> Genesis:
        try:
            return cls.from_doc(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ConfigError(f"no genesis file at {path}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not JSON: {exc}") from None


@dataclass(frozen=True)
class DataDir:
    """Where one node (or wallet) keeps its files."""

    root: Path

    @property
    def key(self) -> Path:
        return self.root / "node.key"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def genesis(self) -> Path:
        return self.root / "genesis.json"

    @property
    def ledger_db(self) -> Path:
        return self.root / "ledger.sqlite"

    @property
    def notary_db(self) -> Path:
        return self.root / "notary.sqlite"

    @property
    def host_db(self) -> Path:
        return self.root / "host.sqlite"

    @property
    def audit_db(self) -> Path:
        """The host's tamper-evident audit log (DESIGN.md section 5)."""
        return self.root / "audit.sqlite"

    @property
    def evidence_db(self) -> Path:
        """Proofs of misbehaviour this node holds (as a witness or a reader)."""
        return self.root / "evidence.sqlite"

    @property
    def witness_db(self) -> Path:
        """What this node, as a witness, audited and holds (DESIGN.md section 5)."""
        return self.root / "witness.sqlite"

    @property
    def dht_db(self) -> Path:
        return self.root / "dht.sqlite"

    @property
    def token(self) -> Path:
        return self.root / "api.token"

    @property
    def control(self) -> Path:
        """Written by a running node: its control API address."""
        return self.root / "control.json"

    @property
    def availability(self) -> Path:
        """First start and accumulated uptime, for the advertised availability."""
        return self.root / "availability.json"

    @property
    def pid(self) -> Path:
        return self.root / "node.pid"

    @property
    def log(self) -> Path:
        return self.root / "node.log"

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)


@dataclass(frozen=True)
class Settings:
    """One node's settings. Capacities are in base units (see host.resources)."""

    listen_host: str = "127.0.0.1"
    advertise_host: str = ""
    http_port: int = 0
    dht_port: int = 0
    control_port: int = 0
    vmm_uri: str = "test:///default"
    tick_seconds: float = 1.0
    republish_seconds: float = 600.0
    audit_seconds: float = 10.0
    cpu_mhz: int = 4000
    memory_kib: int = 4 * 1024 * 1024
    min_price: int = 1
    labels: tuple[str, ...] = field(default=())

    @property
    def public_host(self) -> str:
        return self.advertise_host or self.listen_host

    @property
    def url(self) -> str:
        return f"http://{self.public_host}:{self.http_port}"

    def with_overrides(self, overrides: dict[str, Any]) -> Settings:
        known = {f.name: f for f in fields(self)}
        clean: dict[str, Any] = {}
        for key, value in overrides.items():
            if value is None:
                continue
            if key not in known:
                raise ConfigError(f"unknown setting {key!r}", key)
            current = getattr(self, key)
            try:
                if isinstance(current, tuple):
                    clean[key] = tuple(value)
                elif isinstance(current, float):
                    clean[key] = float(value)
                elif isinstance(current, int):
                    clean[key] = int(value)
                else:
                    clean[key] = str(value)
            except (TypeError, ValueError):
                raise ConfigError(f"setting {key!r} has a bad value", repr(value)) from None
        return replace(self, **clean)

    def to_toml(self) -> str:
        lines = ["# p2pmarket node settings", "[node]"]
        for f in fields(self):
            value = getattr(self, f.name)
            lines.append(f"{f.name} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def load(cls, path: Path | None, env: dict[str, str] | None = None,
             flags: dict[str, Any] | None = None) -> Settings:
        settings = cls()
        if path is not None and path.exists():
            try:
                doc = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: {exc}") from None
            settings = settings.with_overrides(doc.get("node", {}))
        env = dict(os.environ) if env is None else env
        from_env = {f.name: env[f"P2PMARKET_{f.name.upper()}"] for f in fields(cls)
                    if f"P2PMARKET_{f.name.upper()}" in env}
        settings = settings.with_overrides(from_env)
        return settings.with_overrides(flags or {})


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))
