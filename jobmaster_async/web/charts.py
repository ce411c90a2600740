"""Charts as inline SVG, drawn on the server: stacked bars per minute. No script needed to see
them; the page's script only turns their UTC time labels into the viewer's local time. Every text
is escaped; colours come from the stylesheet (classes), so dark and light themes apply."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from markupsafe import Markup, escape

__all__ = ("Series", "bar_chart")

WIDTH, HEIGHT = 640, 170
LEFT, RIGHT, TOP, BOTTOM = 34, 6, 10, 22


@dataclass(frozen=True)
class Series:
    """What one colour of the bars counts: history events of these reasons."""

    label: str
    reasons: tuple[str, ...]
    css: str


def _nice(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^n at least ``value``."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def _hhmm(minute: datetime) -> str:
    return minute.strftime("%H:%M")


def bar_chart(
    title: str,
    series: Sequence[Series],
    points: Sequence[tuple[datetime, Mapping[str, int]]],
    line: Series | None = None,
) -> Markup:
    """An SVG of ``points`` (minute, {reason: events}), one stacked bar per minute, and ``line``
    drawn over them."""
    stacks = [[sum(counts.get(r, 0) for r in s.reasons) for s in series] for _, counts in points]
    drawn = [sum(counts.get(r, 0) for r in line.reasons) for _, counts in points] if line is not None else []
    top = _nice(max([*(sum(stack) for stack in stacks), *drawn, 1]))
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    slot = inner_w / max(len(points), 1)
    bar = max(slot - 2, 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        'xmlns="http://www.w3.org/2000/svg">'
    ]
    for fraction in (0, 0.5, 1):
        y = TOP + inner_h * (1 - fraction)
        value = top * fraction
        label = f"{value:g}"
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 4}" y="{y + 3:.1f}" text-anchor="end">{escape(label)}</text>')
    for index, ((minute, _), stack) in enumerate(zip(points, stacks, strict=True)):
        x = LEFT + index * slot + (slot - bar) / 2
        told = [*zip(stack, series, strict=True), *([(drawn[index], line)] if line is not None else [])]
        described = ", ".join(f"{n} {s.label}" for n, s in told if n) or "none"
        parts.append(
            f'<g><title data-ts="{minute.isoformat()}" data-fmt="tip" data-text="{escape(described)}">'
            f"{_hhmm(minute)} UTC: {escape(described)}</title>"
        )
        # a transparent column, so the tooltip shows over empty minutes too
        parts.append(f'<rect class="hit" x="{x:.1f}" y="{TOP}" width="{bar:.1f}" height="{inner_h}"/>')
        y = TOP + inner_h
        for n, s in zip(stack, series, strict=True):
            if not n:
                continue
            height = inner_h * n / top
            y -= height
            parts.append(f'<rect class="{s.css}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{height:.1f}"/>')
        parts.append("</g>")
    if line is not None and points:
        coordinates = " ".join(
            f"{LEFT + index * slot + slot / 2:.1f},{TOP + inner_h * (1 - n / top):.1f}" for index, n in enumerate(drawn)
        )
        parts.append(f'<polyline class="line {line.css}" points="{coordinates}"/>')
    for index, (minute, _) in enumerate(points):
        if minute.minute % 15 == 0:
            x = LEFT + index * slot + slot / 2
            # a label near the right edge ends there, instead of being cut
            anchor = "end" if index >= len(points) - 3 else "middle"
            x = WIDTH - RIGHT if anchor == "end" else x
            parts.append(
                f'<text class="axis" x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="{anchor}" '
                f'data-ts="{minute.isoformat()}" data-fmt="hm">{_hhmm(minute)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))
