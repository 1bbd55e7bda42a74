"""``buy --ssh-key``: the key step after a purchase and the ``ssh`` lines it prints
(issue 13). ``buy`` with a key (``--ssh-key KEY.pub``, or ``~/.ssh/id_ed25519.pub``
when it exists and ``--no-ssh-key`` is not given) buys only from hosts leasing SSH
ports (with the default key: unless none does), bids on one port at each, and after
the purchase (and the image) gives each host the key (``host.set_key``); it then
prints, per lease, the ``ssh`` command that logs in (``p2pmarket ssh LEASE`` runs it).
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Any

from p2pmarket.auction.lease import verify_lease
from p2pmarket.cli.options import net_of, wallet_dir
from p2pmarket.cli.terminal import err, out
from p2pmarket.client.guestaccess import KeyOutcome, default_key, install_key, read_public_key
from p2pmarket.client.sshaccess import access_of, ssh_argv
from p2pmarket.core.errors import P2PMarketError


def add_key_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ssh-key", metavar="KEY.pub",
                   help="log in to what you buy with this OpenSSH public key (default "
                        "~/.ssh/id_ed25519.pub if it exists): only hosts leasing SSH "
                        "ports, one port bid at each, the key put into each machine")
    p.add_argument("--no-ssh-key", action="store_true",
                   help="do not use ~/.ssh/id_ed25519.pub (no SSH port, no key)")


def key_of(args: argparse.Namespace) -> tuple[str | None, str]:
    """The key text and the buyer's ``ssh`` mode (``require`` for a key given,
    ``prefer`` for the default one, "" for none), checked before anything is paid."""
    if getattr(args, "ssh_key", None):
        return read_public_key(Path(args.ssh_key).expanduser()), "require"
    path = None if getattr(args, "no_ssh_key", False) else default_key()
    return (read_public_key(path), "prefer") if path is not None else (None, "")


async def key_step(args: argparse.Namespace, lease_ids: list[str], key: str
                   ) -> list[KeyOutcome]:
    return await install_key(wallet_dir(args), lease_ids, key, net_of(args))


def ssh_line(args: argparse.Namespace, lease_id: str) -> str | None:
    """The ``ssh`` command for a stored lease, None if it has no way in yet."""
    wdir = wallet_dir(args)
    record = wdir.leases().get(lease_id)
    if record is None:
        return None
    try:
        lease = verify_lease(bytes.fromhex(record["lease"]), bytes.fromhex(record["host_key"]))
        return shlex.join(ssh_argv(access_of(lease_id, record, lease)))
    except (P2PMarketError, ValueError):
        return None


def key_docs(args: argparse.Namespace, outcomes: list[KeyOutcome]) -> list[dict[str, Any]]:
    return [{**o.to_doc(), "ssh": ssh_line(args, o.lease_id) if o.ok else None}
            for o in outcomes]


def print_keys(args: argparse.Namespace, outcomes: list[KeyOutcome],
               given_back: frozenset[str] = frozenset()) -> int:
    """One line per lease: the ``ssh`` command, or an ``error:`` line; the failures.
    ``given_back``: the leases ``buy`` cancels (cli/giveback.py); the rest are kept."""
    for o in outcomes:
        if not o.ok:
            then = "given back" if o.lease_id in given_back else "kept"
            err.print(f"error: the SSH key did not go into lease {o.lease_id} (host "
                      f"{o.host[:16]}…): {o.detail}; the lease is {then}", soft_wrap=True)
            continue
        line = ssh_line(args, o.lease_id)
        access = (o.reply or {}).get("access")
        state = access.get("state", "") if isinstance(access, dict) else ""
        if line is None:
            out.print(f"ssh: lease {o.lease_id}: {o.detail}; no port forwarded yet "
                      f"({state}): `p2pmarket ssh {o.lease_id}` once it is", soft_wrap=True)
        else:
            out.print(f"ssh: lease {o.lease_id}: {line}   (or: p2pmarket ssh {o.lease_id})",
                      soft_wrap=True)
    return sum(1 for o in outcomes if not o.ok)


__all__ = ["add_key_options", "key_docs", "key_of", "key_step", "print_keys", "ssh_line"]
