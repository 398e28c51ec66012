"""Self-contained HTML audit report: no external URLs, images as data: URIs, every data string escaped.

Self-contained so it can be mailed or archived next to a dataset and still open offline; training images
appear only on explicit request because they are the private data the audit protects.
"""

from __future__ import annotations

from html import escape
from typing import Any

import numpy as np

from synthgen.audit.report.gallery import GalleryItem, gallery_html, img_tag, thumbnail_png
from synthgen.audit.report.plots import bars_svg, histogram_svg, roc_svg

__all__ = ["CSS", "GalleryItem", "img_tag", "render_report", "thumbnail_png"]

MAX_SKIPPED_ROWS = 200

CSS = """
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
.hidden{display:inline-flex;align-items:center;justify-content:center;width:96px;height:96px;vertical-align:top;
 background:repeating-linear-gradient(45deg,#eee,#eee 6px,#f8f8f8 6px,#f8f8f8 12px);color:#666;text-align:center}
dt{font-weight:bold;margin-top:.5em} dd{margin-left:1.2em}
.why{font-weight:600} .where{color:#555} .why,.where{word-break:normal;overflow-wrap:anywhere}
"""


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


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


def _skipped_table(title: str, items: list[dict[str, str]]) -> str:
    if not items:
        return f"<h3>{escape(title)}: none</h3>"
    shown = items[:MAX_SKIPPED_ROWS]
    rows = "".join(f"<tr><td>{escape(i['key'])}</td><td>{escape(i['reason'])}</td></tr>" for i in shown)
    html = f"<h3>{escape(title)}: {len(items)}</h3><table><tr><th>key</th><th>reason</th></tr>{rows}</table>"
    if len(items) > len(shown):
        html += f"<p>… and {len(items) - len(shown)} more (see summary.json).</p>"
    return html


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _metrics_cards(m: dict[str, Any]) -> str:
    share = m.get("holdout") or {}
    copying = m.get("data_copying") or {}
    auth = m["authenticity"]
    ci = share.get("ci95") or [None, None]
    cards = [
        (
            "holdout share (ideal 0.5)",
            f"{_fmt(share.get('share_nearer_train'), 3)} [{_fmt(ci[0], 2)}, {_fmt(ci[1], 2)}]",
        ),
        ("C_T (≪ 0: copying)", _fmt(copying.get("C_T"), 2)),
        ("authentic (holdout)", f"{_pct(auth['share_authentic'])} ({_pct(auth['holdout_share_authentic'])})"),
        ("DCR p5 ratio (ideal ≈ 1)", _fmt(m["dcr"]["p5_ratio"], 3)),
        ("NN similarity p95", _fmt(m["nn_similarity"]["p95"])),
        ("≥ threshold", _pct(m["nn_similarity"]["share_at_or_above_threshold"])),
    ]
    body = "".join(f'<div class="card">{escape(name)}<b>{escape(value)}</b></div>' for name, value in cards)
    return f'<div class="cards">{body}</div>'


def _class_row(label: str, b: dict[str, Any]) -> str:
    share, copying = b.get("holdout") or {}, b.get("data_copying") or {}
    ci = share.get("ci95") or [None, None]
    dcr_h = (b["dcr"]["holdout"] or {}).get("p5")
    cells = [
        escape(label) or "<i>(no label)</i>",
        f"{b['n_synthetic']} / {b['n_holdout']}",
        _fmt(b["nn_similarity"]["p95"]),
        _pct(b["nn_similarity"]["share_at_or_above_threshold"]),
        f"{_fmt(b['dcr']['synthetic']['p5'], 3)} / {_fmt(dcr_h, 3)}",
        _fmt(b["nndr"]["synthetic"]["p5"], 3),
        f"{_pct(b['authenticity']['share_authentic'])} / {_pct(b['authenticity']['holdout_share_authentic'])}",
        f"{_fmt(share.get('share_nearer_train'), 3)} [{_fmt(ci[0], 2)}, {_fmt(ci[1], 2)}]",
        f"{_fmt(copying.get('C_T'), 2)} ({_fmt(copying.get('z_global'), 2)})",
    ]
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


_METRICS_GUIDE = """<dl>
<dt>Holdout share</dt><dd>Of the synthetic images, the share whose nearest real image is a training image rather
than a holdout image (training set subsampled to the holdout's size). ≈ 0.5: the model learned the domain, not its
training images. Above 0.5 with the interval excluding 0.5: synthetic images sit nearer the training data —
memorization.</dd>
<dt>C_T (data-copying test, Meehan et al. 2020)</dt><dd>A z-score per k-means cell comparing how close synthetic
and holdout images come to the training data, averaged. ≈ 0: no evidence; below about −3: data copying; clearly
positive: the model stays farther from its training data than real images do (underfitting).</dd>
<dt>Authenticity (Alaa et al. 2022)</dt><dd>Share of synthetic images farther from their nearest training image
than that image is from its own nearest training neighbour. Copies score 0%. Compare with the holdout's share in
brackets: real, unseen images set the expected level.</dd>
<dt>DCR (distance to closest record)</dt><dd>Distance of each synthetic (and holdout) image to its nearest
training image. The p5 ratio (synthetic / holdout 5th percentile) below 1 means the closest synthetic images come
nearer the training data than fresh real images do.</dd>
<dt>NNDR</dt><dd>Nearest / second-nearest training distance. Near 0: the image is close to one specific training
image rather than to a region of them (a copy signature).</dd>
<dt>NN similarity</dt><dd>Cosine similarity to the nearest training image in this embedding, with the share at or
above the audit threshold.</dd></dl>"""


def _metrics_section(m: dict[str, Any]) -> str:
    if not m.get("computed"):
        return f"<h2>Privacy metrics</h2><p>Not computed: {escape(str(m.get('reason', '')))}</p>"
    hist = m.get("histograms", {})
    parts = [
        "<h2>Privacy metrics</h2>",
        f"<p><i>{escape(m['space'])}</i>. " + "".join(escape(n) + " " for n in m["notes"]) + "</p>",
    ]
    parts.append(_metrics_cards(m))
    if "nn_similarity" in hist:
        h = hist["nn_similarity"]
        threshold = m["nn_similarity"]["threshold"]
        label = "" if threshold is None else f"threshold {threshold:g}"
        parts.append("<h3>Nearest-neighbour similarity, synthetic → training</h3>")
        parts.append(bars_svg(h["edges"], [("synthetic", h["counts"])], marker=threshold, marker_label=label))
    if "dcr_synthetic" in hist:
        h_s, h_h = hist["dcr_synthetic"], hist["dcr_holdout"]
        parts.append("<h3>Distance to the closest training record (share of each set)</h3>")
        series = [("synthetic → training", h_s["counts"]), ("holdout → training", h_h["counts"])]
        parts.append(bars_svg(h_s["edges"], series, share=True, x_label="distance sqrt(2 − 2 cos)"))
    head = (
        "<tr><th>class</th><th>synthetic / holdout</th><th>NN sim p95</th><th>≥ threshold</th><th>DCR p5 S / H</th>"
        "<th>NNDR p5</th><th>authentic S / H</th><th>holdout share [95% CI]</th><th>C_T (z global)</th></tr>"
    )
    rows = _class_row("all", m) + "".join(_class_row(label, b) for label, b in m["per_class"].items())
    parts.append(f"<h3>Per class</h3><table>{head}{rows}</table>")
    for label, reason in m["skipped_classes"].items():
        parts.append(f"<p>Class {escape(label) or '(no label)'} skipped: {escape(reason)}</p>")
    parts.append("<h3>How to read these numbers</h3>" + _METRICS_GUIDE)
    return "\n".join(parts)


def _holdout_section(holdout: dict[str, Any]) -> str:
    """The holdout set the metrics compared with: where it came from and what could not be read."""
    count = f" ({holdout['n']} images used)" if "n" in holdout else ""
    skipped = holdout.get("skipped", {}).get("items", [])
    return f"<p>Holdout (never trained on): {escape(str(holdout.get('description')))}{count}.</p>" + _skipped_table(
        "Unreadable holdout images", skipped
    )


def _membership_section(mia: dict[str, Any]) -> str:
    head = (
        "<tr><th>attack</th><th>AUC [95% CI]</th><th>TPR at 1% FPR</th><th>exact point (FPR, TPR)</th>"
        "<th>median score members / holdout</th></tr>"
    )
    rows, notes = [], []
    for name, a in mia["attacks"].items():
        rows.append(
            f"<tr><td>{escape(name)}</td><td>{a['auc']:.3f} [{a['auc_ci95'][0]:.2f}, {a['auc_ci95'][1]:.2f}]</td>"
            f"<td>{a['tpr_at_1pct_fpr']:.3f}</td><td>{a['exact_point']['fpr']:.3f}, {a['exact_point']['tpr']:.3f}</td>"
            f"<td>{a['median']['members']:.4g} / {a['median']['nonmembers']:.4g}</td></tr>"
        )
        notes.append(a["note"])
    curves = {name: (a["roc"]["fpr"], a["roc"]["tpr"]) for name, a in mia["attacks"].items()}
    skipped = mia["skipped"]
    return f"""<h2>Membership inference</h2>
<p>Model <code>{escape(str(mia["model"]))}</code> at {mia["resolution"]} px: {mia["n_members"]} training images
(members) against {mia["n_nonmembers"]} holdout images (non-members). Loss attack over timesteps
{escape(", ".join(map(str, mia["loss_timesteps"])))}; PIA at t = {mia["pia_timestep"]}. Lower score = called member.</p>
<table>{head}{"".join(rows)}</table>
<p class="note">{escape(notes[0]) if notes else ""}</p>
{roc_svg(curves)}
<p class="note">AUC 0.5 = the attack cannot tell training images from unseen ones (good); near 1 = the model gives
its training images away. TPR at 1% FPR is the share of training images an attacker identifies while falsely
accusing only 1% of unseen images: the number that matters for privacy; it should stay near 0.01.</p>
{_skipped_table("Unreadable training images (membership)", skipped["members"]["items"])}
{_skipped_table("Unreadable holdout images (membership)", skipped["nonmembers"]["items"])}"""


def _audit_sections(summary: dict[str, Any], similarities: np.ndarray, items: list[GalleryItem], show: bool) -> str:
    skipped = summary["skipped"]
    return f"""<p>Every candidate was compared with its nearest training image using the
<b>{escape(summary["embedder"])}</b> embedder; candidates with similarity ≥ <b>{summary["threshold"]:g}</b> are
flagged as possible copies.<br><i>{escape(summary["similarity_meaning"])}</i></p>
{_cards(summary)}
<h2>Similarity to the nearest training image</h2>
{histogram_svg(similarities, summary["threshold"])}
<h2>Per label</h2>
{_label_table(summary["per_label"])}
<h2>{"Flagged candidates" if summary["n_flagged"] else "Most similar candidates"}</h2>
{gallery_html(items, summary["n_flagged"], show)}
<h2>Skipped items</h2>
{_skipped_table("Training", skipped["train"]["items"])}
{_skipped_table("Candidates", skipped["candidates"]["items"])}"""


def render_report(
    summary: dict[str, Any],
    similarities: np.ndarray,
    items: list[GalleryItem],
    *,
    show_training_images: bool = False,
) -> str:
    """The whole report as one HTML string (numbers from `summary`, so report and JSON always agree).

    Sections appear for what the summary holds: the copy audit (`n_candidates`), `metrics`, `membership`.
    """
    train = summary.get("train", {})
    body = [_audit_sections(summary, similarities, items, show_training_images)] if "n_candidates" in summary else []
    if summary.get("metrics"):
        body.append(_metrics_section(summary["metrics"]))
    if summary.get("holdout") and "n_candidates" in summary:
        body.append(_holdout_section(summary["holdout"]))
    if summary.get("membership"):
        body.append(_membership_section(summary["membership"]))
    title = "Memorization audit" if "n_candidates" in summary else "Membership inference audit"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>synthgen {title.lower()}</title>
<style>{CSS}</style></head><body>
<h1>{title}</h1>
{"".join(body)}
<h2>Provenance</h2>
<table><tr><th>training data</th><td>{escape(str(train.get("description")))}</td></tr>
<tr><th>training fingerprint</th><td><code>{escape(str(train.get("fingerprint")))}</code></td></tr>
<tr><th>created</th><td>{escape(summary["created_at"])}</td></tr>
<tr><th>synthgen</th><td>{escape(summary["synthgen_version"])}</td></tr></table>
</body></html>
"""
