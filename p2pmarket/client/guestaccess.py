"""``buy --ssh-key``: the buyer's public key into each machine it bought (issue 13).

:func:`read_public_key` reads and checks an OpenSSH public key file (one key line;
:func:`~p2pmarket.core.sshkey.parse_ssh_key`'s rules, so a bad key is refused before
any money moves); :func:`default_key` is ``~/.ssh/id_ed25519.pub`` when it exists.
:func:`install_key` is the post-purchase step: ``host.set_key`` on each lease (after
any image, since the host boots what is in the volume when the key arrives), each
outcome on its own; the reply's ``access`` goes into the lease record
(:mod:`p2pmarket.client.accessrec`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pmarket.api.client import PeerClient
from p2pmarket.client.accessrec import access_fields
from p2pmarket.client.buyer import client_net
from p2pmarket.client.leases import call_host
from p2pmarket.client.netopts import ClientNet
from p2pmarket.client.walletdir import WalletDir
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.identity import node_id_of
from p2pmarket.core.sshkey import SshKeyError, parse_ssh_key

MAX_KEY_FILE = 16 * 1024


class KeyFileError(P2PMarketError):
    """The public key file cannot be used."""


@dataclass(frozen=True)
class KeyOutcome:
    lease_id: str
    host: str
    ok: bool
    detail: str
    reply: dict[str, Any] | None = None

    def to_doc(self) -> dict[str, Any]:
        access = (self.reply or {}).get("access")
        return {"lease_id": self.lease_id, "host": self.host, "ok": self.ok,
                "detail": self.detail, "access": access if isinstance(access, dict) else None}


def default_key() -> Path | None:
    """``~/.ssh/id_ed25519.pub`` if it exists."""
    path = Path.home() / ".ssh" / "id_ed25519.pub"
    return path if path.is_file() else None


def read_public_key(path: Path) -> str:
    """The key line of an OpenSSH public key file, checked."""
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read the SSH key {path}: {exc.strerror}", str(path)) \
            from None
    if len(raw) > MAX_KEY_FILE:
        raise KeyFileError(f"{path} is not an SSH public key (larger than 16 KiB)", str(path))
    try:
        text = raw.decode("ascii").strip()
        parse_ssh_key(text)
    except (UnicodeDecodeError, SshKeyError) as exc:
        why = exc.message if isinstance(exc, SshKeyError) else "not ASCII text"
        raise KeyFileError(f"{path} is not an SSH public key: {why}", str(path)) from None
    return text


async def install_key(wdir: WalletDir, lease_ids: list[str], key: str,
                      net: ClientNet | None = None) -> list[KeyOutcome]:
    """``host.set_key`` on each lease (see the module docstring)."""
    net = client_net(net)
    outcomes = []
    async with PeerClient(wdir.identity(), timeout_s=60, proxy=net.proxy) as client:
        for lease_id in lease_ids:
            record = wdir.leases()[lease_id]
            host = node_id_of(bytes.fromhex(record["host_key"])).hex()
            try:
                reply, record = await call_host(client, wdir, net, record, "host.set_key",
                                                {"account_id": record["account_id"],
                                                 "ssh_key": key})
            except P2PMarketError as exc:
                outcomes.append(KeyOutcome(lease_id, host, False, exc.message))
                continue
            with contextlib.suppress(P2PMarketError):
                wdir.save_lease(lease_id, {**record, **access_fields(reply)})
            address = reply.get("address") or "no address yet"
            outcomes.append(KeyOutcome(lease_id, host, True, f"key set; guest {address}",
                                       reply))
    return outcomes


__all__ = ["KeyFileError", "KeyOutcome", "default_key", "install_key", "read_public_key"]
