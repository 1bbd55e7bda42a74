"""A market of two in-process nodes whose second is a qemu:///system host booting the
test guest (:mod:`tests.support.testguest`) for buyers without an image: used by
tests/host/test_buy_ssh.py and scripts/bench/workload.py (``boot``). The host's guest
network gets a fresh name and a random /24 of 198.19.201-250.0; every domain, the
network and a storage pool the node made are removed on exit. Needs root and libvirtd
(:func:`skip_reason` says why not).

:func:`lxc_market` is the same with an ``lxc:///`` host whose ``images_dir`` offers the
LXC test guest's root archive as the base image :data:`LXC_IMAGE` and 1 GiB of disk
(networks of 198.19.101-199.0/24); buyers buy with ``--image p2pm-test``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import libvirt

from p2pmarket.host.vmm import network as guestnets
from tests.market_helpers import LocalMarket, local_market
from tests.support import testguest
from tests.support.libvirtclean import forget_domains, remove_pool

URI = "qemu:///system"
LXC_URI = "lxc:///"
LXC_IMAGE = "p2pm-test"


def skip_reason(uri: str = URI) -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        return f"libvirtd not reachable at {uri} ({exc.get_error_message()})"
    conn.close()
    return None


def remove_made(conn: Any, network: str, pools: set[str]) -> None:
    """Remove the market's guest network and the storage pools not in ``pools`` (the
    ones there before it: the node made the others), then close ``conn``."""
    with contextlib.suppress(libvirt.libvirtError):
        guestnets.remove_network(conn, network)
    for name in set(conn.listStoragePools()) | set(conn.listDefinedStoragePools()):
        if name not in pools:
            remove_pool(conn, name)
    conn.close()


@contextlib.asynccontextmanager
async def qemu_market(root: Path, **settings: Any) -> AsyncIterator[LocalMarket]:
    built = await asyncio.to_thread(testguest.build)
    network = f"p2pmb{uuid.uuid4().hex[:6]}"
    conn = libvirt.open(URI)
    pools = set(conn.listStoragePools()) | set(conn.listDefinedStoragePools())
    host = {"vmm_uri": URI, "guest_network": network,
            "guest_subnet": f"198.19.{random.randrange(201, 251)}.0/24",
            "guest_kernel": built.kernel, "guest_initrd": built.initrd,
            "guest_cmdline": built.cmdline, **settings}
    try:
        async with local_market(root, n=2, overrides={1: host}) as m:
            try:
                yield m
            finally:
                forget_domains(m.nodes[1].vmm)
    finally:
        remove_made(conn, network, pools)


@contextlib.asynccontextmanager
async def lxc_market(root: Path, **settings: Any) -> AsyncIterator[LocalMarket]:
    archive = await asyncio.to_thread(testguest.build_rootfs)
    images = root / "images"
    images.mkdir(parents=True)
    (images / f"{LXC_IMAGE}.tar.gz").symlink_to(archive)
    network = f"p2pmlxc{uuid.uuid4().hex[:6]}"
    conn = libvirt.open(LXC_URI)
    pools = set(conn.listStoragePools()) | set(conn.listDefinedStoragePools())
    host = {"vmm_uri": LXC_URI, "guest_network": network,
            "guest_subnet": f"198.19.{random.randrange(101, 200)}.0/24",
            "images_dir": str(images), **settings}
    try:
        async with local_market(root / "m", n=2, overrides={1: host}) as m:
            node = m.nodes[1]
            try:
                await node.auctioneer.set_config(
                    node.auctioneer.config.with_capacity("disk", "1GiB"))
                await node.publish_if_moved(force=True)   # the market sees the disk
                yield m
            finally:
                forget_domains(m.nodes[1].vmm)
    finally:
        remove_made(conn, network, pools)


async def login(port: int, key: Any, deadline: float,
                command: str = "echo hello from $(hostname)") -> str:
    """Log in as root at 127.0.0.1:``port`` with asyncssh ``key`` as soon as the guest
    answers and run ``command``; its output. A refused key raises
    ``asyncssh.PermissionDenied`` at once; no login by ``deadline`` (monotonic) raises
    AssertionError."""
    import asyncssh  # a test extra

    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            async with asyncssh.connect("127.0.0.1", port=port, username="root",
                                        client_keys=[key], known_hosts=None,
                                        connect_timeout=20) as conn:
                result = await conn.run(command, check=True, timeout=20)
                return str(result.stdout)
        except asyncssh.PermissionDenied:
            raise
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            last = exc            # the guest is still booting
            await asyncio.sleep(0.3)
    raise AssertionError(f"no SSH login through the leased port in time: {last!r}")


async def restart_host(market: LocalMarket, account_id: str, uri: str) -> Any:
    """The host machine goes down and comes back: its node stops, the account's guest
    dies with it (destroyed through ``uri``), and a new node starts on the same data
    dir; it replaces the old one in ``market`` (stopped by the fixture from then on)."""
    from p2pmarket.core.keyfile import load_key
    from p2pmarket.node.service import Node

    host = market.nodes[1]
    data, settings = host.data_dir, host.settings
    await host.stop()
    conn = libvirt.open(uri)
    try:
        conn.lookupByName(host.vmm.name_of(account_id)).destroy()
    finally:
        conn.close()
    again = Node(data, settings, market.genesis, load_key(data.key))
    await again.start()
    market.nodes[1] = again
    return again

