"""The way in a host names in a lease reply, checked and kept in the buyer's lease
record (issue 13). Pure.

A host's ``host.create_account``, ``host.bid``, ``host.fund`` and ``host.lease``
replies may carry ``access: {address, port, reach, guest, state}``
(:meth:`p2pmarket.host.access.AccessKeeper.access`): where the buyer connects to reach
its guest's SSH port, and ``state`` ``forwarded`` or why not yet. :func:`access_fields`
turns it into the string fields of a ``leases.json`` record: ``ssh_host`` and
``ssh_port`` (read by :mod:`p2pmarket.client.sshaccess`) once forwarded,
``vm_access`` (the state) always, and ``vm_state`` (the machine's life-cycle state,
one of :data:`VM_STATES`) when given; a malformed ``access`` gives none.
"""

from __future__ import annotations

import ipaddress
from typing import Any

FORWARDED = "forwarded"
VM_STATES = frozenset({"defining", "uploading", "booting", "running", "stopped"})


def access_fields(reply: Any) -> dict[str, str]:
    """The record fields for a reply's ``access`` (see the module docstring)."""
    access = reply.get("access") if isinstance(reply, dict) else None
    if not isinstance(access, dict):
        return {}
    state, address, port = access.get("state"), access.get("address"), access.get("port")
    if not isinstance(state, str) or not 0 < len(state) <= 80:
        return {}
    vm = access.get("vm")
    machine = {"vm_state": vm} if isinstance(vm, str) and vm in VM_STATES else {}
    if state != FORWARDED:
        return {"vm_access": state, **machine}
    if (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535
            or not isinstance(address, str) or not _host(address)):
        return {}
    return {"vm_access": state, "ssh_host": address, "ssh_port": str(port), **machine}


def _host(text: str) -> bool:
    """An IP address or a DNS name (no spaces, no scheme, at most 253 characters)."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    return 0 < len(text) <= 253 and all(c.isalnum() or c in "-." for c in text)


__all__ = ["FORWARDED", "VM_STATES", "access_fields"]
