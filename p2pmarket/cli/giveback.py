"""``buy``'s last step: a lease whose machine the buyer cannot use is given back.

Every purchase yields a machine or its money comes back (design §6, "Machines"). After
``buy`` has put the image (``--image``) and the key (``--ssh-key``) into its leases, a
lease whose image did not go in, or whose host did not take the key the buyer named
with ``--ssh-key``, is cancelled: its host refunds all the money left in the account,
certified like any refund (:func:`p2pmarket.client.leases.cancel`). ``--keep-failed``
keeps such leases instead (``p2pmarket upload LEASE IMAGE`` tries the image again).

The default key (``~/.ssh/id_ed25519.pub``, taken without being named) failing does not
cancel a lease: the buyer did not ask for SSH. JSON (under ``cancelled`` in ``buy
--json``): ``[{lease_id, why, status (done, pending, none, failed), refunded,
refunded_credits, detail}]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from p2pmarket.cli.options import net_of, wallet_dir
from p2pmarket.cli.terminal import err, out
from p2pmarket.client.guestaccess import KeyOutcome
from p2pmarket.client.imageupload import ImageOutcome
from p2pmarket.client.leases import cancel
from p2pmarket.core.errors import P2PMarketError
from p2pmarket.core.money import format_credits


@dataclass(frozen=True)
class GivenBack:
    """One cancelled lease: why, and what its refund came to."""

    lease_id: str
    why: str
    status: str          # the refund's: done, pending, none; failed: the call failed
    refunded: int        # micro-credits received
    detail: str = ""

    def to_doc(self) -> dict[str, Any]:
        return {"lease_id": self.lease_id, "why": self.why, "status": self.status,
                "refunded": self.refunded, "refunded_credits": format_credits(self.refunded),
                "detail": self.detail}


def unusable(images: Sequence[ImageOutcome], keys: Sequence[KeyOutcome], ssh_mode: str
             ) -> list[tuple[str, str]]:
    """The leases to give back, each with why, in the order first seen (pure)."""
    why: dict[str, str] = {}
    for i in images:
        if not i.ok:
            why.setdefault(i.lease_id, f"the image did not go in: {i.detail}")
    if ssh_mode == "require":
        for k in keys:
            if not k.ok:
                why.setdefault(k.lease_id, f"the SSH key did not go in: {k.detail}")
    return list(why.items())


async def give_back(args: argparse.Namespace, leases: Sequence[tuple[str, str]]
                    ) -> list[GivenBack]:
    """Cancel each lease (one at a time: they share the wallet's chain)."""
    done: list[GivenBack] = []
    for lease_id, why in leases:
        try:
            got = await cancel(wallet_dir(args), lease_id, net=net_of(args))
        except (P2PMarketError, OSError, TimeoutError) as e:
            done.append(GivenBack(lease_id, why, "failed", 0, str(e)))
            continue
        refunded = sum(int(c.entry.body["amount"]) for c in got.payments)
        done.append(GivenBack(lease_id, why, got.status, refunded))
    return done


def print_given_back(given: Sequence[GivenBack]) -> int:
    """One line per lease; the ones whose money is not back yet count as errors."""
    errors = 0
    for g in given:
        if g.status == "done":
            out.print(f"cancelled lease {g.lease_id} ({g.why}): "
                      f"{format_credits(g.refunded)} credits refunded", soft_wrap=True)
            continue
        errors += 1
        err.print(f"error: lease {g.lease_id} could not be given back ({g.why}): refund "
                  f"{g.status}{': ' + g.detail if g.detail else ''} (`p2pmarket cancel "
                  f"{g.lease_id}` tries again)", soft_wrap=True)
    return errors


__all__ = ["GivenBack", "give_back", "print_given_back", "unusable"]
