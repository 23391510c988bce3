"""Small inline-SVG charts for the report: lines over time and horizontal bars.

Our own few dozen lines instead of a plotting library: the report must open offline and
the demo must not download anything. Every text goes through `html.escape`; every
number is formatted, so the output is well-formed XML (the tests parse it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import TYPE_CHECKING, Final, final

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ["Bar", "Series", "bar_chart", "line_chart", "log_ticks", "nice_max"]

_W: Final = 460
_H: Final = 240
_LEFT: Final = 56
_RIGHT: Final = 12
_TOP: Final = 12
_BOTTOM: Final = 46
_AT_LEAST: Final = "\u25b2"  # an upward triangle, as drawn on lower-bound points
_FONT: Final = 'font-family="system-ui, sans-serif" font-size="11"'


@final
@dataclass(frozen=True, slots=True)
class Series:
    """One line: `points` are (x, y); drawn solid, `dashed` or `dotted`.

    `lower_bounds[i]` true marks point i as "at least" (an upward triangle): a value
    computed from requests that had not finished, so the truth may be higher.
    """

    label: str
    color: str
    points: Sequence[tuple[float, float]]
    dashed: bool = False
    dotted: bool = False
    lower_bounds: Sequence[bool] = ()

    @property
    def dash(self) -> str:
        """The SVG stroke-dasharray attribute, or nothing for a solid line."""
        if self.dotted:
            return ' stroke-dasharray="2 3"'
        return ' stroke-dasharray="5 3"' if self.dashed else ""


@final
@dataclass(frozen=True, slots=True)
class Bar:
    """One horizontal bar: a label, a value, its color and the text shown after it."""

    label: str
    value: float
    color: str
    note: str = ""


def nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 x 10^k at or above `value` (1 for values <= 0)."""
    if value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        candidate = step * 10.0**exp
        if candidate >= value * (1 - 1e-9):
            return candidate
    return 10.0 ** (exp + 1)  # pragma: no cover - the loop always returns


def log_ticks(low: float, high: float) -> list[float]:
    """Powers of ten from `low` to `high` (both > 0), inclusive."""
    start, stop = math.floor(math.log10(low)), math.ceil(math.log10(high))
    return [10.0**e for e in range(start, stop + 1)]


def _fmt(value: float) -> str:
    return f"{value:.1f}"


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:g} ms"
    return f"{value:g} s"


def _frame(title: str, body: list[str], legend: Sequence[Series], note: str = "") -> str:
    rows = (len(legend) + 1) // 2 + (1 if note else 0)
    height = _H + 18 * rows
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" '
        f'width="{_W}" height="{height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        *body,
    ]
    for i, s in enumerate(legend):
        # Two legend columns keep the charts short.
        x, y = _LEFT + (i % 2) * 200, _H + 18 * (i // 2) + 6
        parts.append(
            f'<line x1="{x}" y1="{y}" x2="{x + 24}" y2="{y}" stroke="{s.color}" '
            f'stroke-width="2"{s.dash}/>'
            f'<text x="{x + 30}" y="{y + 4}" {_FONT}>{escape(s.label)}</text>'
        )
    if note:
        y = _H + 18 * (rows - 1) + 6
        parts.append(f'<text x="{_LEFT}" y="{y + 4}" {_FONT}>{escape(note)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _axes(
    y_ticks: Sequence[tuple[float, str]],
    sy: Callable[[float], float],
    x_ticks: Sequence[tuple[float, float]],
) -> list[str]:
    """The plot area, horizontal grid lines with y labels, and x labels at (value, pixel)."""
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    body = [
        f'<rect x="{_LEFT}" y="{_TOP}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>'
    ]
    for value, text in y_ticks:
        y = _fmt(sy(value))
        body.append(
            f'<line x1="{_LEFT}" y1="{y}" x2="{_LEFT + pw}" y2="{y}" stroke="#e5e5e5"/>'
            f'<text x="{_LEFT - 4}" y="{y}" dy="4" text-anchor="end" {_FONT}>{escape(text)}</text>'
        )
    # Callers pick the x range so that its quarters are round numbers.
    body.extend(
        f'<text x="{_fmt(px)}" y="{_TOP + ph + 14}" text-anchor="middle" {_FONT}>{x:.0f}</text>'
        for x, px in x_ticks
    )
    return body


def _captions(x_label: str, y_label: str) -> list[str]:
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    return [
        f'<text x="{_LEFT + pw / 2}" y="{_TOP + ph + 30}" text-anchor="middle" {_FONT}>'
        f"{escape(x_label)}</text>",
        f'<text transform="translate(12 {_TOP + ph / 2}) rotate(-90)" text-anchor="middle" '
        f"{_FONT}>{escape(y_label)}</text>",
    ]


def line_chart(
    title: str,
    series: Sequence[Series],
    *,
    x_max: float,
    y_max: float,
    x_label: str,
    y_label: str,
    log_y: tuple[float, float] | None = None,
) -> str:
    """A line chart as an `<svg>` element.

    Args:
        title: the accessible title.
        series: the lines.
        x_max: the right end of the x axis (starts at 0).
        y_max: the top of a linear y axis (starts at 0); ignored when `log_y` is set.
        x_label: the x axis caption.
        y_label: the y axis caption.
        log_y: (low, high) of a logarithmic y axis in seconds, ticks at powers of ten.
    """
    pw, ph = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    x_max = max(x_max, 1e-9)

    def sx(x: float) -> float:
        return _LEFT + pw * min(max(x / x_max, 0.0), 1.0)

    sy: Callable[[float], float]
    if log_y is not None:
        low, high = math.log10(log_y[0]), math.log10(log_y[1])

        def sy(y: float) -> float:
            f = (math.log10(max(y, log_y[0])) - low) / max(high - low, 1e-9)
            return _TOP + ph * (1 - min(max(f, 0.0), 1.0))

        ticks = [(t, _seconds(t)) for t in log_ticks(*log_y)]
    else:
        y_max = max(y_max, 1e-9)

        def sy(y: float) -> float:
            return _TOP + ph * (1 - min(max(y / y_max, 0.0), 1.0))

        ticks = [(y_max * i / 4, f"{y_max * i / 4:g}") for i in range(5)]
    body = _axes(ticks, sy, [(x_max * i / 4, sx(x_max * i / 4)) for i in range(5)])
    body += _captions(x_label, y_label)
    for s in series:
        if not s.points:
            continue
        path = " ".join(f"{_fmt(sx(x))},{_fmt(sy(y))}" for x, y in s.points)
        body.append(
            f'<polyline points="{path}" fill="none" stroke="{s.color}" stroke-width="1.8"{s.dash}/>'
        )
        body.extend(
            _lower_bound_mark(sx(x), sy(y), s.color, y)
            for (x, y), bounded in zip(s.points, s.lower_bounds, strict=False)
            if bounded
        )
    bounded = any(any(s.lower_bounds) for s in series)
    note = f"{_AT_LEAST} at least: requests still waiting when the run ended" if bounded else ""
    return _frame(title, body, series, note)


def _lower_bound_mark(px: float, py: float, color: str, value: float) -> str:
    """An upward triangle on the point: the true value is this or higher."""
    return (
        f'<path class="lower-bound" d="M{_fmt(px)},{_fmt(py - 7)} l-4,7 h8 z" fill="{color}">'
        f"<title>at least {escape(_seconds(value))}</title></path>"
    )


def bar_chart(title: str, bars: Sequence[Bar], *, x_max: float) -> str:
    """Horizontal bars as an `<svg>` element, all on one scale from 0 to `x_max`."""
    row = 22
    height = _TOP + row * len(bars) + 8
    label_w = 110
    pw = _W - label_w - 180  # room for the note after the longest bar
    x_max = max(x_max, 1e-9)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" width="{_W}" '
        f'height="{height}" role="img" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
    ]
    for i, bar in enumerate(bars):
        y = _TOP + row * i
        w = pw * min(max(bar.value / x_max, 0.0), 1.0)
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end" {_FONT}>'
            f"{escape(bar.label)}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{_fmt(w)}" height="{row - 6}" '
            f'fill="{bar.color}"/>'
            f'<text x="{_fmt(label_w + w + 4)}" y="{y + 14}" {_FONT}>{escape(bar.note)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)
