"""Logging in to a leased machine (docs/design.md section 8, "Access"): the ``ssh``
command for a lease, and the tunnel ``ssh`` runs as its ProxyCommand for a host behind
a relay.

A lease reaches its guest's SSH port through a ``tcp_port`` the account won at the host
(:mod:`p2pmarket.host.forwardtable`). :func:`access_of` says where, from the stored lease
record (``leases.json``, :mod:`p2pmarket.client.leases`) and its verified lease:

- the port: the record's ``ssh_port`` if the host named one, else the lowest
  ``tcp_port,N`` the lease holds (``alloc`` >= 1);
- the reach: ``relay`` when the host's URL is a relay's (``<relay>/relay/<node id
  hex>``), else ``direct``; the address: the record's ``ssh_host``, else the host of its
  URL.

:func:`ssh_argv` is then ``ssh -p PORT root@ADDRESS`` for a direct host, and for a
relayed one ``ssh -o ProxyCommand='p2pmarket tunnel LEASE' -o HostKeyAlias=p2pmarket-LEASE
root@lease-LEASE``; :func:`run_tunnel` is ``p2pmarket tunnel LEASE``: it pumps a local
reader and writer (ssh's pipes: :func:`stdio`) to the port, over a relayed stream signed
by the wallet's key (:mod:`p2pmarket.nat.streams`), or a plain TCP connection for a
direct host.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from p2pmarket.api.client import PeerClient
from p2pmarket.auction.lease import Lease, verify_lease
from p2pmarket.client.accessrec import access_fields
from p2pmarket.client.buyer import BuyError, client_net
from p2pmarket.client.leases import call_host
from p2pmarket.client.netopts import ClientNet
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.clock import now_us
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import Identity, node_id_of
from p2pmarket.core.wire import Envelope, pack
from p2pmarket.nat.frames import MAX_DATA
from p2pmarket.nat.streamreq import make_stream_request
from p2pmarket.nat.streams import Pipe, open_stream, pipe_stream

DIRECT, RELAY = "direct", "relay"
_RELAYED = re.compile(r"/relay/[0-9a-f]{40}/?")
CONNECT_TIMEOUT_S = 10.0


class SshError(BuyError):
    """A lease that cannot be logged in to (yet), with the reason."""


@dataclass(frozen=True)
class Access:
    """Where a lease's guest SSH port is reached."""

    lease_id: str
    account_id: str
    host_key: bytes
    url: str           # the host's URL (a relay's for a relayed host)
    reach: str         # DIRECT or RELAY
    address: str       # the host's address (direct)
    port: int          # the leased tcp_port

    @property
    def alias(self) -> str:
        """The name ssh knows a relayed lease's guest by (its known_hosts entry)."""
        return f"p2pmarket-{self.lease_id}"


def find_lease(wdir: WalletDir, text: str) -> tuple[str, dict[str, str]]:
    """The stored lease ``text`` names: its id, or a prefix of exactly one lease id."""
    leases = wdir.leases()
    if text in leases:
        return text, leases[text]
    hits = sorted(lid for lid in leases if text and lid.startswith(text))
    if len(hits) == 1:
        return hits[0], leases[hits[0]]
    if hits:
        raise SshError("several leases start with this; give more of the id", hits[:5])
    raise SshError("no such lease in this wallet (see `p2pmarket leases`)", text)


def leased_ports(lease: Lease) -> list[int]:
    """The tcp ports a lease holds now: its single-port ``tcp_port,N`` terms with an
    allocation, lowest first."""
    ports = []
    for key, term in lease.resources.items():
        kind, _, ident = key.partition(",")
        if kind == "tcp_port" and ident.isdigit() and term.alloc >= 1:
            ports.append(int(ident))
    return sorted(p for p in ports if 1 <= p <= 65535)


def reach_of(url: str) -> str:
    return RELAY if _RELAYED.search(urlsplit(url).path or "") else DIRECT


def access_of(lease_id: str, record: dict[str, str], lease: Lease | None) -> Access:
    """Where the lease's guest is reached (the rules of the module docstring);
    :class:`SshError` if the lease holds no port."""
    if record.get("closed"):
        raise SshError("this lease was cancelled", lease_id)
    port_text = record.get("ssh_port", "")
    if port_text.isdigit() and 1 <= int(port_text) <= 65535:
        port = int(port_text)
    else:
        ports = [] if lease is None else leased_ports(lease)
        if not ports:
            held = lease is not None and any(k.startswith("tcp_port,") for k in lease.resources)
            raise SshError("the lease holds no tcp port now (outbid for it?)" if held else
                           "the lease has no tcp port: bid on one, e.g. "
                           "`p2pmarket rebid LEASE ... tcp_port,30000:1`", lease_id)
        port = ports[0]
    url = record["url"]
    address = record.get("ssh_host") or urlsplit(url).hostname or ""
    return Access(lease_id, record["account_id"], bytes.fromhex(record["host_key"]), url,
                  reach_of(url), address, port)


def tunnel_argv(lease_id: str, wallet: str | None = None, http_proxy: str | None = None,
                program: Sequence[str] = ("p2pmarket",)) -> list[str]:
    """The ``p2pmarket tunnel`` command line for a lease."""
    argv = [*program, "tunnel", lease_id]
    if wallet:
        argv += ["--wallet", wallet]
    if http_proxy:
        argv += ["--http-proxy", http_proxy]
    return argv


def ssh_argv(access: Access, *, user: str = "root", tunnel: Sequence[str] = (),
             identity_file: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """The ``ssh`` command line for ``access`` (``tunnel``: the ProxyCommand's argv, for a
    relayed host; :func:`tunnel_argv`)."""
    argv = ["ssh"]
    if identity_file:
        argv += ["-i", identity_file]
    if access.reach == DIRECT:
        host = access.address
        return [*argv, "-p", str(access.port), *extra, f"{user}@{host}"]
    command = shlex.join(tunnel or tunnel_argv(access.lease_id))
    return [*argv, "-o", f"ProxyCommand={command}", "-o", f"HostKeyAlias={access.alias}",
            *extra, f"{user}@lease-{access.lease_id}"]


async def current_access(wdir: WalletDir, lease_text: str, net: ClientNet | None = None,
                         refresh: bool = True) -> Access:
    """The access of the stored lease ``lease_text`` names, from its lease as the host
    signs it now (``refresh``; the stored copy if the host does not answer)."""
    lease_id, record = find_lease(wdir, lease_text)
    host_key = bytes.fromhex(record["host_key"])
    lease: Lease | None
    try:
        lease = verify_lease(bytes.fromhex(record["lease"]), host_key)
    except (P2PMarketError, ValueError):
        lease = None
    if refresh and not record.get("closed"):
        net = client_net(net)
        with contextlib.suppress(P2PMarketError):
            async with PeerClient(wdir.identity(), timeout_s=5, proxy=net.proxy) as client:
                reply, record = await call_host(client, wdir, net, record, "host.lease",
                                                {"account_id": record["account_id"]})
            env = Envelope.from_wire(reply.get("lease"))
            lease = verify_lease(env, host_key)
            record = {**record, "lease": pack(env.to_wire()).hex(), **access_fields(reply)}
            wdir.save_lease(lease_id, record)
    return access_of(lease_id, record, lease)


async def run_tunnel(access: Access, identity: Identity, local: Pipe,
                     net: ClientNet | None = None) -> None:
    """Pump ``local`` to the lease's port until both sides are done: a relayed stream
    for a relayed host (:class:`~p2pmarket.nat.streamreq.StreamRefused` if refused), a
    TCP connection for a direct one."""
    if access.reach == RELAY:
        request = make_stream_request(identity, node_id_of(access.host_key),
                                      access.account_id, access.port, now_us())
        async with open_stream(access.url, request, proxy=client_net(net).proxy) as ws:
            await pipe_stream(ws, local)
        return
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            remote = await asyncio.open_connection(access.address, access.port,
                                                   limit=MAX_DATA)
    except (OSError, TimeoutError) as exc:
        raise SshError(f"cannot connect to {access.address}:{access.port}: "
                       f"{type(exc).__name__}", access.lease_id) from None
    await _splice(local, remote)


async def _splice(a: Pipe, b: Pipe) -> None:
    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(MAX_DATA):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()

    tasks = [asyncio.ensure_future(pump(a[0], b[1])), asyncio.ensure_future(pump(b[0], a[1]))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, writer in (a, b):
            writer.close()


async def stdio() -> Pipe:
    """This process's stdin and stdout as a reader and writer (ssh's ProxyCommand
    pipes)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_DATA)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                 sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), sys.stdout.buffer)
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)


__all__ = ["DIRECT", "RELAY", "Access", "SshError", "access_of", "current_access",
           "find_lease", "leased_ports", "reach_of", "run_tunnel", "ssh_argv", "stdio",
           "tunnel_argv"]
