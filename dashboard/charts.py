"""Inline SVG charts without a chart library: the geometry is computed here, and
templates/dashboard/_bar_chart.html draws it (rects, axis lines and text; colours come from
CSS classes, so nothing needs inline styles)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.utils.html import format_html_join
from django.utils.safestring import SafeString

WIDTH = 960
HEIGHT = 260
LEFT = 56  # room for the y labels
RIGHT = 12
TOP = 14
BOTTOM = 34  # room for the x labels
MAX_X_LABELS = 12
NICE_MULTIPLES = (1, 2, 3, 6, 12, 24, 48, 72, 168, 336, 720)  # of the bucket size
SERIES_CLASSES = 8  # .s0 … .s7 in app.css; the last one is "other"


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    width: float
    height: float
    series: int
    title: str


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True)
class Legend:
    series: int
    label: str
    total: float


@dataclass(frozen=True)
class BarChart:
    rects: list[Rect]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    legend: list[Legend]
    label: str  # for screen readers
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM

    @property
    def empty(self) -> bool:
        return not self.rects

    @property
    def bars_svg(self) -> SafeString:
        """The bars as SVG markup, every value escaped. Built here rather than in a template loop:
        a week per hour is over a thousand rects, which a template renders ten times slower."""
        return format_html_join(
            "",
            '<rect x="{}" y="{}" width="{}" height="{}" class="s{}"><title>{}</title></rect>',
            ((r.x, r.y, r.width, r.height, r.series, r.title) for r in self.rects),
        )


def compact(value: float) -> str:
    """1234 → 1.2k, 5600000 → 5.6M; small numbers as they are."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            text = f"{value / limit:.1f}".rstrip("0").rstrip(".")
            return text + suffix
    if value == int(value):
        return str(int(value))
    return f"{value:.1f}"


def nice_ticks(maximum: float, count: int = 4, *, whole: bool = False) -> list[float]:
    """0 and a few round steps (1, 2, 2.5 or 5 × 10ⁿ) up to at least `maximum`; `whole` keeps
    every step a whole number (for counts: no "2.5 requests")."""
    if maximum <= 0:
        return [0.0, 1.0]
    raw = maximum / count
    magnitude = 10 ** math.floor(math.log10(raw))
    steps = [m * magnitude for m in (1, 2, 2.5, 5, 10)]
    if whole:
        steps = [step for step in steps if step >= 1 and step == int(step)]
    step = next((step for step in steps if step >= raw), 1.0)
    ticks = [0.0]
    while ticks[-1] < maximum:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _label_indexes(buckets: Sequence[datetime]) -> list[int]:
    """The buckets that get an x label: at most MAX_X_LABELS, on round times (every 3 hours,
    at midnight, every other day...), counted in UTC from the epoch."""
    if len(buckets) < 2:
        return list(range(len(buckets)))
    unit = int((buckets[1] - buckets[0]).total_seconds())
    multiple = next(
        (m for m in NICE_MULTIPLES if len(buckets) / m <= MAX_X_LABELS), NICE_MULTIPLES[-1]
    )
    period = unit * multiple
    chosen = [i for i, when in enumerate(buckets) if int(when.timestamp()) % period == 0]
    return chosen or [0]


def stacked_bars(
    buckets: Sequence[datetime],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    bucket_label: Callable[[datetime], str],
    axis_label: Callable[[datetime], str],
    unit: str,
    label: str,
    whole: bool = True,
) -> BarChart:
    """Bars per bucket, one stacked segment per series (values aligned with `buckets`); the
    axis shows whole numbers unless `whole` is off."""
    totals = [sum(values[i] for _, values in series) for i in range(len(buckets))]
    ticks = nice_ticks(max(totals, default=0), whole=whole)
    top_value = ticks[-1]
    plot_height = HEIGHT - BOTTOM - TOP
    plot_width = WIDTH - RIGHT - LEFT
    slot = plot_width / max(len(buckets), 1)
    bar = max(slot * 0.78, 1.0)
    rects: list[Rect] = []
    for i, when in enumerate(buckets):
        base = 0.0
        when_label = bucket_label(when)
        for index, (name, values) in enumerate(series):
            value = values[i]
            if not value:
                continue
            y_top = TOP + plot_height * (1 - (base + value) / top_value)
            y_bottom = TOP + plot_height * (1 - base / top_value)
            base += value
            rects.append(
                Rect(
                    x=round(LEFT + i * slot + (slot - bar) / 2, 1),
                    y=round(y_top, 1),
                    width=round(bar, 1),
                    height=round(max(y_bottom - y_top, 0.5), 1),
                    series=min(index, SERIES_CLASSES - 1),
                    title=f"{when_label} · {name}: {compact(value)} {unit}",
                )
            )
    y_ticks = [Tick(round(TOP + plot_height * (1 - t / top_value), 1), compact(t)) for t in ticks]
    x_ticks = [
        Tick(round(LEFT + i * slot + slot / 2, 1), axis_label(buckets[i]))
        for i in _label_indexes(buckets)
    ]
    legend = [
        Legend(min(index, SERIES_CLASSES - 1), name, sum(values))
        for index, (name, values) in enumerate(series)
    ]
    return BarChart(rects=rects, y_ticks=y_ticks, x_ticks=x_ticks, legend=legend, label=label)
