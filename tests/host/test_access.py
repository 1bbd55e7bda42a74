"""The leased ports kept with the auction (issue 13): a buyer who wins a tcp_port reaches
its guest through it as soon as the guest has an address; the lease reply says where;
a closed account frees the port. The real auctioneer on libvirt's test driver, a
stand-in guest on loopback (tests/support/tcpguest.py)."""

from __future__ import annotations

import asyncio

import pytest

from p2pmarket.auction.lease import verify_lease
from p2pmarket.host.access import NO_PORT, AccessKeeper
from p2pmarket.host.forwardtable import NO_ADDRESS
from p2pmarket.host.portfwd import PortForwards
from p2pmarket.host.vmm.libvirt_backend import LibvirtVMM
from tests.host.test_auctioneer import ALICE, BIDS, BOB, GIB, Make, cert, ctx, make_host  # noqa: F401
from tests.support.tcpguest import Guest, free_port


class AddressedVMM(LibvirtVMM):
    """The test driver's domains, with the guest addresses a test gives them."""

    addresses: dict[str, str]

    def guest_address(self, account_id: str) -> str | None:
        return self.addresses.get(account_id)


async def echo_through(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
    writer.write(data)
    writer.write_eof()
    got = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return got


async def test_a_won_port_reaches_the_guest_and_is_freed_when_the_account_closes(
        make_host: Make) -> None:  # noqa: F811 - the fixture imported above
    h = make_host()
    h.vmm.__class__ = AddressedVMM
    vmm: AddressedVMM = h.vmm   # type: ignore[assignment]
    vmm.addresses = {}
    guest = await Guest().start()
    port = free_port()
    keeper = AccessKeeper(vmm, PortForwards("127.0.0.1"),
                          h.auct.winners, lambda: h.auct.state.accounts,
                          lambda: "127.0.0.1", lambda: False, network="127.0.0.0/8",
                          guest_port=guest.port, vm_info=h.auct.sync.info.get,
                          uploading=h.auct.sync.uploading.__contains__)
    h.auct.on_synced = keeper.sync
    h.auct.access_of = keeper.access
    try:
        await h.auct.set_config(h.auct.config.with_capacity("tcp_port", str(port)))
        res = await h.auct.create_account(ctx(ALICE), {
            "payment": cert(100_000_000), "bids": {**BIDS, f"tcp_port,{port}": "1"},
            "interval_s": 3600})
        aid = res["account_id"]
        lease = verify_lease(res["lease"], h.identity.public_key)
        assert lease.resources[f"tcp_port,{port}"].alloc == 1
        # won, but the guest has no address yet: waiting, and said so
        usage = res["access"].pop("usage")
        assert res["access"] == {"address": "127.0.0.1", "port": port, "reach": "direct",
                                 "guest": "", "state": NO_ADDRESS, "vm": "running"}
        # what the machine uses, read from libvirt (the test driver's own counters)
        assert usage["memory_kib"] == GIB and usage["cpu_ns"] > 0
        assert set(usage) == {"cpu_ns", "memory_kib", "rss_kib", "disk_kib", "net_rx_bytes",
                              "net_tx_bytes", "unknown"}
        vmm.addresses[aid] = "127.0.0.1"
        await h.auct.sync_vmm()
        assert keeper.access(aid)["state"] == "forwarded"
        assert keeper.access(aid)["vm"] == "running"     # its "SSH port" (the echo) answers
        assert await echo_through(port, b"ssh-2.0 hello") == b"ssh-2.0 hello"
        reply = await h.auct.lease(ctx(ALICE), {"account_id": aid})
        assert reply["access"]["state"] == "forwarded" and reply["access"]["port"] == port
        # another buyer's account without a port says so
        other = await h.auct.create_account(ctx(BOB), {"payment": cert(100_000_000),
                                                       "bids": BIDS, "interval_s": 3600})
        assert other["access"]["state"] == NO_PORT
        # the account closes: the port stops at once, and can be bound again
        await h.auct.refund(ctx(ALICE), {"account_id": aid, "close": True})
        assert keeper.forwards.table == {}
        with pytest.raises(OSError):
            await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
        # the freed port is won by the next buyer, and reaches its guest
        res = await h.auct.create_account(ctx(BOB), {
            "payment": cert(100_000_000), "bids": {**BIDS, f"tcp_port,{port}": "1"},
            "interval_s": 3600})
        vmm.addresses[res["account_id"]] = "127.0.0.1"
        await h.auct.sync_vmm()
        assert keeper.forwards.table[port].holder == BOB.public_key
        assert await echo_through(port, b"next") == b"next"
    finally:
        await keeper.close()
        await guest.stop()


def test_access_fields_keep_only_a_well_formed_forwarded_access() -> None:
    from p2pmarket.client.accessrec import access_fields
    ok = {"access": {"address": "198.18.0.21", "port": 30000, "reach": "direct",
                     "guest": "198.19.200.5", "state": "forwarded"}}
    assert access_fields(ok) == {"vm_access": "forwarded", "ssh_host": "198.18.0.21",
                                 "ssh_port": "30000"}
    assert access_fields({"access": {**ok["access"], "vm": "booting"}})["vm_state"] == "booting"
    assert "vm_state" not in access_fields({"access": {**ok["access"], "vm": "exploded"}})
    assert access_fields({"access": {**ok["access"], "state": NO_ADDRESS}}) == {
        "vm_access": NO_ADDRESS}
    for bad in ({"port": 0}, {"port": True}, {"port": "22"}, {"address": "a b"},
                {"address": "x" * 300}, {"state": 5}, {"state": ""}):
        assert access_fields({"access": {**ok["access"], **bad}}) == {}, bad
    assert access_fields({}) == access_fields({"access": "x"}) == access_fields(None) == {}


def test_vm_state_follows_the_machines_life_cycle() -> None:
    from p2pmarket.host.access import vm_state
    from p2pmarket.host.vmm.base import VmInfo
    up = VmInfo("d", "a", "running", 1, 1, 1, 1, "cpu_shares")
    down = VmInfo("d", "a", "shutoff", 1, 1, 1, 1, "cpu_shares")
    assert vm_state(None, False, "", False) == "defining"
    assert vm_state(up, True, "198.19.200.2", True) == "uploading"
    assert vm_state(up, False, "198.19.200.2", False) == "booting"
    assert vm_state(up, False, "198.19.200.2", True) == "running"
    assert vm_state(up, False, "", False) == "running"      # no network to probe
    assert vm_state(down, False, "198.19.200.2", True) == "stopped"
