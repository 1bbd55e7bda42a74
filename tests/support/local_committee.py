"""An in-process notary committee for tests and demos.

:class:`LocalTransport` calls :class:`NotaryService` handlers directly, but
passes arguments and results through canonical msgpack and turns refusals
into :class:`RemoteError` as the real RPC path does. Notaries can be taken
down (``transport.down.add(key)``) to simulate faults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pmarket.api.rpc import CallContext
from p2pmarket.core.clock import now_us
from p2pmarket.core.errors import P2PMarketError, RemoteError
from p2pmarket.core.genesis import Genesis, NotaryInfo
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import pack, unpack
from p2pmarket.ledger import notaryrpc
from p2pmarket.ledger.errors import LedgerError
from p2pmarket.ledger.notary import NotaryService


class NotaryUnreachable(LedgerError):
    """The local transport's stand-in for a notary that does not answer."""


class LocalTransport:
    """A :class:`NotaryTransport` that dispatches to in-process notaries."""

    def __init__(self, services: dict[bytes, NotaryService] | None = None,
                 sender: bytes = bytes(32)) -> None:
        self.services: dict[bytes, NotaryService] = dict(services or {})
        self.sender = sender
        self.down: set[bytes] = set()
        self.calls = 0

    def add(self, service: NotaryService) -> None:
        self.services[service.key] = service

    async def call(self, notary: NotaryInfo, name: str,
                   args: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        service = self.services.get(notary.key)
        if service is None or notary.key in self.down:
            raise NotaryUnreachable("notary unreachable", notary.url)
        handler = notaryrpc.handlers(service).get(name)
        if handler is None:
            raise RemoteError(f"unknown RPC {name!r}", name)
        ctx = CallContext(sender=self.sender, ts=now_us())
        try:
            result = await handler(ctx, unpack(pack(args)))
        except P2PMarketError as exc:
            err = unpack(pack(exc.to_dict()))
            raise RemoteError(str(err["error"]), err["error_value"]) from None
        decoded: dict[str, Any] = unpack(pack(result))
        return decoded


@dataclass
class LocalCommittee:
    """A genesis with ``3f+1`` (or ``n``) in-process notaries and their transport."""

    genesis: Genesis
    mint: Identity
    notaries: list[Identity]
    services: dict[bytes, NotaryService]
    transport: LocalTransport = field(default_factory=LocalTransport)

    @classmethod
    def create(cls, root: Path, f: int = 0, n: int | None = None,
               mint: Identity | None = None, network: str = "test") -> LocalCommittee:
        count = 3 * f + 1 if n is None else n
        mint = mint or Identity.generate()
        notaries = [Identity.generate() for _ in range(count)]
        genesis = Genesis(network=network, mint_key=mint.public_key, f=f,
                          notaries=tuple(NotaryInfo(i.public_key, f"local://notary{k}")
                                         for k, i in enumerate(notaries)))
        services = {i.public_key: NotaryService(i, genesis, root / f"notary{k}.sqlite")
                    for k, i in enumerate(notaries)}
        return cls(genesis, mint, notaries, services, LocalTransport(services))

    def reopen(self, root: Path) -> None:
        """Close every notary's database and open it again (a restart)."""
        for k, ident in enumerate(self.notaries):
            self.services[ident.public_key].close()
            service = NotaryService(ident, self.genesis, root / f"notary{k}.sqlite")
            self.services[ident.public_key] = service
            self.transport.add(service)

    def close(self) -> None:
        for service in self.services.values():
            service.close()
