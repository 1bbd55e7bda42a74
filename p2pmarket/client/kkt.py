"""The numeric core of the best response, pure: a budget over concave curves (KKT).

Each host is a :class:`Curve` ``U(x) = Σ_t u_t min(x / (x + z_t), m_t)``: a sum of
proportional-share terms, each capped at its *kink* ``k_t`` (where ``x / (x + z_t)``
reaches ``m_t``). ``U`` is concave and non-decreasing; ``U'(x) = Σ_{t: k_t > x} u_t z_t
/ (x + z_t)^2`` is decreasing, with downward jumps at the kinks. Maximising ``Σ_j
U_j(x_j)`` with ``Σ_j x_j = X``, ``x_j >= 0`` (the budget spent whole): there is a
multiplier ``λ`` with ``x_j = 0`` where ``U_j'(0) <= λ`` and ``x_j`` where ``U_j'``
passes ``λ`` elsewhere (on a piece, or at a kink ``U_j'`` jumps over).

- :func:`prefix_split`: one term per curve, no kink: Feldman, Lai, Zhang's closed
  form over the prefixes sorted by ``u/z``, with running sums, O(m).
- :func:`water_fill`: the general case, the multiplier by false position on ``μ =
  λ^-1/2`` (``x_j`` is nearly linear in μ: exactly, for one term); each
  :meth:`Curve.bid_at` piece by piece between the kinks, by safeguarded Newton on
  ``U'^-1/2`` to 1e-12 relative (exact in one step for one term). O(m) per step.
- :func:`round_to_budget`: integers summing exactly to the budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

INF = math.inf


@dataclass(frozen=True)
class Curve:
    """One host's utility: terms ``(u z, z, kink)`` (kink > 0; ``INF``: uncapped),
    the finite kinks ascending, and ``U'(0)``."""

    terms: tuple[tuple[float, float, float], ...]
    kinks: tuple[float, ...]
    g0: float

    @classmethod
    def of(cls, parts: Iterable[tuple[float, float, float]], g0: float | None = None
           ) -> Curve:
        """From ``(u, z, kink)`` per term; a term with kink 0 is worth nothing.
        ``g0`` overrides ``U'(0)`` (a ranking key computed elsewhere)."""
        terms = tuple((u * z, z, k) for u, z, k in parts if k > 0)
        kinks = tuple(sorted({k for _c, _z, k in terms if k < INF}))
        return cls(terms, kinks, sum(c / (z * z) for c, z, _k in terms) if g0 is None else g0)

    @property
    def saturation(self) -> float:
        """The bid past which nothing more is worth anything (``INF`` if uncapped)."""
        return max((k for _c, _z, k in self.terms), default=0.0)

    def at_kink(self, x: float) -> bool:
        return any(abs(x - k) <= 1e-9 * max(1.0, k) for k in self.kinks)

    def bid_at(self, mu: float, start: float = -1.0) -> float:
        """``x`` where ``U'`` passes ``λ = μ^-2`` (``start``: a guess, e.g. the answer
        at a nearby μ, where Newton begins if it is inside the bracket)."""
        lam = 1.0 / (mu * mu)
        if self.g0 <= lam:
            return 0.0
        cz = self.terms
        if not self.kinks:
            return _piece([c for c, _z, _k in cz], [z for _c, z, _k in cz], mu, 0.0, INF,
                          start)
        lo = 0.0
        for k in self.kinks:
            left = sum(c / (k + z) ** 2 for c, z, kk in cz if kk > lo)
            if left <= lam:
                return _piece([c for c, _z, kk in cz if kk > lo],
                              [z for _c, z, kk in cz if kk > lo], mu, lo, k, start)
            if sum(c / (k + z) ** 2 for c, z, kk in cz if kk > k) <= lam:
                return k
            lo = k
        return _piece([c for c, _z, kk in cz if kk > lo], [z for _c, z, kk in cz if kk > lo],
                      mu, lo, INF, start)


def prefix_split(us: Sequence[float], zs: Sequence[float], budget: float
                 ) -> tuple[list[float], float]:
    """The closed form on curves ``u x / (x + z)`` sorted by u/z, descending, O(m):
    ``x_j = sqrt(u_j z_j) c - z_j``, ``c = (X + Σ z) / Σ sqrt(u z)`` over the longest
    prefix whose last bid is positive (running sums); and ``λ = c^-2``."""
    sum_z = sum_r = best_c = 0.0
    best_k = 0
    roots = []
    for u, z in zip(us, zs, strict=True):
        root = math.sqrt(u * z)
        sum_z += z
        sum_r += root
        c = (budget + sum_z) / sum_r
        if root * c - z <= 0:
            break
        roots.append(root)
        best_k, best_c = best_k + 1, c
    if best_k == 0:
        return [budget] + [0.0] * (len(us) - 1), 0.0
    return ([r * best_c - z for r, z in zip(roots, zs, strict=False)]
            + [0.0] * (len(us) - best_k), 1.0 / (best_c * best_c))


def _piece(cs: list[float], zs: list[float], mu: float, lo: float, hi: float,
           start: float = -1.0) -> float:
    """x in [lo, hi] with Σ c/(x+z)^2 = μ^-2 (safeguarded Newton on its ^-1/2,
    from ``start`` if it lies in the bracket)."""
    if len(cs) == 1:
        return min(max(mu * math.sqrt(cs[0]) - zs[0], lo), hi)
    root_a = math.sqrt(sum(cs))
    a, b = max(lo, mu * root_a - max(zs)), min(hi, mu * root_a - min(zs))
    if b <= a:
        return max(min(a, hi), lo)
    if a < start < b:
        x = start
    else:
        x = mu * root_a - sum(math.sqrt(c) * z for c, z in zip(cs, zs, strict=True)) / sum(
            math.sqrt(c) for c in cs)   # exact when every z is the same
        if not a < x < b:   # from the left: U'^-1/2 is concave, so Newton climbs to the root
            x = a
    for _ in range(60):
        f = f3 = 0.0
        for c, z in zip(cs, zs, strict=True):
            d = 1.0 / (x + z)
            f += c * d * d
            f3 += c * d * d * d
        psi = 1.0 / math.sqrt(f)
        if psi < mu:
            a = x
        else:
            b = x
        step = (mu - psi) * f * math.sqrt(f) / f3
        if abs(step) <= 1e-12 * max(1.0, x):
            return min(max(x + step, lo), hi)
        x += step
        if not a <= x <= b:
            x = 0.5 * (a + b)
    return x


def water_fill(hs: Sequence[Curve], budget: float, mu_hint: float = 0.0
               ) -> tuple[list[float], float]:
    """The bids maximising Σ U_j(x_j) with Σ x_j = ``budget``, and λ: false position
    (Illinois) on μ = λ^-1/2, bracketed, until |Σ x_j(μ) - X| <= 1e-12 X (at most 200
    steps), each host's Newton started from its bid at the previous μ. ``mu_hint``: a
    μ known to give at least the budget (the answer for a subset of ``hs``: more hosts
    only lower μ), the bracket's top. If every curve is capped everywhere and the
    budget passes all the kinks, the rest goes in proportion to the kinks (λ = 0)."""
    saturate = [h.saturation for h in hs]
    total_sat = sum(saturate)
    if total_sat <= budget:   # every host capped everywhere: the rest by the kinks' sizes
        extra = budget - total_sat
        return [s + extra * (s / total_sat if total_sat > 0 else 1 / len(hs))
                for s in saturate], 0.0
    guess = [-1.0] * len(hs)

    def total(mu: float) -> float:
        guess[:] = [h.bid_at(mu, g) for h, g in zip(hs, guess, strict=True)]
        return sum(guess)

    mu_a = 1 / math.sqrt(max(h.g0 for h in hs))
    s_a = 0.0
    mu_b = mu_hint if mu_hint > mu_a else 2 * mu_a
    s_b = total(mu_b)
    for _ in range(200):
        if s_b >= budget:
            break
        mu_a, s_a, mu_b = mu_b, s_b, mu_b * 2
        s_b = total(mu_b)
    side = 0
    mu = mu_b
    for _ in range(200):
        mu = mu_b - (s_b - budget) * (mu_b - mu_a) / (s_b - s_a)
        if not mu_a < mu < mu_b:
            mu = 0.5 * (mu_a + mu_b)
        s = total(mu)
        if abs(s - budget) <= 1e-12 * budget or mu_b - mu_a <= 1e-15 * mu_b:
            break
        if s < budget:
            mu_a, s_a = mu, s
            if side == -1:
                s_b = budget + (s_b - budget) / 2
            side = -1
        else:
            mu_b, s_b = mu, s
            if side == 1:
                s_a = budget - (budget - s_a) / 2
            side = 1
    return list(guess), 1.0 / (mu * mu)   # the bids at the last μ tried


def round_to_budget(xs: Sequence[float], budget: int, ups: Sequence[bool] = ()) -> list[int]:
    """Rule 8: integers summing exactly to ``budget``; a bid at a kink (``ups``) is
    rounded up, so it reaches the max (below a kink the marginal utility is high)."""
    xs = [max(0.0, x) for x in xs]
    total = sum(xs)
    if total <= 0:
        return [budget] + [0] * (len(xs) - 1)
    xs = [x * budget / total for x in xs]
    up = list(ups) or [False] * len(xs)
    ints = [min(budget, math.ceil(x) if u else math.floor(x)) for x, u in zip(xs, up, strict=True)]
    left = budget - sum(ints)
    order = sorted((i for i in range(len(xs)) if xs[i] > 0 and not up[i]),
                   key=lambda i: (ints[i] - xs[i], i))
    for i in order[:max(0, left)]:
        ints[i] += 1
    left = budget - sum(ints)
    while left < 0:   # the ceilings overshot: take from the largest bids
        i = max(range(len(ints)), key=lambda k: (ints[k], -k))
        take = min(-left, ints[i])
        ints[i] -= take
        left += take
    ints[0] += left   # float slack only
    return ints


__all__ = ["INF", "Curve", "prefix_split", "round_to_budget", "water_fill"]
