"""Best-response budget split (Feldman, Lai, Zhang, EC'05), pure.

Given hosts j with others' bids ``y_j`` (the host's current price, > 0 thanks to
the root bid) and the buyer's preference weights ``w_j`` (capacity for the
buyer), the budget ``X`` is spread so as to maximise Σ w_j x_j / (x_j + y_j):
sort hosts by w_j / y_j, keep the longest prefix on which every bid stays
positive, and bid

    x_j = sqrt(w_j y_j) (X + Σ y_i) / Σ sqrt(w_i y_i) − y_j

over that prefix. O(m log m). The result is in integer micro-credits and sums
exactly to ``X`` (rounding remainders go to the best host).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from p2pmarket.core.errors import P2PMarketError


class PlanError(P2PMarketError):
    """No plan possible for these hosts and this budget."""


@dataclass(frozen=True)
class Candidate:
    host_id: bytes
    weight: int   # the buyer's value of the host, e.g. its capacity
    price: int    # the others' bids y_j, micro-credits


def best_response(candidates: list[Candidate], budget: int) -> dict[bytes, int]:
    """Split ``budget`` across ``candidates``; returns host id -> bid (all > 0)."""
    if budget <= 0:
        raise PlanError("budget must be positive", budget)
    usable = [c for c in candidates if c.weight > 0 and c.price > 0]
    if not usable:
        raise PlanError("no host with positive capacity and price")
    ranked = sorted(usable, key=lambda c: (-c.weight / c.price, c.host_id))
    chosen: list[Candidate] = []
    bids: list[float] = []
    for k in range(1, len(ranked) + 1):
        prefix = ranked[:k]
        total_y = sum(c.price for c in prefix)
        root_sum = sum(math.sqrt(c.weight * c.price) for c in prefix)
        trial = [math.sqrt(c.weight * c.price) * (budget + total_y) / root_sum - c.price
                 for c in prefix]
        if min(trial) <= 0:
            break
        chosen, bids = prefix, trial
    if not chosen:  # the budget is too small for even one host to get a positive bid
        chosen, bids = ranked[:1], [float(budget)]
    ints = [max(0, math.floor(b)) for b in bids]
    ints[0] += budget - sum(ints)
    return {c.host_id: x for c, x in zip(chosen, ints, strict=True) if x > 0}
