"""Server-side SVG line charts: coordinates computed here, drawn by a template.

No JavaScript and no inline styles (the CSP forbids both): the template emits plain
<svg> elements with classes from app.css (svg.chart .s0-.s3, .axis, .grid).
Missing values (None: nothing measured that day) break the line instead of
pretending to be zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 28, 14, 36


@dataclass
class Tick:
    x: float
    y: float
    label: str


@dataclass
class Series:
    label: str
    css: str
    segments: list[str]  # each a "x,y x,y ..." polyline points string
    dots: list[tuple[float, float]] = field(default_factory=list)
    legend_x: int = 0


@dataclass
class Chart:
    title: str
    width: int
    height: int
    left: int
    right_x: int
    top: int
    bottom_y: int
    series: list[Series]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    empty: bool


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    for step in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500,
                 1000, 2000, 5000, 10000, 100000):
        if value <= step:
            return float(step)
    return float(value)


def line_chart(
    title: str,
    days: list[date],
    series: list[tuple[str, list[float | None]]],
    *,
    y_max: float | None = None,
    y_format: str = "",
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Chart:
    """Lay out up to four series over the same days."""
    values = [v for _, vals in series for v in vals if v is not None]
    top_value = y_max if y_max is not None else _nice_max(max(values, default=0.0) * 1.05)
    plot_w = width - LEFT - RIGHT
    plot_h = height - TOP - BOTTOM
    n = max(len(days), 1)

    def x_at(i: int) -> float:
        return round(LEFT + (plot_w * i / (n - 1) if n > 1 else plot_w / 2), 1)

    def y_at(v: float) -> float:
        v = min(max(v, 0.0), top_value)
        return round(TOP + plot_h - plot_h * v / top_value, 1)

    laid_out = []
    legend_x = LEFT
    for idx, (label, vals) in enumerate(series[:4]):
        segments: list[str] = []
        current: list[str] = []
        dots: list[tuple[float, float]] = []
        for i, v in enumerate(vals):
            if v is None:
                if current:
                    segments.append(" ".join(current))
                current = []
                continue
            current.append(f"{x_at(i)},{y_at(v)}")
            dots.append((x_at(i), y_at(v)))
        if current:
            segments.append(" ".join(current))
        # A single point is a segment of one: draw it as a dot only.
        laid_out.append(Series(label, f"s{idx}", [s for s in segments if " " in s], dots,
                               legend_x=legend_x))
        # About 6 px per character at the chart's 11 px font, plus the swatch.
        legend_x += 36 + 6 * len(label)

    def y_label(v: float) -> str:
        return y_format.format(v) if y_format else f"{round(v, 3):g}"

    y_ticks = [Tick(LEFT - 6, y_at(top_value * k / 4), y_label(top_value * k / 4))
               for k in range(5)]
    step = max(1, round(n / 6))
    x_ticks = [Tick(x_at(i), height - BOTTOM + 14, d.strftime("%b %d"))
               for i, d in enumerate(days) if i % step == 0 or i == n - 1]
    return Chart(title=title, width=width, height=height, left=LEFT, right_x=width - RIGHT,
                 top=TOP, bottom_y=height - BOTTOM, series=laid_out, y_ticks=y_ticks,
                 x_ticks=x_ticks, empty=not values)
