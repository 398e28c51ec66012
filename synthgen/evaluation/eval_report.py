"""`report.html` of `synthgen eval`: one self-contained page (no network) that says whether the set is worth using.

Numbers come from the eval summary, so the page and eval.json always agree. Real images appear in the grids only
when the user opts in (`show_real_images`): a report is easily shared, the patients' images are not.
"""

from __future__ import annotations

from html import escape
from typing import Any

import numpy as np

from synthgen.audit.report.html_report import CSS, img_tag, thumbnail_png
from synthgen.audit.report.plots import COLOURS, LEFT, TOP, Frame, legend_at
from synthgen.evaluation.image_sets import ImageSet

GRID_PER_CLASS = 8
REGIMES = {"trtr": "real → real (TRTR)", "tstr": "synthetic → real (TSTR)", "trtr_plus_synthetic": "real + synthetic"}
_EXTRA_CSS = """
.cm td{text-align:right;min-width:2.5em}
.thumbs img{margin:1px}
"""

_GUIDE = """<dl>
<dt>FD (Fréchet distance)</dt><dd>Distance between Gaussians fitted to real and synthetic features: 0 = same
statistics. Compare it with the <em>baseline</em> (real reference vs real test patients at the same sample sizes):
a synthetic set as close as new real patients scores about the baseline. FD grows as n shrinks, so compare
numbers at equal n only.</dd>
<dt>KID</dt><dd>Kernel inception distance (unbiased MMD², cubic kernel): like FD but unbiased at small n.</dd>
<dt>precision / density</dt><dd>Share of synthetic images that fall inside the real data's manifold (realism);
density above 1 means synthetic images crowd around dense real regions.</dd>
<dt>recall / coverage</dt><dd>Share of the real data's variety the synthetic set reaches (diversity);
low recall with high precision is mode collapse.</dd>
<dt>Vendi</dt><dd>Effective number of distinct images (1 = all identical); compare with the real set's own.</dd>
<dt>TRTR / TSTR / real + synthetic</dt><dd>The same classifier, budget and seeds, trained on real, synthetic or
both and tested on real images of patients the generator never saw. TSTR near TRTR: the set can substitute for
the real data; real + synthetic above TRTR: it adds to it.</dd>
<dt>label fidelity</dt><dd>Share of synthetic images that the real-trained classifier assigns to their own label:
does an image show the class its label claims?</dd>
</dl>"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return escape(str(value))


def _mean_ci(block: Any) -> str:
    """`{mean, ci}` as "0.812 [0.790, 0.834]"."""
    if not isinstance(block, dict) or "mean" not in block:
        return _fmt(block)
    ci = block.get("ci") or [None, None]
    return f"{_fmt(block['mean'])} <small>[{_fmt(ci[0])}, {_fmt(ci[1])}]</small>"


def _cards(summary: dict[str, Any]) -> str:
    utility = summary.get("utility") or {}
    baseline = summary.get("baseline") or {}
    cards = [
        ("FD synthetic vs real", _fmt(summary.get("fd"), 2)),
        ("FD real test vs real (baseline)", _fmt(baseline.get("fd"), 2)),
        ("precision", _fmt(summary.get("precision"))),
        ("recall", _fmt(summary.get("recall"))),
        ("Vendi (synthetic / real)", f"{_fmt(summary.get('vendi'), 1)} / {_fmt(summary.get('vendi_real'), 1)}"),
    ]
    for regime in ("trtr", "tstr"):
        accuracy = ((utility.get(regime) or {}).get("balanced_accuracy") or {}).get("mean")
        cards.append((f"balanced accuracy {regime.upper()}", _fmt(accuracy)))
    fidelity = (summary.get("label_fidelity") or {}).get("agreement")
    cards.append(("label fidelity", _fmt(fidelity)))
    return (
        '<div class="cards">' + "".join(f'<div class="card">{escape(k)}<b>{v}</b></div>' for k, v in cards) + "</div>"
    )


def _fidelity_table(summary: dict[str, Any]) -> str:
    keys = ["n_real", "n_synthetic", "fd", "kid_mean", "precision", "recall", "density", "coverage", "vendi"]
    head = "<tr><th>class</th>" + "".join(f"<th>{k}</th>" for k in keys) + "<th>baseline FD</th></tr>"
    baseline = (summary.get("baseline") or {}).get("per_class", {})
    rows = [("all", summary, summary.get("baseline") or {})]
    rows += [(label, block, baseline.get(label, {})) for label, block in (summary.get("per_class") or {}).items()]
    body = []
    for label, block, base in rows:
        if "skipped" in block:
            body.append(
                f"<tr><td>{escape(label)}</td><td colspan='{len(keys) + 1}'>{escape(block['skipped'])}</td></tr>"
            )
            continue
        cells = "".join(f"<td>{_fmt(block.get(k))}</td>" for k in keys)
        body.append(f"<tr><td>{escape(label)}</td>{cells}<td>{_fmt(base.get('fd'))}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _utility_table(utility: dict[str, Any], title: str) -> str:
    metrics = ("balanced_accuracy", "macro_f1", "macro_auroc")
    head = "<tr><th>trained on</th>" + "".join(f"<th>{m}</th>" for m in metrics) + "</tr>"
    rows = []
    for regime, name in REGIMES.items():
        block = utility.get(regime)
        if isinstance(block, dict):
            rows.append(
                f"<tr><td>{name}</td>" + "".join(f"<td>{_mean_ci(block.get(m))}</td>" for m in metrics) + "</tr>"
            )
    return f"<h3>{escape(title)}</h3><table>{head}{''.join(rows)}</table>" if rows else ""


def _confusion(matrix: list[list[int]], classes: list[str], title: str) -> str:
    cm = np.asarray(matrix, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != len(classes):
        return ""
    shares = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    head = "<tr><th>true \\ predicted</th>" + "".join(f"<th>{escape(c)}</th>" for c in classes) + "</tr>"
    rows = []
    for i, label in enumerate(classes):
        cells = "".join(
            f'<td style="background:rgba(74,122,181,{shares[i, j]:.2f})">{int(cm[i, j])}</td>'
            for j in range(len(classes))
        )
        rows.append(f"<tr><th>{escape(label)}</th>{cells}</tr>")
    table = f'<table class="cm">{head}{"".join(rows)}</table>'
    return f'<figure style="width:auto">{table}<figcaption>{escape(title)}</figcaption></figure>'


def learning_curve_svg(curves: dict[str, dict[str, float]], label: str = "learning curve") -> str:
    """Lines of balanced accuracy (y, 0–1) against images per class (x, log-spaced ranks) for each regime."""
    points = sorted({int(x) for curve in curves.values() for x in curve})
    if not points:
        return ""
    frame = Frame(height=260, plot_w=420)

    def xy(x: int, y: float) -> tuple[float, float]:
        rank = points.index(x) / max(len(points) - 1, 1)
        return LEFT + rank * frame.plot_w, TOP + (1 - y) * frame.plot_h

    ticks = [(xy(p, 0)[0], str(p)) for p in points]
    parts = frame.open(label, ticks, "1.0", "training images per class")
    for (name, curve), colour in zip(curves.items(), COLOURS, strict=False):
        line = " ".join(
            f"{px:.1f},{py:.1f}"
            for px, py in (xy(int(x), float(y)) for x, y in sorted(curve.items(), key=lambda kv: int(kv[0])))
        )
        parts.append(
            f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2">'
            f"<title>{escape(name)}</title></polyline>"
        )
    parts += legend_at(list(curves), LEFT + frame.plot_w + 8, TOP + 10)
    parts.append("</svg>")
    return "".join(parts)


def _grids(real: ImageSet, synthetic: ImageSet, show_real: bool) -> str:
    out = []
    for label in synthetic.classes():
        synth = [i for i, lab in enumerate(synthetic.labels) if lab == label][:GRID_PER_CLASS]
        row = "".join(img_tag(thumbnail_png(synthetic.images[i], 64), f"synthetic {label}", 64) for i in synth)
        out.append(f"<h3>{escape(label)}</h3><p class='thumbs'><b>synthetic</b><br>{row}</p>")
        if show_real:
            reals = [i for i, lab in enumerate(real.labels) if lab == label][:GRID_PER_CLASS]
            row = "".join(img_tag(thumbnail_png(real.images[i], 64), f"real {label}", 64) for i in reals)
            out.append(f"<p class='thumbs'><b>real</b><br>{row}</p>")
    if not show_real:
        out.append("<p class='note'>Real images are not shown (pass --show-real-images to compare side by side).</p>")
    return "".join(out)


def _utility_section(summary: dict[str, Any]) -> str:
    utility = summary.get("utility") or {}
    if "skipped" in utility or not utility:
        return f"<h2>Downstream utility</h2><p class='note'>{escape(str(utility.get('skipped', 'not run')))}</p>"
    classes = summary.get("classes") or sorted((summary.get("per_class") or {}).keys())
    parts = ["<h2>Downstream utility</h2>", _utility_table(utility, "small CNN")]
    if isinstance(utility.get("linear_probe"), dict):
        parts.append(_utility_table(utility["linear_probe"], "linear probe on the features"))
    fidelity = summary.get("label_fidelity") or {}
    if fidelity:
        per_class = ", ".join(f"{escape(k)} {_fmt(v)}" for k, v in (fidelity.get("per_class") or {}).items())
        parts.append(
            f"<p>Label fidelity {_fmt(fidelity.get('agreement'))} ({per_class}); the real-trained "
            "classifier's own balanced accuracy on the test patients: "
            f"{_fmt(fidelity.get('real_classifier_balanced_accuracy'))}.</p>"
        )
    curve = utility.get("learning_curve") or {}
    curves = {REGIMES[k]: v for k, v in curve.items() if k in REGIMES and isinstance(v, dict)}
    if curves:
        parts.append("<h3>Learning curves</h3>" + learning_curve_svg(curves))
    matrices = utility.get("confusion") or {}
    figures = [_confusion(m, classes, REGIMES.get(k, k)) for k, m in matrices.items()]
    if figures:
        parts.append("<h3>Confusion matrices (summed over seeds)</h3><div class='grid'>" + "".join(figures) + "</div>")
    return "".join(parts)


def render_eval_report(summary: dict[str, Any], real: ImageSet, synthetic: ImageSet, *, show_real_images: bool) -> str:
    """The whole page as one HTML string."""
    features = summary.get("features", {})
    sets = "".join(
        f"<tr><th>{escape(name)}</th><td>{escape(str(s.get('description')))}</td><td>{s.get('images')}</td></tr>"
        for name, s in (summary.get("sets") or {}).items()
    )
    name, sha = escape(str(features.get("name"))), escape(str(features.get("sha256")))
    created = f"{escape(str(summary.get('created_at')))} by synthgen {escape(str(summary.get('synthgen_version')))}"
    medvqa = summary.get("medvqa")
    medvqa_html = (
        "<h2>MedVQA-GI 2025 scores</h2><table>"
        + "".join(
            f"<tr><th>{escape(k)}</th><td>{_fmt(v)}</td></tr>"
            for k, v in medvqa.items()
            if not isinstance(v, dict | list)
        )
        + "</table>"
        if isinstance(medvqa, dict)
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>synthgen evaluation</title>
<style>{CSS}{_EXTRA_CSS}</style></head><body>
<h1>Is this synthetic set worth using?</h1>
{_cards(summary)}
<h2>Fidelity and diversity</h2>
<p>In the <b>{escape(str(features.get("name")))}</b> feature space. {escape(str(features.get("description", "")))}</p>
{_fidelity_table(summary)}
{_utility_section(summary)}
{medvqa_html}
<h2>Images per class</h2>
{_grids(real, synthetic, show_real_images)}
<h2>How to read this report</h2>
{_GUIDE}
<h2>Provenance</h2>
<table>{sets}
<tr><th>feature space</th><td colspan="2">{name} (sha256 <code>{sha}</code>)</td></tr>
<tr><th>seeds</th><td colspan="2">{escape(str(summary.get("seeds")))}</td></tr>
<tr><th>created</th><td colspan="2">{created}</td></tr>
</table>
</body></html>
"""
