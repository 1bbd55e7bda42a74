"""A buyer that paid but never heard back from the host finishes the purchase later."""

from __future__ import annotations

from pathlib import Path

from p2pmarket.client.buyer import open_wallet, resume_pending
from p2pmarket.core.wire import pack
from tests.market_helpers import local_market

BIDS = {"cpu": "1,0.1,1", "memory": "1,128MiB,256MiB"}


async def test_paid_but_unacknowledged_purchase_is_resumed(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m") as m:
        host = m.nodes[1]
        buyer = m.wallet("buyer")
        async with open_wallet(m.mint) as (mint, _):
            await mint.mint(50_000_000)
            await mint.send(buyer.identity().public_key, 50_000_000, "mint")
        async with open_wallet(buyer) as (wallet, _):
            await wallet.sync()
            cert = await wallet.send(host.identity.public_key, 7_000_000, "fund")
        # the buyer crashed here: paid, pending recorded, host never asked
        payment_id = cert.entry.hash().hex()
        buyer.set_pending(payment_id, {
            "host_key": host.identity.public_key.hex(), "url": host.url,
            "payment": pack(cert.to_wire()).hex(), "bids": BIDS, "interval_s": 600})

        outcomes = await resume_pending(buyer)
        assert len(outcomes) == 1 and outcomes[0][1].startswith("account")
        assert buyer.pending() == {}
        [record] = buyer.leases().values()
        accounts = host.auctioneer.accounts()
        assert [a.account_id for a in accounts] == [record["account_id"]]
        assert accounts[0].fund <= 7_000_000
        await host.wallet.resume()   # the host's RECV, taken offline, is certified
        assert host.wallet.balance() == 7_000_000

        # retrying the same payment again (a lost answer) opens nothing new
        buyer.set_pending(payment_id, {
            "host_key": host.identity.public_key.hex(), "url": host.url,
            "payment": pack(cert.to_wire()).hex(), "bids": BIDS, "interval_s": 600})
        assert (await resume_pending(buyer))[0][1] == f"account {record['account_id']} opened"
        assert len(host.auctioneer.accounts()) == 1
        await host.wallet.resume()
        assert host.wallet.balance() == 7_000_000


async def test_unreachable_host_leaves_purchase_pending(tmp_path: Path) -> None:
    async with local_market(tmp_path / "m") as m:
        buyer = m.wallet("buyer")
        buyer.set_pending("ab" * 32, {
            "host_key": m.nodes[1].identity.public_key.hex(), "url": "http://127.0.0.1:1",
            "payment": pack({}).hex(), "bids": BIDS, "interval_s": 600})
        outcomes = await resume_pending(buyer)
        assert outcomes[0][1].startswith("still pending")
        assert list(buyer.pending()) == ["ab" * 32]
