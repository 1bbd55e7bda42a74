"""Real SSH logins (asyncssh, on 127.0.0.1) through a leased port: at a public host's
forward, through ``p2pmarket tunnel``'s pump to a direct host, and through a relay to a
host behind NAT; a wrong key is refused by the guest; another buyer's key never gets a
stream at all."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest
from relay_helpers import PORT, leased

from p2pmarket.auction.lease import Lease, ResourceTerm, sign_lease
from p2pmarket.client.sshaccess import DIRECT, RELAY, Access, run_tunnel
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.genesis import Genesis, NotaryInfo
from p2pmarket.core.identity import Identity
from p2pmarket.core.wire import pack
from p2pmarket.host.forwardtable import Forward
from p2pmarket.host.portfwd import PortForwards
from p2pmarket.nat.streamreq import StreamRefused
from tests.support.tcpguest import WAIT_S, free_port

USER_KEY = asyncssh.generate_private_key("ssh-ed25519")
HOST_KEY = asyncssh.generate_private_key("ssh-ed25519")


async def handle(process: asyncssh.SSHServerProcess[str]) -> None:
    process.stdout.write(f"guest ran: {process.command}\n")
    process.exit(0)


@contextlib.asynccontextmanager
async def ssh_guest() -> AsyncIterator[int]:
    """An SSH server standing in for a guest's sshd; its port."""
    keys = asyncssh.import_authorized_keys(USER_KEY.export_public_key().decode())
    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[HOST_KEY],
                                   authorized_client_keys=keys, process_factory=handle)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def login(key: asyncssh.SSHKey, **where: object) -> str:
    async with asyncssh.connect(username="root", client_keys=[key], known_hosts=None,
                                login_timeout=WAIT_S, **where) as conn:   # type: ignore[arg-type]
        result = await conn.run("uname", check=True, timeout=WAIT_S)
        return str(result.stdout)


@contextlib.asynccontextmanager
async def tunnel(access: Access, buyer: Identity) -> AsyncIterator[socket.socket]:
    """ssh's side of a ProxyCommand: a socket whose other end run_tunnel pumps."""
    ours, theirs = socket.socketpair()
    local = await asyncio.open_connection(sock=theirs)
    task = asyncio.ensure_future(run_tunnel(access, buyer, local))
    try:
        yield ours
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, WAIT_S)
        ours.close()


async def test_ssh_to_a_public_hosts_forwarded_port_and_through_the_tunnel() -> None:
    buyer = Identity.generate()
    forwards = PortForwards("127.0.0.1")
    port = free_port()
    async with ssh_guest() as guest_port:
        try:
            await forwards.sync({port: Forward(port, "acc", buyer.public_key, "127.0.0.1",
                                               guest_port)})
            assert await login(USER_KEY, host="127.0.0.1", port=port) == "guest ran: uname\n"
            access = Access("acc", "acc", Identity.generate().public_key,
                            "http://127.0.0.1:1", DIRECT, "127.0.0.1", port)
            async with tunnel(access, buyer) as sock:
                assert await login(USER_KEY, sock=sock, host="lease") == "guest ran: uname\n"
            with pytest.raises(asyncssh.PermissionDenied):
                await login(asyncssh.generate_private_key("ssh-ed25519"), host="127.0.0.1",
                            port=port)
        finally:
            await forwards.close()


async def test_ssh_through_the_relay_to_a_host_behind_nat() -> None:
    async with ssh_guest() as guest_port, leased(guest_port=guest_port) as lz:
        host = lz.world.host.identity
        access = Access("acc", "acc", host.public_key, lz.world.client.url, RELAY, "", PORT)
        async with tunnel(access, lz.buyer) as sock:
            assert await login(USER_KEY, sock=sock, host="lease") == "guest ran: uname\n"
        async with tunnel(access, lz.buyer) as sock:
            with pytest.raises(asyncssh.PermissionDenied):
                await login(asyncssh.generate_private_key("ssh-ed25519"), sock=sock,
                            host="lease")
        with pytest.raises(StreamRefused, match="not leased to this account"):
            ours, theirs = socket.socketpair()
            try:
                local = await asyncio.open_connection(sock=theirs)
                await run_tunnel(access, Identity.generate(), local)
            finally:
                ours.close()
        assert lz.gate.served == 2 and lz.gate.refused == 1


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no OpenSSH client")
async def test_openssh_logs_in_through_p2pmarket_ssh_and_tunnel(tmp_path: Path) -> None:
    """The real thing: the ``ssh`` command ``p2pmarket ssh --print`` gives, run by
    OpenSSH, its ProxyCommand a ``p2pmarket tunnel`` process, through a relay."""
    async with ssh_guest() as guest_port, leased(guest_port=guest_port) as lz:
        host = lz.world.host.identity
        wdir = WalletDir(tmp_path / "w")
        wdir.create(Genesis(network="ssh-test", mint_key=Identity.generate().public_key,
                            notaries=(NotaryInfo(host.public_key, "http://127.0.0.1:1"),)),
                    lz.buyer)
        lease = Lease("acc", host.node_id, lz.buyer.public_key,
                      {"tcp_port,30022": ResourceTerm(1, 1, 1)}, 0, 2**62, 1)
        wdir.save_lease("acc", {"host_key": host.public_key.hex(), "url": lz.world.client.url,
                                "account_id": "acc", "paid": "1",
                                "lease": pack(sign_lease(host, lease, 1).to_wire()).hex()})
        key = tmp_path / "id_ed25519"
        USER_KEY.write_private_key(str(key))
        key.chmod(0o600)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        printed = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "p2pmarket", "ssh", "--print", "--offline", "--wallet",
            str(wdir.root), "-i", str(key), "acc", "--", "-o", "BatchMode=yes", "-o",
            "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={tmp_path / 'kh'}",
            "-F", "/dev/null", stdout=asyncio.subprocess.PIPE, env=env)
        out, _ = await asyncio.wait_for(printed.communicate(), 60)
        argv = shlex.split(out.decode())
        assert argv[0] == "ssh" and argv[-1] == "root@lease-acc"
        ssh = await asyncio.create_subprocess_exec(
            *argv, "uname", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env)
        out, err = await asyncio.wait_for(ssh.communicate(), 60)
        assert ssh.returncode == 0, err.decode()
        assert out.decode() == "guest ran: uname\n"
        assert lz.gate.served == 1
