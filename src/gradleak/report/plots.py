"""Small inline SVG line plots (no plotting library), one line per series, with error bars."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["Point", "line_plot"]

# (x, y, half-width of the error bar or None)
Point = tuple[float, float, float | None]

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
_W, _H = 600, 320
_LEFT, _RIGHT, _TOP, _BOTTOM = 62, 20, 34, 48
#: The legend sits below the plot, one full-width line per series, so long labels fit.
_LEGEND_LINE = 18
_LEGEND_CHARS = 80


def line_plot(
    series: Mapping[str, Sequence[Point]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    log_x: bool = True,
    log_y: bool = False,
    y_range: tuple[float, float] | None = None,
) -> str:
    """Returns an ``<svg>`` element plotting each series as a line with error bars.

    Args:
        series: Label -> points ``(x, y, error)``; points with a None or non-positive (log
            axes) coordinate are left out.
        title: Plot title.
        x_label: X axis label.
        y_label: Y axis label.
        log_x: Base-2 logarithmic x axis (batch sizes).
        log_y: Base-10 logarithmic y axis (times).
        y_range: Fixed y range; the data's range when None.
    """
    clean = {
        label: sorted(p for p in points if _usable(p, log_x, log_y))
        for label, points in series.items()
    }
    clean = {label: points for label, points in clean.items() if points}
    height = _H + _LEGEND_LINE * len(clean)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" '
        f'viewBox="0 0 {_W} {height}" role="img" class="plot">',
        f'<text x="{_W / 2:.0f}" y="18" text-anchor="middle" class="title">{escape(title)}</text>',
    ]
    if not clean:
        parts.append(
            f'<text x="{_W / 2:.0f}" y="{_H / 2:.0f}" text-anchor="middle">no data</text></svg>'
        )
        return "".join(parts)
    xs = sorted({p[0] for points in clean.values() for p in points})
    fx = _axis(xs[0], xs[-1], _LEFT, _W - _RIGHT, log=log_x, base=2)
    if y_range is None:
        ys = [v for points in clean.values() for p in points for v in _extent(p)]
        y_range = (min(ys), max(ys))
    fy = _axis(y_range[0], y_range[1], _H - _BOTTOM, _TOP, log=log_y, base=10)
    parts += _frame(xs, y_range, fx, fy, log_y=log_y, x_label=x_label, y_label=y_label)
    for i, (label, points) in enumerate(clean.items()):
        parts += _series(points, fx, fy, _PALETTE[i % len(_PALETTE)], label, i, log_y=log_y)
    parts.append("</svg>")
    return "".join(parts)


def _usable(point: Point, log_x: bool, log_y: bool) -> bool:
    x, y = point[0], point[1]
    if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
        return False
    return not ((log_x and x <= 0) or (log_y and y <= 0))


def _extent(point: Point) -> tuple[float, float]:
    err = point[2] or 0.0
    return point[1] - err, point[1] + err


def _axis(low: float, high: float, start: float, end: float, *, log: bool, base: float):
    """Returns a function mapping data values to pixels between ``start`` and ``end``."""
    if log:
        low, high = math.log(max(low, 1e-12), base), math.log(max(high, 1e-12), base)
    if high - low < 1e-12:
        low, high = low - 1, high + 1
    pad = (high - low) * 0.06

    def scale(value: float) -> float:
        v = math.log(max(value, 1e-12), base) if log else value
        return start + (v - low + pad) / (high - low + 2 * pad) * (end - start)

    return scale


def _ticks(low: float, high: float, *, log: bool) -> list[float]:
    if log:
        first, last = (
            math.floor(math.log10(max(low, 1e-12))),
            math.ceil(math.log10(max(high, 1e-12))),
        )
        return [
            10.0**e for e in range(first, last + 1) if low / 1.0001 <= 10.0**e <= high * 1.0001
        ] or [low, high]
    span = high - low or 1.0
    step = 10 ** math.floor(math.log10(span / 4))
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= 6:
            step *= factor
            break
    start = math.ceil(low / step) * step
    return [start + i * step for i in range(int((high - start) / step + 1e-9) + 1)]


def _frame(xs, y_range, fx, fy, *, log_y: bool, x_label: str, y_label: str) -> list[str]:
    x0, x1, y0, y1 = _LEFT, _W - _RIGHT, _H - _BOTTOM, _TOP
    parts = [f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" class="frame"/>']
    for x in xs:
        px = fx(x)
        parts.append(
            f'<line x1="{px:.1f}" y1="{y0}" x2="{px:.1f}" y2="{y0 + 4}" class="tick"/>'
            f'<text x="{px:.1f}" y="{y0 + 17}" text-anchor="middle">{_num(x)}</text>'
        )
    for y in _ticks(*y_range, log=log_y):
        py = fy(y)
        parts.append(
            f'<line x1="{x0}" y1="{py:.1f}" x2="{x1}" y2="{py:.1f}" class="grid"/>'
            f'<text x="{x0 - 6}" y="{py + 4:.1f}" text-anchor="end">{_num(y)}</text>'
        )
    parts.append(
        f'<text x="{(x0 + x1) / 2:.0f}" y="{_H - 10}" text-anchor="middle">{escape(x_label)}</text>'
    )
    parts.append(
        f'<text x="16" y="{(y0 + y1) / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 16 {(y0 + y1) / 2:.0f})">{escape(y_label)}</text>'
    )
    return parts


def _series(points, fx, fy, color: str, label: str, index: int, *, log_y: bool) -> list[str]:
    path = " ".join(
        f"{'M' if i == 0 else 'L'}{fx(x):.1f},{fy(y):.1f}" for i, (x, y, _) in enumerate(points)
    )
    parts = [f'<path d="{path}" stroke="{color}" fill="none" stroke-width="2"/>']
    for x, y, err in points:
        px, py = fx(x), fy(y)
        if err:
            low = fy(max(y - err, 1e-12) if log_y else y - err)
            parts.append(
                f'<line x1="{px:.1f}" y1="{low:.1f}" x2="{px:.1f}" y2="{fy(y + err):.1f}" '
                f'stroke="{color}" stroke-width="1.5"/>'
            )
        parts.append(
            f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3.5" fill="{color}">'
            f"<title>{escape(label)}: {_num(x)} -&gt; {y:.3g}</title></circle>"
        )
    ly = _H + 12 + _LEGEND_LINE * index
    parts.append(
        f'<line x1="{_LEFT}" y1="{ly - 4}" x2="{_LEFT + 18}" y2="{ly - 4}" '
        f'stroke="{color}" stroke-width="3"/>'
        f'<text x="{_LEFT + 24}" y="{ly}" class="legend">{escape(_short(label))}</text>'
    )
    return parts


def _short(text: str, width: int = _LEGEND_CHARS) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _num(value: float) -> str:
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}"
