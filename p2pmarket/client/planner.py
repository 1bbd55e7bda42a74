"""Best response over a bundle (Feldman, Lai, Zhang, EC'05; Tycoon's ``best_response``), pure.

A buyer with budget ``X`` (micro-credits for an interval of ``T`` seconds) and one
set of bids (the bundle: a weight, min and max per resource) chooses how much to
pay each host. The model is how the host really allocates
(:mod:`p2pmarket.auction.allocator`, :mod:`p2pmarket.auction.shares`); every rule:

1. **Split.** A host splits an account's money over its bids by weight (allocator
   rule 2): resource ``r`` gets ``a_r = w_r / W`` of every micro-credit, ``W`` the
   sum of all the bundle's weights (unique resources' included: they take their
   part of the money, but are sealed-bid auctions the plan does not model).
2. **Shares.** Host ``j`` quotes ``p_jr``, the sum of every bid on ``r``, root
   included, in µcredits/s (:mod:`p2pmarket.auction.quote`): over the interval the
   others bid ``y_jr = p_jr T``. Paying ``x`` gives ``C_jr x a_r / (x a_r + y_jr) =
   C_jr x / (x + z_jr)``, ``z_jr = y_jr / a_r`` (allocator rule 3; the buyer's own
   bid is in the denominator). A buyer already bidding at the host passes the price
   less its own bids.
3. **Max.** The host water-fills max caps: the buyer gets ``min(share, M_jr)``
   (``M_jr``: the max resolved on ``C_jr``, at most ``C_jr``). The cap is reached at
   ``x = z_jr M_jr / (C_jr - M_jr)`` (the *kink*); money past it is not charged
   (rule 6) and stays in the account, refundable. The plan puts money past every
   kink only when every host is capped on every resource.
4. **Value.** Utility is linear in what the buyer gets: ``U = Σ_j Σ_r v_r π_j
   alloc_jr`` with ``v_r = a_r / Cref_r``, ``Cref_r`` the largest capacity of ``r``
   among the hosts given (the whole of the largest host's ``r`` is worth ``a_r``, so
   the weights mean the same to the plan as to the host, and the whole of the
   largest host of every resource is worth 1), ``π_j`` the buyer's
   preference for the host (:attr:`HostTerms.preference`, 1 by default). Each
   ``U_j(x) = Σ_r u_jr min(x / (x + z_jr), M_jr / C_jr)``, ``u_jr = v_r π_j C_jr``,
   is concave and non-decreasing.
5. **Optimum** (KKT). Maximise ``Σ U_j(x_j)`` with ``Σ x_j = X``, ``x_j >= 0``: a
   multiplier ``λ`` with ``x_j = 0`` where ``U_j'(0) <= λ`` and ``U_j'(x_j) = λ``
   (or ``x_j`` at a kink ``U_j'`` jumps over) elsewhere. Hosts are ranked by
   ``U_j'(0) = Σ_r u_jr / z_jr`` (Tycoon's ``w/y``; ties by host id).
   - *One price per host* (one resource, or every ``z_jr`` of a host equal) and no
     kink: the closed form over sorted prefixes, ``x_j = sqrt(u_j z_j) (X + Σ z) /
     Σ sqrt(u z) - z_j`` on the longest prefix whose last bid is positive, with
     running sums: O(m log m), the sort.
   - *Otherwise*: false position (Illinois) on ``μ = λ^(-1/2)``, bracketed, until
     ``|Σ x_j(μ) - X| <= 1e-12 X`` (at most 200 evaluations; then scaled to sum to
     ``X`` exactly); each ``x_j(μ)`` piece by piece between kinks, by safeguarded
     Newton on ``U_j'^(-1/2)`` (exact in one step for one term) to 1e-12 relative,
     started from the host's bid at the previous μ. O(m) per evaluation
     (:mod:`p2pmarket.client.kkt`). It runs on the best ``K`` hosts, ``K`` doubling
     from 32 until the next host's ``U'(0)`` is at most the multiplier found
     (adding hosts only raises it: no host further down would get money; the
     next solve's bracket starts at the last multiplier).
6. **Hosts.** At most ``max_hosts`` hosts: the first ``max_hosts`` not dropped, in
   rank order; the optimum may use fewer.
7. **Minimums.** ``Min_jr`` (resolved on ``C_jr``) holds when ``floor(C_jr x w_r /
   (x w_r + y_jr W)) >= Min_jr``, i.e. ``x >= need_j = max_r ceil(Min_jr y_jr W /
   (w_r (C_jr - Min_jr)))``. Dropped at once: a host not offering a resource of the
   bundle (``not_offered``), with ``C_jr <= Min_jr`` or ``Min_jr > M_jr``
   (``capacity``), or with ``need_j > X`` (``budget``). Then, while a planned bid is
   short of its ``need_j``, the host furthest below (smallest bid / need) is dropped
   (``below_min``) and the plan recomputed.
8. **Integers.** Bids are floored, but a bid at a kink is rounded up (just below a
   kink the marginal utility is high); the micro-credits left go one each to the
   largest fractional parts (ties: the better ranked), so they sum exactly to
   ``X``. A bid of 0 is no bid. If even the best host's bid would round to
   nothing, it gets ``X``.

``predicted`` is rules 2 and 3 in integers at the planned bids (the host's per-tick
rounding of the spend can give a little less). From the buyer: ``plan_bundle([
HostTerms(node_id, {r: view.capacity}, {r: view.price}) ...], want_from_bids(bids),
budget, interval_s, max_hosts)`` with ``view = planning_view(quote, record, r)`` for
each divisible resource ``r`` of the bids. :func:`best_response` is the one-resource
form of before (weights and others' bids given directly).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from p2pmarket.auction.resources import DIVISIBLE, NEW_TERM, BidSpec, Quantity
from p2pmarket.client.kkt import INF, Curve, prefix_split, round_to_budget, water_fill
from p2pmarket.core.errors import P2PMarketError


class PlanError(P2PMarketError):
    """No plan possible for these hosts and this budget."""


@dataclass(frozen=True)
class Candidate:
    host_id: bytes
    weight: int   # the buyer's value of the host, e.g. its capacity
    price: int    # the others' bids y_j, micro-credits


@dataclass(frozen=True)
class HostTerms:
    """What the plan knows of a host: capacity (base units) and price (µcredits/s for
    the whole resource, every bid, root included) per resource type."""

    host_id: bytes
    capacity: Mapping[str, int]
    price: Mapping[str, int]
    preference: float = 1.0


@dataclass(frozen=True)
class Want:
    """The bundle: weight per bid key (ppm or any integers), min and max per divisible
    resource (base units, or a :class:`Quantity`, possibly a fraction of capacity)."""

    weights: Mapping[str, int]
    mins: Mapping[str, int | Quantity] = field(default_factory=dict)
    maxs: Mapping[str, int | Quantity] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan:
    bids: dict[bytes, int]                    # µcredits for the interval, sum = budget
    predicted: dict[bytes, dict[str, int]]    # what each host should allocate
    utility: float                            # rule 4, at the integer bids
    dropped: dict[bytes, str]                 # host -> not_offered/capacity/budget/below_min


def want_from_bids(bids: Mapping[str, BidSpec]) -> Want:
    """The :class:`Want` of bids as ``create_account`` takes them (fields left out
    are a new bid's: weight 1, min 0, max all)."""
    return Want({k: NEW_TERM.weight_ppm if s.weight_ppm is None else s.weight_ppm
                 for k, s in bids.items()},
                {k: s.min for k, s in bids.items() if s.ident is None and s.min is not None},
                {k: s.max for k, s in bids.items() if s.ident is None and s.max is not None})


def _resolve(q: int | Quantity | None, capacity: int, default: int) -> int:
    if q is None:
        return default
    return q.resolve(capacity) if isinstance(q, Quantity) else q


@dataclass(frozen=True)
class _Host:
    """One host, prepared: per modelled resource (r, C, y, w, max, u, z, kink)."""

    terms: HostTerms
    rows: list[tuple[str, int, int, int, int, float, float, float]]
    curve: Curve

    def utility(self, x: float) -> float:
        return sum(u * min(x / (x + z), mx / c) for _r, c, _y, _w, mx, u, z, _k in self.rows)


@dataclass(frozen=True)
class _Bundle:
    """The want, resolved once: per modelled resource (name, weight, min, max)."""

    total_w: int
    interval_s: int
    res: tuple[tuple[str, int, int | Quantity | None, int | Quantity | None], ...]
    cref: dict[str, int]      # filled by _screen: the largest capacity per resource


def _bundle(hosts: Sequence[HostTerms], want: Want, interval_s: int) -> _Bundle:
    total_w = sum(want.weights.values())
    modelled = sorted(r for r, w in want.weights.items() if r in DIVISIBLE and w > 0)
    for r in DIVISIBLE:
        if want.weights.get(r, 0) <= 0 and _resolve(want.mins.get(r), 1, 0) > 0:
            raise PlanError(f"{r} has a min but no weight: no money goes to it", r)
    if total_w <= 0 or not modelled:
        raise PlanError("the bids give no weight to a divisible resource")
    return _Bundle(total_w, interval_s,
                   tuple((r, want.weights[r], want.mins.get(r), want.maxs.get(r))
                         for r in modelled), {})


def _screen(hosts: Sequence[HostTerms], bundle: _Bundle, budget: int,
            dropped: dict[bytes, str]) -> tuple[list[float], list[int], list[float]]:
    """Rule 5's ranking key ``U_j'(0)``, rule 7's ``need_j`` and, for a host with one
    price (every ``z_jr`` equal, no kink), that ``z_j`` (else NaN), per host, column
    by column; hosts dropped at once get key -1."""
    total_w, t = bundle.total_w, bundle.interval_s
    n = len(hosts)
    g0s, needs, reasons, simple = [0.0] * n, [0] * n, [""] * n, [True] * n
    r0, w0 = bundle.res[0][0], bundle.res[0][1]
    prices0 = [h.price.get(r0, 0) for h in hosts]
    for r, w, lo_q, hi_q in bundle.res:   # column by column: comprehensions are fast
        caps = [h.capacity.get(r, 0) for h in hosts]
        bundle.cref[r] = max(caps, default=0)
        # u/z = (w / W / Cref) π C / (p T W / w) = k_r π C / p, k_r = w² / (W² Cref T)
        k = w * w / (total_w * total_w * max(1, bundle.cref[r]) * t)
        prices = prices0 if r == r0 else [h.price.get(r, 0) for h in hosts]
        if n and (min(caps) <= 0 or min(prices) <= 0):
            for i in [i for i, c, p in zip(range(n), caps, prices, strict=True)
                      if c <= 0 or p <= 0]:
                reasons[i] = reasons[i] or "not_offered"
        if r != r0:
            simple = [s and p * w0 == q * w
                      for s, p, q in zip(simple, prices, prices0, strict=True)]
        if lo_q is None and hi_q is None:
            g0s = [g + k * c / p if c > 0 and p > 0 else g
                   for g, c, p in zip(g0s, caps, prices, strict=True)]
            continue
        for i in range(n):
            c, p = caps[i], prices[i]
            if c <= 0 or p <= 0:
                continue
            lo, hi = _resolve(lo_q, c, 0), min(c, _resolve(hi_q, c, c))
            if lo > 0:
                if lo >= c or lo > hi:
                    reasons[i] = reasons[i] or "capacity"
                    continue
                needs[i] = max(needs[i], -(-lo * p * t * total_w // (w * (c - lo))))
            if hi < c:
                simple[i] = False
            if hi > 0:
                g0s[i] += k * c / p
    if max(needs, default=0) > budget:
        reasons = [why or ("budget" if need > budget else "")
                   for why, need in zip(reasons, needs, strict=True)]
    scale = t * total_w / w0
    if not any(reasons):   # the usual case
        keys = [g0 * h.preference for h, g0 in zip(hosts, g0s, strict=True)]
        return keys, needs, [p0 * scale if one else math.nan
                             for p0, one in zip(prices0, simple, strict=True)]
    for h, why in zip(hosts, reasons, strict=True):
        if why:
            dropped[h.host_id] = why
    keys = [-1.0 if why else g0 * h.preference
            for h, g0, why in zip(hosts, g0s, reasons, strict=True)]
    zs = [p0 * scale if one and not why else math.nan
          for p0, one, why in zip(prices0, simple, reasons, strict=True)]
    return keys, needs, zs


def _closed(pool: Sequence[int], limit: int, keys: Sequence[float], zs: Sequence[float],
            budget: int) -> tuple[list[float], float] | None:
    """The closed form on ``pool`` (ranked) if every host it reaches has one price:
    the bids of the first hosts (as many as get money) and λ; else None."""
    us, zz = [], []
    sum_z = sum_r = 0.0
    for i in pool[:limit]:
        z = zs[i]
        if z != z:   # NaN: not one price
            return None
        u = keys[i] * z
        us.append(u)
        zz.append(z)
        root = math.sqrt(u * z)
        sum_z += z
        sum_r += root
        if root * (budget + sum_z) / sum_r - z <= 0:
            break
    return prefix_split(us, zz, budget)


def _build(h: HostTerms, bundle: _Bundle, g0: float) -> _Host:
    rows = []
    total_w = bundle.total_w
    for r, w, _lo, hi_q in bundle.res:
        c, y = h.capacity[r], h.price[r] * bundle.interval_s
        hi = min(c, _resolve(hi_q, c, c))
        z = y * total_w / w
        kink = INF if hi >= c else z * hi / (c - hi)
        rows.append((r, c, y, w, hi, w / total_w / bundle.cref[r] * h.preference * c, z, kink))
    return _Host(h, rows, Curve.of([(u, z, k) for *_x, u, z, k in rows], g0))


def _rank(keys: Sequence[float], ids: Sequence[bytes], among: Sequence[int]) -> list[int]:
    """``among`` by key, descending, ties by id: a float sort, then equal runs by id."""
    order = sorted(among, key=keys.__getitem__, reverse=True)
    i, n = 0, len(order)
    if len({keys[k] for k in order}) == n:
        return order
    while i < n:
        j = i + 1
        while j < n and keys[order[j]] == keys[order[i]]:
            j += 1
        if j - i > 1:
            order[i:j] = sorted(order[i:j], key=ids.__getitem__)
        i = j
    return order


def predicted_allocation(h: HostTerms, want: Want, bid: int, interval_s: int
                         ) -> dict[str, int]:
    """Rules 2 and 3 in integers: what host ``h`` should allocate for ``bid``."""
    return _predict(h, _bundle([h], want, interval_s), bid)


def _predict(h: HostTerms, bundle: _Bundle, bid: int) -> dict[str, int]:
    out = {}
    total_w, t = bundle.total_w, bundle.interval_s
    for r, w, _lo, hi_q in bundle.res:
        c, y = h.capacity.get(r, 0), h.price.get(r, 0) * t
        share = c * bid * w // (bid * w + y * total_w) if c > 0 and y > 0 else 0
        out[r] = share if hi_q is None else min(share, c, _resolve(hi_q, c, c))
    return out


def _solve(active: Sequence[_Host], budget: int, lam_hint: float = 0.0
           ) -> tuple[list[int], float]:
    """Rules 5 (general case) and 8 on ``active``: integer bids and the multiplier
    (``lam_hint``: the multiplier on fewer of these hosts, a lower bound)."""
    curves = [h.curve for h in active]
    xs, lam = water_fill(curves, budget, 1.0 / math.sqrt(lam_hint) if lam_hint > 0 else 0.0)
    scale = budget / max(sum(xs), 1e-300)
    return round_to_budget(xs, budget, [c.at_kink(x * scale)
                                        for c, x in zip(curves, xs, strict=True)]), lam


def plan_bundle(hosts: Sequence[HostTerms], want: Want, budget: int, interval_s: int,
                max_hosts: int) -> Plan:
    """Best response (rules 1 to 8 above) of ``budget`` µcredits over ``interval_s``.

    The general case is solved on the best ``K`` hosts in rank order, ``K`` doubling
    from 32 (at most ``max_hosts``) until the next host's ``U'(0)`` is at most the
    multiplier found: adding hosts only raises the multiplier, so no host further
    down would get money (KKT holds for all).
    """
    if budget <= 0:
        raise PlanError("budget must be positive", budget)
    if interval_s <= 0 or max_hosts <= 0:
        raise PlanError("interval and number of hosts must be positive",
                        {"interval_s": interval_s, "max_hosts": max_hosts})
    bundle = _bundle(hosts, want, interval_s)
    dropped: dict[bytes, str] = {}
    keys, needs, zs = _screen(hosts, bundle, budget, dropped)
    pool = _rank(keys, [h.host_id for h in hosts],
                 [i for i, k in enumerate(keys) if k >= 0])
    built: dict[int, _Host] = {}

    def host(i: int) -> _Host:
        if i not in built:
            built[i] = _build(hosts[i], bundle, keys[i])
        return built[i]

    size = min(32, max_hosts)
    lam = 0.0
    for _ in range(4 * len(hosts) + 64):
        limit = min(max_hosts, len(pool))
        if limit == 0:
            break
        closed = _closed(pool, limit, keys, zs, budget)
        if closed is not None:   # one price per host: no kinks, plain rounding
            chosen = pool[:len(closed[0])]
            ints = round_to_budget(closed[0], budget)
        else:
            size = min(size, limit)
            chosen = pool[:size]
            ints, lam = _solve([host(i) for i in chosen], budget, lam)
            if size < limit and keys[pool[size]] > lam:
                size *= 2   # (λ only rises with more hosts: the next solve starts there)
                continue
        short = [(b / needs[i], k) for k, (i, b) in enumerate(zip(chosen, ints, strict=True))
                 if 0 < b < needs[i]]
        if short:
            gone = pool.pop(min(short)[1])
            dropped[hosts[gone].host_id] = "below_min"
            continue
        picked = [(i, b) for i, b in zip(chosen, ints, strict=True) if b > 0]
        return Plan({hosts[i].host_id: b for i, b in picked},
                    {hosts[i].host_id: _predict(hosts[i], bundle, b) for i, b in picked},
                    sum(keys[i] * zs[i] * b / (b + zs[i]) if closed is not None
                        else host(i).utility(b) for i, b in picked), dropped)
    raise PlanError("no host can meet the bids' minimums within the budget",
                    {"dropped": len(dropped)})


def best_response(candidates: list[Candidate], budget: int) -> dict[bytes, int]:
    """Split ``budget`` across ``candidates`` (one resource: weight w_j, others' bids
    y_j); returns host id -> bid (all > 0). Rules 5 and 8 on ``u = w``, ``z = y``."""
    if budget <= 0:
        raise PlanError("budget must be positive", budget)
    usable = [c for c in candidates if c.weight > 0 and c.price > 0]
    if not usable:
        raise PlanError("no host with positive capacity and price")
    order = _rank([c.weight / c.price for c in usable], [c.host_id for c in usable],
                  range(len(usable)))
    ranked = [usable[i] for i in order]
    xs, _lam = prefix_split([float(c.weight) for c in ranked],
                             [float(c.price) for c in ranked], budget)
    ints = round_to_budget(xs, budget)
    return {c.host_id: x for c, x in zip(ranked, ints, strict=True) if x > 0}


__all__ = ["Candidate", "HostTerms", "Plan", "PlanError", "Want", "best_response",
           "plan_bundle", "predicted_allocation", "want_from_bids"]
