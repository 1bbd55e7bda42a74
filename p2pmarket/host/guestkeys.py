"""``host.set_key``: the buyer's SSH key into its machine (issue 13).

RPC (register with ``dispatcher.register_all("host", guest_handlers(...))``):

- ``host.set_key {account_id, ssh_key}`` -> ``{account_id, address, access}``: the
  account holder gives the OpenSSH public key its guest accepts for root (one
  ``ssh-ed25519``, ``ssh-rsa`` of at least 2048 bits or ``ecdsa-sha2-nistp*`` line:
  :func:`~p2pmarket.host.vmm.guest.parse_ssh_key`). The host writes it into the
  guest's cloud-init NoCloud seed and reserves the guest's address
  (:meth:`~p2pmarket.host.vmm.base.VMM.prepare_guest`), then restarts the machine
  with it. What the machine boots: the account's disk volume if it has one (an
  uploaded or base image), else the host's own kernel and initramfs (settings
  ``guest_kernel``, ``guest_initrd``, ``guest_cmdline``); with neither the call is
  refused and nothing changes. ``access`` is the lease replies' (the forwarded port,
  or why not yet: the guest's address comes with its DHCP lease).

The key is kept by libvirt (the seed volume, the domain's definition), so a host
restart boots the guest with it again. Calling again replaces the key.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from p2pmarket.api.rpc import CallContext, Handler
from p2pmarket.auction import HostError
from p2pmarket.auction.accounts import ACTIVE
from p2pmarket.host.vmm.guest import GuestBoot, parse_ssh_key

if TYPE_CHECKING:
    from p2pmarket.host.auctioneer import Auctioneer

MAX_KEY_TEXT = 16 * 1024


async def set_key(auct: Auctioneer, default_boot: GuestBoot | None, sender: bytes,
                  args: Any) -> dict[str, Any]:
    """``host.set_key`` (see the module docstring)."""
    if not isinstance(args, dict) or set(args) != {"account_id", "ssh_key"}:
        raise HostError("set_key takes {account_id, ssh_key}")
    account_id, text = args["account_id"], args["ssh_key"]
    if not isinstance(account_id, str) or not isinstance(text, str) or \
            len(text) > MAX_KEY_TEXT:
        raise HostError("account_id and ssh_key must be strings (a key of at most 16 KiB)")
    account = auct.accounts_by_id().get(account_id)
    if account is None or account.holder != sender:
        raise HostError("no such account of yours", account_id[:40])
    if account.state != ACTIVE:
        raise HostError("the account is not active", account.state)
    parse_ssh_key(text)   # a bad key is refused before anything changes
    volume = await asyncio.to_thread(auct.vmm.volume, account_id)
    boot = GuestBoot() if volume is not None else default_boot
    if boot is None:
        raise HostError("this host has no kernel of its own for guests: upload an image "
                        "first (buy --image, p2pmarket upload)", account_id)
    address = await asyncio.to_thread(auct.vmm.prepare_guest, account_id, boot, text)
    auct.sync.forget(account_id)
    await auct.sync_vmm()
    access = auct.access_of(account_id) if auct.access_of is not None else None
    return {"account_id": account_id, "address": address or "", "access": access}


def guest_handlers(auct: Auctioneer, default_boot: GuestBoot | None) -> dict[str, Handler]:
    """``{"set_key": handler}``; ``default_boot``: the host's own kernel and initramfs
    for guests without a disk image (None: none)."""
    async def handler(ctx: CallContext, args: dict[str, Any]) -> dict[str, Any]:
        return await set_key(auct, default_boot, ctx.sender, args)
    return {"set_key": handler}


__all__ = ["guest_handlers", "set_key"]
