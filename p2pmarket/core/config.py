"""Settings, the data dir layout and the genesis file.

Settings come from defaults, then ``<data dir>/config.toml``, then
``P2PMARKET_<SETTING>`` environment variables (e.g. ``P2PMARKET_HTTP_PORT``), then
command-line flags.
The genesis file names the network: its notary committee, mint key, bootstrap
peers and the node-id puzzle difficulty. Every node of a network holds the
same genesis file; its hash is the network id.
"""

from __future__ import annotations

import fcntl
import json
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from p2pmarket.core.files import write_atomic
from p2pmarket.core.genesis import ConfigError, Genesis
from p2pmarket.core.urls import http_url


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
        """The host's tamper-evident audit log (docs/design.md section 5)."""
        return self.root / "audit.sqlite"

    @property
    def evidence_db(self) -> Path:
        """Proofs of misbehaviour this node holds (as a witness or a reader)."""
        return self.root / "evidence.sqlite"

    @property
    def witness_db(self) -> Path:
        """What this node, as a witness, audited and holds (docs/design.md section 5)."""
        return self.root / "witness.sqlite"

    @property
    def dht_db(self) -> Path:
        return self.root / "dht.sqlite"

    @property
    def history_db(self) -> Path:
        """The price history the dashboard draws (p2pmarket.history.store)."""
        return self.root / "history.sqlite"

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
    def lock(self) -> Path:
        """Held (flock) by the node running on this data dir."""
        return self.root / "node.lock"

    @property
    def network(self) -> Path:
        """The network id (hex) of the genesis this data dir was created with."""
        return self.root / "network.id"

    @property
    def log(self) -> Path:
        return self.root / "node.log"

    def create(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    def acquire(self) -> int:
        """Lock the data dir for one running node (``flock`` on :attr:`lock`, released
        when the process ends, also by SIGKILL); raise :class:`ConfigError` if another
        process holds it. Returns the lock's file descriptor (keep it open)."""
        fd = os.open(self.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise ConfigError(f"another node runs on the data dir {self.root} "
                              f"(pid {holder or '?'})", str(self.root)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def bind_network(self, genesis: Genesis) -> None:
        """Remember the network id of ``genesis`` on first use; refuse a genesis of
        another network afterwards (its stores belong to the first one)."""
        wanted = genesis.network_id.hex()
        try:
            held = self.network.read_text().strip()
        except FileNotFoundError:
            write_atomic(self.network, wanted.encode() + b"\n")
            return
        if held != wanted:
            raise ConfigError(
                f"the data dir {self.root} belongs to network {held[:12]}…, but its genesis "
                f"is of network {wanted[:12]}… ({genesis.network!r}): use the network's "
                "own genesis, or a new data dir", {"data_dir": held, "genesis": wanted})


@dataclass(frozen=True)
class Settings:
    """One node's settings. Capacities are in base units (see auction.resources)."""

    listen_host: str = "127.0.0.1"
    """Where the peer API (TCP) and the DHT (UDP) listen; ``0.0.0.0`` or ``::`` for all."""
    advertise_host: str = ""
    """The address peers should use. Empty: the address registrars verified (section 7),
    or until then the listen address, or for a wildcard one the address of the route to
    the first bootstrap peer."""
    http_port: int = 0
    dht_port: int = 0
    control_port: int = 0
    metrics_port: int = 0
    """A port of its own for ``GET /metrics`` on the listen host (docs/monitoring.md);
    0 none (``/metrics`` is on the peer API's port whatever this says)."""
    http_proxy: str = ""
    """An HTTP proxy for all the node's outgoing HTTP (``http://host:port``). A node
    behind one sends no UDP: it uses a public peer's HTTP DHT gateway."""
    dht_gateway: str = ""
    """The public peer whose HTTP DHT gateway a proxied node uses (its base URL);
    empty: the first bootstrap peer's URL."""
    relay: bool = True
    """Serve as registrar and relay for other nodes once this node is public."""
    relay_circuit_seconds: float = 3600.0
    """As a relay: the longest one relayed request may last (an image upload is one)."""
    relay_circuit_bytes: int = 4 * 1024 ** 3
    """As a relay: the most bytes one relayed request may carry, both ways."""
    nat: bool = True
    """Find out this node's reachability from registrars and, if it cannot be called
    back, keep a relay reservation (section 7). Off: advertise the address as is."""
    vmm_uri: str = "test:///default"
    tcp_ports: str = ""
    """The TCP ports this host leases for SSH to its guests (a port or a range, e.g.
    ``30000-30099``; each a unique resource, section 6); "" none until the owner runs
    ``p2pmarket host set-capacity tcp_port ...``."""
    guest_network: str = "p2pm-net"
    """The libvirt NAT network guests sit on (defined if missing; never ``default``)."""
    guest_subnet: str = "198.19.200.0/24"
    """Its IPv4 subnet: a /16../28 inside 198.18.0.0/15."""
    guest_cpuset: str = ""
    """The host cpus guests may run on, in libvirt's syntax (``0``, ``0-3``, ``0,2``);
    "" any. Pinning guests to fewer cpus than they could use makes their cpu shares
    (the auction's cpu allocation) decide how the cpus are split among them."""
    guest_kernel: str = ""
    """A kernel of the host's own for guests without a disk image (absolute path; ""
    none: such a buyer must upload an image); with ``guest_initrd`` and
    ``guest_cmdline`` (direct kernel boot, ``host/vmm/guest.py`` ``GuestBoot``)."""
    guest_initrd: str = ""
    guest_cmdline: str = ""
    vm_default_memory_kib: int = 256 * 1024
    """The memory a machine gets when its bundle has no memory bid (in the host
    record as ``vm.default_memory_kib``; at least 16 MiB)."""
    tick_seconds: float = 1.0
    republish_seconds: float = 600.0
    audit_seconds: float = 10.0
    witness_workers: int = -1
    """Worker processes the witness checks buyers' request signatures in (section 5):
    -1 one per core but one on a machine of more than two cores, none on smaller ones
    (a pool's start-up and memory do not pay there); 0 none (checked in the replay)."""
    cpu_mhz: int = 4000
    memory_kib: int = 4 * 1024 * 1024
    min_price: int = 1
    labels: tuple[str, ...] = field(default=())
    images_dir: str = ""
    """A directory of named base images (``NAME.qcow2``, ``NAME.img``) buyers may start
    from (``buy --image NAME``); advertised in the host record. Empty: none."""
    history_market_seconds: float = 60.0
    """How often the node reads the market from the DHT for its price history (the
    dashboard's market page); 0: never on its own."""
    log_format: str = "plain"
    """``plain`` lines, or ``json``: one JSON object per line with the node id and the
    event name (:mod:`p2pmarket.core.logfmt`; the events in docs/monitoring.md)."""
    dashboard_public: bool = False
    """The web dashboard's market page (``/ui/``) and its data are public, read-only;
    off: every ``/ui`` page needs the control token (the host and wallet pages always)."""
    dashboard_wallet: str = ""
    """A wallet dir whose leases the dashboard's wallet page shows; "" none (the page
    still shows the node's own wallet)."""

    @property
    def public_host(self) -> str:
        return self.advertise_host or self.listen_host

    @property
    def url(self) -> str:
        """The peer URL from the settings alone (a node's actual URL uses the port it
        bound and the address registration verified: ``Node.url``)."""
        return http_url(self.public_host, self.http_port)

    def check(self) -> Settings:
        """Raise :class:`ConfigError` for a setting outside its range; return self."""
        for name in ("http_port", "dht_port", "control_port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ConfigError(f"setting {name!r} must be a port 0..65535",
                                  getattr(self, name))
        for name in ("cpu_mhz", "memory_kib", "min_price"):
            if getattr(self, name) < 0:
                raise ConfigError(f"setting {name!r} must not be negative", getattr(self, name))
        if self.tcp_ports:
            _tcp_ports(self.tcp_ports, {self.http_port, self.dht_port, self.control_port,
                                        self.metrics_port})
        if self.vm_default_memory_kib < 16 * 1024:
            raise ConfigError("setting 'vm_default_memory_kib' must be at least 16 MiB "
                              "(16384 KiB)", self.vm_default_memory_kib)
        for name in ("tick_seconds", "republish_seconds", "audit_seconds",
                     "relay_circuit_seconds", "relay_circuit_bytes"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"setting {name!r} must be positive", getattr(self, name))
        if not self.listen_host:
            raise ConfigError("setting 'listen_host' must not be empty")
        if self.history_market_seconds < 0:
            raise ConfigError("setting 'history_market_seconds' must not be negative",
                              self.history_market_seconds)
        if self.log_format not in ("plain", "json"):
            raise ConfigError("setting 'log_format' is plain or json", self.log_format)
        if self.http_proxy and not self.http_proxy.startswith(("http://", "https://")):
            raise ConfigError("setting 'http_proxy' must be an http:// URL", self.http_proxy)
        return self

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
                if isinstance(current, bool):
                    clean[key] = _boolean(value)
                elif isinstance(current, tuple):
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
        return settings.with_overrides(flags or {}).check()


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def save_genesis(genesis: Genesis, path: Path) -> None:
    write_atomic(path, json.dumps(genesis.to_doc(), indent=2).encode() + b"\n")


def load_genesis(path: Path) -> Genesis:
    try:
        return Genesis.from_doc(json.loads(path.read_text()))
    except FileNotFoundError:
        raise ConfigError(f"no genesis file at {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not JSON: {exc}") from None


def _tcp_ports(text: str, own: set[int]) -> None:
    """Check the ``tcp_ports`` setting: a port or range of ports 1..65535, none of them
    the node's own."""
    lo_text, _, hi_text = text.partition("-")
    if not lo_text.isdigit() or not (hi_text or lo_text).isdigit():
        raise ConfigError("setting 'tcp_ports' must be a port or a range like 30000-30099",
                          text)
    lo, hi = int(lo_text), int(hi_text or lo_text)
    if not 1 <= lo <= hi <= 65535 or hi - lo >= 4096:
        raise ConfigError("setting 'tcp_ports' must be ports 1..65535, at most 4096 of them",
                          text)
    taken = sorted(p for p in own if lo <= p <= hi)
    if taken:
        raise ConfigError("setting 'tcp_ports' includes the node's own port", taken[0])
