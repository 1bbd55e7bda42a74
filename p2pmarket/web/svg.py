"""Charts as SVG, drawn on the server, pure: a line chart with axes, ticks and a
legend (:func:`line_chart`), and a stacked area chart of shares (:func:`stacked_chart`,
for the accounts' allocation of a resource over time).

Times are µs since the epoch, labelled in UTC (``HH:MM`` within two days, else
``MM-DD``); values are floats, labelled by the ``fmt`` given. Every label goes through
:func:`~p2pmarket.web.html.esc`. Colours come from a fixed palette, in the order of the
series; the markup uses presentation attributes and classes only (no ``style``), so
the dashboard's Content-Security-Policy needs no inline styles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from p2pmarket.web.html import Safe, esc

PALETTE = ("#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04",
           "#db2777", "#4b5563", "#65a30d")
TIME_STEPS_S = (60, 300, 600, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400,
                2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400)
US = 1_000_000


@dataclass(frozen=True)
class Line:
    label: str
    points: tuple[tuple[int, float], ...]   # (t µs, value), oldest first


@dataclass(frozen=True)
class Frame:
    """Where the plot area sits in the picture and what it spans."""

    width: int
    height: int
    t0: int
    t1: int
    v0: float
    v1: float
    left: int = 70
    right: int = 14
    top: int = 30
    bottom: int = 26

    def x(self, t: int) -> float:
        span = max(1, self.t1 - self.t0)
        return self.left + (t - self.t0) / span * (self.width - self.left - self.right)

    def y(self, v: float) -> float:
        span = self.v1 - self.v0 or 1.0
        inner = self.height - self.top - self.bottom
        return self.top + inner - (v - self.v0) / span * inner


def clip(pts: Sequence[tuple[int, float]], t0: int, t1: int) -> tuple[tuple[int, float], ...]:
    """The points inside ``[t0, t1]``, led by the last one before ``t0`` moved to ``t0``
    (the value then held)."""
    before = [(t0, v) for t, v in pts if t < t0][-1:]
    return (*before, *((t, v) for t, v in pts if t0 <= t <= t1))


def nice_step(span: float, ticks: int = 5, least: float = 0.0) -> float:
    """A round step (1, 2 or 5 times a power of ten) giving about ``ticks`` ticks, at
    least ``least`` (1 for integer amounts: no two ticks with one label)."""
    if span <= 0:
        return max(1.0, least)
    raw = max(span / ticks, least)
    power = 10.0 ** math.floor(math.log10(raw))
    return next(float(m * power) for m in (1, 2, 5, 10) if m * power >= raw)


def value_range(values: Sequence[float], floor_zero: bool = True, least: float = 0.0
                ) -> tuple[float, float]:
    """Round bounds holding ``values``: from 0 unless the values sit far above it."""
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    if floor_zero and lo >= 0 and (lo <= hi / 2 or hi == 0):
        lo = 0.0
    if hi == lo:
        hi, lo = hi + max(1.0, abs(hi) * 0.1), (lo - max(1.0, abs(lo) * 0.1) if lo else 0.0)
    step = nice_step(hi - lo, least=least)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step


def value_ticks(v0: float, v1: float, least: float = 0.0) -> list[float]:
    step = nice_step(v1 - v0, least=least)
    first = math.ceil(v0 / step) * step
    n = round((v1 - first) / step)
    return [first + i * step for i in range(n + 1)]


def time_ticks(t0: int, t1: int, most: int = 7) -> list[int]:
    span_s = max(1, (t1 - t0) // US)
    step = next((s for s in TIME_STEPS_S if span_s / s <= most), TIME_STEPS_S[-1]) * US
    first = -(-t0 // step) * step
    return list(range(first, t1 + 1, step))


def time_label(t: int, span: int) -> str:
    moment = datetime.fromtimestamp(t / US, UTC)
    return moment.strftime("%H:%M" if span <= 2 * 86400 * US else "%m-%d")


def _axes(f: Frame, title: str, fmt: Callable[[float], str], least: float = 0.0
          ) -> list[str]:
    out = [f'<text class="chart-title" x="{f.left}" y="16">{esc(title)}</text>']
    for v in value_ticks(f.v0, f.v1, least):
        y = f.y(v)
        out.append(f'<line class="grid" x1="{f.left}" x2="{f.width - f.right}" '
                   f'y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        out.append(f'<text class="tick" x="{f.left - 6}" y="{y + 4:.1f}" '
                   f'text-anchor="end">{esc(fmt(v))}</text>')
    base = f.height - f.bottom
    for t in time_ticks(f.t0, f.t1):
        x = f.x(t)
        out.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{base}" '
                   f'y2="{base + 4}" stroke="#6b7280"/>')
        out.append(f'<text class="tick" x="{x:.1f}" y="{base + 17}" text-anchor="middle">'
                   f'{esc(time_label(t, f.t1 - f.t0))}</text>')
    out.append(f'<line class="axis" x1="{f.left}" x2="{f.width - f.right}" y1="{base}" '
               f'y2="{base}" stroke="#6b7280"/>')
    return out


def _legend(f: Frame, labels: Sequence[str]) -> list[str]:
    out, x = [], f.width - f.right
    for i, label in reversed(list(enumerate(labels))):
        text = label if len(label) <= 24 else label[:23] + "…"
        x -= 14 + 7 * len(text)
        colour = PALETTE[i % len(PALETTE)]
        out.append(f'<rect x="{x}" y="8" width="10" height="10" fill="{colour}"/>'
                   f'<text class="legend" x="{x + 13}" y="17">{esc(text)}</text>')
    return out


def _svg(f: Frame, title: str, body: list[str], css: str, data: str = "") -> Safe:
    return Safe(f'<svg class="{css}" xmlns="http://www.w3.org/2000/svg" role="img" '
                f'viewBox="0 0 {f.width} {f.height}" width="{f.width}" '
                f'height="{f.height}" aria-label="{esc(title)}"{data}>'
                f'<title>{esc(title)}</title>{"".join(body)}</svg>')


def _empty(f: Frame, title: str, css: str) -> Safe:
    return _svg(f, title, [f'<text class="chart-title" x="{f.left}" y="16">{esc(title)}</text>',
                           f'<text class="empty" x="{f.width / 2}" y="{f.height / 2}" '
                           'text-anchor="middle">no samples yet</text>'], css)


def line_chart(lines: Sequence[Line], t0: int, t1: int, title: str,
               fmt: Callable[[float], str] = lambda v: f"{v:g}", *, width: int = 640,
               height: int = 220, floor_zero: bool = True, least: float = 0.0) -> Safe:
    """Each line over ``[t0, t1]``; an empty chart says so. ``least``: the smallest
    step between value ticks (1 for integer amounts)."""
    lines = [Line(line.label, clip(line.points, t0, t1)) for line in lines]
    values = [v for line in lines for _, v in line.points]
    if not values:
        return _empty(Frame(width, height, t0, t1, 0, 1), title, "chart line-chart")
    f = Frame(width, height, t0, t1, *value_range(values, floor_zero, least))
    body = _axes(f, title, fmt, least)
    for i, line in enumerate(lines):
        if not line.points:
            continue
        colour = PALETTE[i % len(PALETTE)]
        pts = " ".join(f"{f.x(t):.1f},{f.y(v):.1f}" for t, v in line.points)
        if len(line.points) > 1:
            body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                        f'points="{pts}"/>')
        t, v = line.points[-1]
        body.append(f'<circle cx="{f.x(t):.1f}" cy="{f.y(v):.1f}" r="3" fill="{colour}"/>')
    body += _legend(f, [line.label for line in lines])
    last = lines[0].points[-1][1] if lines[0].points else ""
    return _svg(f, title, body, "chart line-chart", f' data-last="{esc(last)}"')


def stacked_chart(layers: Sequence[Line], t0: int, t1: int, title: str,
                  fmt: Callable[[float], str] = lambda v: f"{v:g}", *, top: float | None = None,
                  width: int = 640, height: int = 220) -> Safe:
    """The layers stacked (a layer without a point at a time counts 0 there), up to
    ``top`` (e.g. the whole resource) or the highest stack."""
    layers = [Line(layer.label, clip(layer.points, t0, t1)) for layer in layers]
    times = sorted({t for layer in layers for t, _ in layer.points})
    if not times:
        return _empty(Frame(width, height, t0, t1, 0, 1), title, "chart stacked-chart")
    at = [dict(layer.points) for layer in layers]
    sums = [0.0] * len(times)
    bands = []
    for values in at:
        low = list(sums)
        sums = [s + values.get(t, 0.0) for s, t in zip(sums, times, strict=True)]
        bands.append((low, list(sums)))
    f = Frame(width, height, t0, t1, 0.0, top if top is not None else value_range(sums)[1])
    body = _axes(f, title, fmt)
    for i, (low, high) in enumerate(bands):
        if len(times) == 1:   # one sample: a thin bar
            times2, low, high = [times[0], min(t1, times[0] + 60 * US)], low * 2, high * 2
        else:
            times2 = times
        upper = [f"{f.x(t):.1f},{f.y(v):.1f}" for t, v in zip(times2, high, strict=True)]
        lower = [f"{f.x(t):.1f},{f.y(v):.1f}" for t, v in zip(times2, low, strict=True)]
        body.append(f'<polygon fill="{PALETTE[i % len(PALETTE)]}" fill-opacity="0.75" '
                    f'stroke="none" points="{" ".join(upper + lower[::-1])}"/>')
    body += _legend(f, [layer.label for layer in layers])
    return _svg(f, title, body, "chart stacked-chart")


__all__ = [
    "PALETTE",
    "Frame",
    "Line",
    "clip",
    "line_chart",
    "nice_step",
    "stacked_chart",
    "time_ticks",
    "value_range",
    "value_ticks",
]
