"""Inline SVG charts for the audit report: histograms and ROC curves, no plotting dependency and no network.

Plain SVG strings so the report stays one self-contained HTML file that renders identically offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

import numpy as np

WIDTH, HEIGHT, LEFT, BOTTOM, TOP, RIGHT = 640, 230, 44, 34, 12, 12
ROC_SIZE = 300
COLOURS = ("#4a7ab5", "#e08a2c", "#5a9e4b", "#9b59b6")


@dataclass(frozen=True)
class Frame:
    """The pixel geometry of one chart: an SVG of `width` x `height` with a plot area inside the margins."""

    width: int = WIDTH
    height: int = HEIGHT
    plot_w: float = WIDTH - LEFT - RIGHT

    @property
    def plot_h(self) -> float:
        return self.height - BOTTOM - TOP

    @property
    def axis_y(self) -> float:
        return TOP + self.plot_h

    def open(self, label: str, x_ticks: Sequence[tuple[float, str]], y_top: str, x_label: str = "") -> list[str]:
        """Opening tag, axes and tick labels; `x_ticks` are (pixel x, text)."""
        axis_y = self.axis_y
        parts = [f'<svg width="{self.width}" height="{self.height}" role="img" aria-label="{escape(label)}">']
        parts.append(f'<line x1="{LEFT}" y1="{axis_y}" x2="{LEFT + self.plot_w}" y2="{axis_y}" stroke="#444"/>')
        parts.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{axis_y}" stroke="#444"/>')
        for px, text in x_ticks:
            parts.append(
                f'<text x="{px:.1f}" y="{axis_y + 14}" font-size="11" text-anchor="middle">{escape(text)}</text>'
            )
        parts.append(f'<text x="{LEFT - 4}" y="{TOP + 10}" font-size="11" text-anchor="end">{escape(y_top)}</text>')
        if x_label:
            parts.append(
                f'<text x="{LEFT + self.plot_w / 2:.1f}" y="{self.height - 4}" font-size="11" '
                f'text-anchor="middle">{escape(x_label)}</text>'
            )
        return parts

    def marker(self, px: float, text: str, colour: str = "#c00") -> str:
        """A dashed vertical line across the plot with a label to its left."""
        return (
            f'<line x1="{px:.1f}" y1="{TOP}" x2="{px:.1f}" y2="{self.axis_y}" stroke="{colour}" stroke-width="2" '
            f'stroke-dasharray="4 3"/><text x="{px - 4:.1f}" y="{TOP + 10}" font-size="11" fill="{colour}" '
            f'text-anchor="end">{escape(text)}</text>'
        )


def histogram_svg(similarities: np.ndarray, threshold: float, *, bins: int = 50) -> str:
    """Histogram of raw similarities with the threshold as a red line (the audit's headline chart)."""
    values = np.asarray(similarities, dtype=np.float64)
    hi = 1.0
    lo = min(float(values.min()) if len(values) else threshold, threshold)
    lo = max(-1.0, min(np.floor(lo * 10) / 10, hi - 0.1))
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    return bars_svg(
        [float(e) for e in edges],
        [("similarity", [int(c) for c in counts])],
        marker=threshold,
        marker_label=f"threshold {threshold:g}",
        label="histogram of similarities",
    )


def bars_svg(
    edges: Sequence[float],
    series: Sequence[tuple[str, Sequence[int]]],
    *,
    marker: float | None = None,
    marker_label: str = "",
    x_label: str = "",
    label: str = "histogram",
    share: bool = False,
) -> str:
    """Histogram bars of one or more series over shared bin `edges` (overlaid, translucent when several).

    `share`: plot each series as the share of its own total, so sets of different sizes compare.
    """
    lo, hi = float(edges[0]), float(edges[-1])
    span = hi - lo if hi > lo else 1.0
    heights = [np.asarray(c, dtype=np.float64) / (max(sum(c), 1) if share else 1) for _, c in series]
    peak = max((float(h.max()) for h in heights if len(h)), default=0.0) or 1.0

    frame = Frame()

    def x(v: float) -> float:
        return LEFT + (v - lo) / span * frame.plot_w

    ticks = [(x(v), f"{v:.2f}") for v in np.linspace(lo, hi, 6)]
    parts = frame.open(label, ticks, f"{peak:.0%}" if share else f"{int(peak)}", x_label)
    opacity = 1.0 if len(series) == 1 else 0.55
    for (name, counts), h, colour in zip(series, heights, COLOURS, strict=False):
        for count, value, start, end in zip(counts, h, edges[:-1], edges[1:], strict=False):
            bar_h, bar_w = value / peak * frame.plot_h, max(x(end) - x(start) - 1, 0.5)
            parts.append(
                f'<rect x="{x(start):.1f}" y="{frame.axis_y - bar_h:.1f}" width="{bar_w:.1f}"'
                f' height="{bar_h:.1f}" fill="{colour}" fill-opacity="{opacity}"><title>{escape(name)} '
                f"{start:.3f}–{end:.3f}: {count}</title></rect>"
            )
    if marker is not None:
        parts.append(frame.marker(x(min(max(marker, lo), hi)), marker_label))
    if len(series) > 1:
        parts += _legend([name for name, _ in series])
    parts.append("</svg>")
    return "".join(parts)


def legend_at(names: Sequence[str], x: float, y: float, *, step: int = 16, font_size: int = 11) -> list[str]:
    """A colour swatch and name per series (colours in `COLOURS` order), one line every `step` pixels."""
    parts = []
    for i, (name, colour) in enumerate(zip(names, COLOURS, strict=False)):
        line_y = y + step * i
        parts.append(
            f'<rect x="{x}" y="{line_y - 9}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{x + 15}" y="{line_y}" font-size="{font_size}">{escape(name)}</text>'
        )
    return parts


def _legend(names: Sequence[str]) -> list[str]:
    parts = [
        f'<rect x="{WIDTH - RIGHT - 196}" y="{TOP}" width="190" height="{16 * len(names) + 4}" fill="#fff" '
        'fill-opacity="0.85"/>'
    ]
    return parts + legend_at(names, WIDTH - RIGHT - 190, TOP + 8)


def roc_svg(curves: dict[str, tuple[Sequence[float], Sequence[float]]], *, mark_fpr: float = 0.01) -> str:
    """ROC curves (FPR on x, TPR on y) with the chance diagonal and a dashed line at `mark_fpr`."""
    size = ROC_SIZE
    frame = Frame(height=size + TOP + BOTTOM, plot_w=size)

    def xy(fpr: float, tpr: float) -> tuple[float, float]:
        return LEFT + fpr * size, TOP + (1 - tpr) * size

    ticks = [(LEFT + v * size, f"{v:.1f}") for v in np.linspace(0, 1, 6)]
    parts = frame.open("ROC curves", ticks, "1", "FPR: holdout images called members")
    parts.append(f'<text x="{LEFT - 4}" y="{TOP + size}" font-size="11" text-anchor="end">0</text>')
    parts.append(
        f'<text x="12" y="{TOP + size / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 12 {TOP + size / 2})">TPR: members found</text>'
    )
    x0, y0 = xy(0, 0)
    x1, y1 = xy(1, 1)
    parts.append(f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y1}" stroke="#aaa" stroke-dasharray="3 3"/>')
    for (name, (fpr, tpr)), colour in zip(curves.items(), COLOURS, strict=False):
        points = " ".join(f"{px:.1f},{py:.1f}" for px, py in (xy(f, t) for f, t in zip(fpr, tpr, strict=True)))
        parts.append(
            f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2">'
            f"<title>{escape(name)}</title></polyline>"
        )
    parts.append(frame.marker(xy(mark_fpr, 0)[0], "", "#888"))
    legend_x = LEFT + size + 24
    parts.append(
        f'<line x1="{legend_x}" y1="{TOP + 14 + 18 * len(curves) - 4}" x2="{legend_x + 10}" '
        f'y2="{TOP + 14 + 18 * len(curves) - 4}" stroke="#888" stroke-width="2" stroke-dasharray="4 3"/>'
        f'<text x="{legend_x + 15}" y="{TOP + 14 + 18 * len(curves)}" font-size="12">FPR {mark_fpr:.0%}</text>'
    )
    parts += legend_at(list(curves), legend_x, TOP + 14, step=18, font_size=12)
    parts.append("</svg>")
    return "".join(parts)
