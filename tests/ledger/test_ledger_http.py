"""Notary RPCs over real HTTP on 127.0.0.1: tampered, truncated, misaddressed and
replayed requests are refused by the RPC layer before any handler runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from ledger_helpers import core, dump

from p2pmarket.api.client import PeerClient
from p2pmarket.api.rpc import RpcDispatcher, make_request, open_reply
from p2pmarket.api.server import Site, peer_app
from p2pmarket.core.clock import now_us
from p2pmarket.core.errors import P2PMarketError, RemoteError
from p2pmarket.core.genesis import Genesis, NotaryInfo
from p2pmarket.core.identity import Identity
from p2pmarket.ledger import notaryrpc
from p2pmarket.ledger.committee import PeerTransport
from p2pmarket.ledger.notary import NotaryService
from p2pmarket.ledger.store import ChainStore
from p2pmarket.ledger.wallet import Wallet
from tests.support.local_committee import LocalCommittee


@dataclass
class Served:
    genesis: Genesis
    committee: LocalCommittee
    sites: list[Site]

    def service(self, i: int) -> NotaryService:
        return self.committee.services[self.committee.notaries[i].public_key]


@pytest.fixture
async def served(committee4: LocalCommittee) -> AsyncIterator[Served]:
    sites, infos = [], []
    for ident in committee4.notaries:
        dispatcher = RpcDispatcher(ident)
        dispatcher.register_all("notary", notaryrpc.handlers(committee4.services[ident.public_key]),
                                limits=notaryrpc.REQUEST_LIMITS)
        site = Site(peer_app(dispatcher))
        port = await site.start("127.0.0.1", 0)
        sites.append(site)
        infos.append(NotaryInfo(ident.public_key, f"http://127.0.0.1:{port}"))
    genesis = replace(committee4.genesis, notaries=tuple(infos))
    yield Served(genesis, committee4, sites)
    for site in sites:
        await site.stop()


async def post(url: str, data: bytes) -> bytes:
    async with aiohttp.ClientSession() as session, \
            session.post(url + "/rpc", data=data,
                         headers={"Content-Type": "application/msgpack"}) as resp:
        return await resp.read()


async def test_wallets_over_http(tmp_path: Path, served: Served) -> None:
    g = served.genesis
    async with PeerClient(served.committee.mint) as mc, PeerClient(Identity.generate()) as ac:
        mint = Wallet(served.committee.mint, ChainStore(tmp_path / "m.db"), g, PeerTransport(mc))
        alice = Wallet(ac.identity, ChainStore(tmp_path / "a.db"), g, PeerTransport(ac))
        await mint.mint(100)
        certs = await mint.send_many([(alice.key, a, "http") for a in (10, 20)])
        assert await alice.sync() == 30
        assert await alice.receive(certs[0]) == 10  # idempotent
        await mint.flush()
        for i in range(4):
            assert core(served.service(i).supply()) == {
                "minted": 100, "balances": 100, "pending": 0, "early": 0, "ok": True}
        await mint.close()
        await alice.close()


async def test_tampered_truncated_misaddressed_and_replayed_requests(
        served: Served, chain_of: Any) -> None:
    c = served.committee
    notary = c.notaries[0]
    service = served.service(0)
    url = served.genesis.notaries[0].url
    mint = chain_of(c.mint)
    mint.open()
    mint.mint(10)
    args = {"entries": [e.encode() for e in mint.entries], "sigs": [a.sig for a in mint.auths],
            "certs": [[], []]}
    caller = Identity.generate()
    request = make_request(caller, notary.node_id, "notary.certify_batch", args)
    reply = open_reply(request, await post(url, request), caller, notary.public_key)
    assert all(isinstance(s, bytes) for s in reply["sigs"])
    before = dump(service)

    async def refused(data: bytes, match: str) -> None:
        raw = await post(url, data)
        with pytest.raises(P2PMarketError, match=match):
            open_reply(data, raw, caller, notary.public_key)
        assert dump(service) == before

    # replayed: the very same bytes again
    await refused(request, "replayed")
    # tampered: one byte of the signed body changed
    i = len(request) // 2
    tampered = request[:i] + bytes([request[i] ^ 1]) + request[i + 1:]
    await refused(tampered, "signature|malformed|envelope")
    # truncated
    await refused(request[:len(request) // 2], "malformed")
    await refused(b"", "malformed|envelope")
    # addressed to another node (a request captured elsewhere cannot be replayed here)
    other = make_request(caller, c.notaries[1].node_id, "notary.certify_batch", args)
    await refused(other, "another node")
    # a timestamp outside the window
    stale = make_request(caller, notary.node_id, "notary.certify_batch", args,
                         ts=now_us() - 3_600_000_000)
    await refused(stale, "too old")
    # a new entry in a replayed envelope: the guard refuses before the handler
    mint.mint(5)
    new_args = {"entries": [mint.entries[-1].encode()], "sigs": [mint.auths[-1].sig],
                "certs": [[]]}
    fresh = make_request(caller, notary.node_id, "notary.certify_batch", new_args)
    open_reply(fresh, await post(url, fresh), caller, notary.public_key)
    before = dump(service)
    await refused(fresh, "replayed")
    assert service.supply()["minted"] == 15


async def test_unknown_rpc_and_bad_arguments_over_http(served: Served) -> None:
    c = served.committee
    service = served.service(1)
    before = dump(service)
    async with PeerClient(Identity.generate()) as client:
        info = served.genesis.notaries[1]
        with pytest.raises(RemoteError, match="unknown RPC"):
            await client.call(info.url, info.key, "notary.steal", {})
        with pytest.raises(RemoteError, match="fields"):
            await client.call(info.url, info.key, "notary.certify_batch", {"entries": []})
        with pytest.raises(RemoteError):
            await client.call(info.url, info.key, "notary.deliver", {"certs": [b"junk"]})
    assert dump(service) == before
    assert c is served.committee
