"""Self-contained HTML audit report: no external URLs, images as data: URIs, every data string escaped.

Self-contained so it can be mailed or archived next to a dataset and still open offline; training images
appear only on explicit request because they are the private data the audit protects.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from html import escape
from typing import Any

import numpy as np
from PIL import Image

from synthgen.audit.summary import AuditRow

THUMBNAIL_SIZE = 96
MAX_SKIPPED_ROWS = 200

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.cards{display:flex;flex-wrap:wrap;gap:1em}
.card{border:1px solid #ddd;border-radius:6px;padding:.6em 1em;min-width:8em}
.card b{display:block;font-size:1.5em} .bad b{color:#b00}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:.8em}
figure{margin:0;border:1px solid #ddd;border-radius:6px;padding:.4em;font-size:.75em;width:210px}
figure.flagged{border-color:#b00} figcaption{word-break:break-all}
.note{background:#f6f6f6;border-left:4px solid #888;padding:.5em 1em}
"""


@dataclass
class GalleryItem:
    """A candidate shown in the report: its row, its thumbnail and (if allowed) its nearest training image."""

    row: AuditRow
    thumbnail: bytes
    train_thumbnail: bytes | None = None


def thumbnail_png(image: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """A small PNG of `image` (longest side `size`), small enough to embed many in one HTML file."""
    small = image.convert("RGB")
    small.thumbnail((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}" width="96">'


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def histogram_svg(similarities: np.ndarray, threshold: float, *, bins: int = 50) -> str:
    """Inline SVG histogram of similarities with the threshold as a red line (no plotting dependency)."""
    width, height, left, bottom, top = 640, 220, 40, 30, 10
    values = np.asarray(similarities, dtype=np.float64)
    hi = 1.0
    lo = min(float(values.min()) if len(values) else threshold, threshold)
    lo = max(-1.0, min(np.floor(lo * 10) / 10, hi - 0.1))
    counts, edges = np.histogram(np.clip(values, lo, hi), bins=bins, range=(lo, hi))
    peak = max(int(counts.max()) if len(counts) else 0, 1)
    plot_w, plot_h = width - left - 10, height - bottom - top

    def x(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="histogram of similarities">']
    for count, start, end in zip(counts, edges[:-1], edges[1:], strict=True):
        h = count / peak * plot_h
        bar_w = max(x(end) - x(start) - 1, 0.5)
        parts.append(
            f'<rect x="{x(start):.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" '
            f'height="{h:.1f}" fill="#4a7ab5"><title>{start:.3f}–{end:.3f}: {count}</title></rect>'
        )
    axis_y = top + plot_h
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="#444"/>')
    for tick in np.linspace(lo, hi, 6):
        parts.append(f'<text x="{x(tick):.1f}" y="{axis_y + 16}" font-size="11" text-anchor="middle">{tick:.2f}</text>')
    parts.append(f'<text x="4" y="{top + 10}" font-size="11">{peak}</text>')
    tx = x(min(max(threshold, lo), hi))
    parts.append(
        f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{axis_y}" stroke="#c00" stroke-width="2" '
        f'stroke-dasharray="4 3"/><text x="{tx - 4:.1f}" y="{top + 10}" font-size="11" fill="#c00" '
        f'text-anchor="end">threshold {threshold:g}</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _cards(summary: dict[str, Any]) -> str:
    flagged = "card bad" if summary["n_flagged"] else "card"
    cards = [
        ("card", "candidates", summary["n_candidates"]),
        (flagged, "flagged", f"{summary['n_flagged']} ({summary['flagged_rate']:.1%})"),
        ("card", "dropped", summary["n_dropped"]),
        ("card", "training images", summary["n_train"]),
        ("card", "max similarity", _fmt(summary["similarity"]["max"])),
        (
            "card",
            "skipped (train / candidates)",
            f"{summary['skipped']['train']['count']} / {summary['skipped']['candidates']['count']}",
        ),
    ]
    body = "".join(f'<div class="{c}">{escape(name)}<b>{escape(str(value))}</b></div>' for c, name, value in cards)
    return f'<div class="cards">{body}</div>'


def _label_table(per_label: dict[str, dict[str, Any]]) -> str:
    head = "<tr><th>label</th><th>n</th><th>flagged</th><th>mean</th><th>p95</th><th>max</th></tr>"
    rows = "".join(
        f"<tr><td>{escape(label) or '<i>(no label)</i>'}</td><td>{s['n']}</td><td>{s['n_flagged']}</td>"
        f"<td>{_fmt(s['mean'])}</td><td>{_fmt(s['p95'])}</td><td>{_fmt(s['max'])}</td></tr>"
        for label, s in per_label.items()
    )
    return f"<table>{head}{rows}</table>"


def _gallery(items: list[GalleryItem], n_flagged: int, show_training_images: bool) -> str:
    if not items:
        return "<p>No candidates.</p>"
    if n_flagged:
        intro = f"<p>{len(items)} of {n_flagged} flagged candidates, most similar first.</p>"
    else:
        intro = f"<p>No candidate was flagged. The {len(items)} most similar candidates:</p>"
    if not show_training_images:
        intro += (
            '<p class="note">Training images are hidden for privacy; only their keys are shown. '
            "Enable <code>show_training_images</code> to show them side by side.</p>"
        )
    figures = []
    for item in items:
        row = item.row
        images = _img(item.thumbnail, f"candidate {row.key}")
        if show_training_images:
            images += (
                _img(item.train_thumbnail, f"training {row.nearest_train_key}")
                if item.train_thumbnail
                else " <i>(training image not found)</i>"
            )
        status = "flagged" if row.flagged else "not flagged"
        status += ", dropped" if row.dropped else ""
        figures.append(
            f'<figure class="{"flagged" if row.flagged else ""}">{images}<figcaption>'
            f"<b>{row.similarity:.4f}</b> ({status})<br>candidate: {escape(row.key)}"
            f"{f' [{escape(row.label)}]' if row.label else ''}<br>"
            f"nearest training: {escape(row.nearest_train_key)}</figcaption></figure>"
        )
    return intro + f'<div class="grid">{"".join(figures)}</div>'


def _skipped_table(title: str, items: list[dict[str, str]]) -> str:
    if not items:
        return f"<h3>{escape(title)}: none</h3>"
    shown = items[:MAX_SKIPPED_ROWS]
    rows = "".join(f"<tr><td>{escape(i['key'])}</td><td>{escape(i['reason'])}</td></tr>" for i in shown)
    html = f"<h3>{escape(title)}: {len(items)}</h3><table><tr><th>key</th><th>reason</th></tr>{rows}</table>"
    if len(items) > len(shown):
        html += f"<p>… and {len(items) - len(shown)} more (see summary.json).</p>"
    return html


def render_report(
    summary: dict[str, Any],
    similarities: np.ndarray,
    items: list[GalleryItem],
    *,
    show_training_images: bool = False,
) -> str:
    """The whole report as one HTML string (numbers from `summary`, so report and JSON always agree)."""
    skipped = summary["skipped"]
    train = summary["train"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>synthgen memorization audit</title>
<style>{_CSS}</style></head><body>
<h1>Memorization audit</h1>
<p>Every candidate was compared with its nearest training image using the <b>{escape(summary["embedder"])}</b>
embedder; candidates with similarity ≥ <b>{summary["threshold"]:g}</b> are flagged as possible copies.<br>
<i>{escape(summary["similarity_meaning"])}</i></p>
{_cards(summary)}
<h2>Similarity to the nearest training image</h2>
{histogram_svg(similarities, summary["threshold"])}
<h2>Per label</h2>
{_label_table(summary["per_label"])}
<h2>{"Flagged candidates" if summary["n_flagged"] else "Most similar candidates"}</h2>
{_gallery(items, summary["n_flagged"], show_training_images)}
<h2>Skipped items</h2>
{_skipped_table("Training", skipped["train"]["items"])}
{_skipped_table("Candidates", skipped["candidates"]["items"])}
<h2>Provenance</h2>
<table><tr><th>training data</th><td>{escape(str(train["description"]))}</td></tr>
<tr><th>training fingerprint</th><td><code>{escape(str(train["fingerprint"]))}</code></td></tr>
<tr><th>created</th><td>{escape(summary["created_at"])}</td></tr>
<tr><th>synthgen</th><td>{escape(summary["synthgen_version"])}</td></tr></table>
</body></html>
"""
