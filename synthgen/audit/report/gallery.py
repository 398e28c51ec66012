"""The report's gallery of candidates: thumbnails with the matched region outlined, and why each was judged so.

A candidate's thumbnail always shows the region its evidence matched (the candidate is synthetic: ours to show).
The training image, and the same region outlined on it, appear only with --show-training-images: it is the
private data the audit protects. Without it the caption still gives the region's coordinates in the training
image, the consistent matches and the transform, which are enough to check the verdict with the data at hand.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from html import escape

from PIL import Image, ImageDraw

from synthgen.audit.report.summary import AuditRow

THUMBNAIL_SIZE = 96
OUTLINE = (255, 214, 0)  # yellow, with a dark edge: visible on mucosa, radiographs and phantoms alike
OUTLINE_EDGE = (0, 0, 0)


@dataclass
class GalleryItem:
    """A candidate shown in the report: its row, its thumbnail and (if allowed) its nearest training image."""

    row: AuditRow
    thumbnail: bytes
    train_thumbnail: bytes | None = None


def thumbnail_png(
    image: Image.Image, size: int = THUMBNAIL_SIZE, box: tuple[int, int, int, int] | None = None
) -> bytes:
    """A small PNG of `image` (longest side `size`), small enough to embed many in one HTML file; `box` (in the
    image's pixels) is outlined unless it is the whole image (nothing to point at)."""
    small = image.convert("RGB")
    width, height = small.size
    small.thumbnail((size, size), Image.Resampling.BILINEAR)
    if box is not None and tuple(box) != (0, 0, width, height):
        _outline(small, box, small.width / width, small.height / height)
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _outline(image: Image.Image, box: tuple[int, int, int, int], sx: float, sy: float) -> None:
    x0, y0, x1, y1 = box
    scaled = [round(x0 * sx), round(y0 * sy), max(round(x1 * sx) - 1, 0), max(round(y1 * sy) - 1, 0)]
    draw = ImageDraw.Draw(image)
    draw.rectangle(scaled, outline=OUTLINE_EDGE, width=3)
    draw.rectangle([scaled[0] + 1, scaled[1] + 1, scaled[2] - 1, scaled[3] - 1], outline=OUTLINE, width=1)


def img_tag(png: bytes, alt: str, width: int = THUMBNAIL_SIZE) -> str:
    """An inline PNG (a data URI): the report stays one file that renders offline."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}" width="{width}">'


def _box_text(box: tuple[int, int, int, int] | None) -> str:
    return "–" if box is None else f"x {box[0]}–{box[2]}, y {box[1]}–{box[3]}"


def evidence_caption(row: AuditRow) -> str:
    """Why, in words: the consistent matches and the transform, and where the match lies in each image."""
    if row.match_kind is None or row.transform is None:
        return ""
    where = f"candidate {_box_text(row.candidate_box)}; training {_box_text(row.train_box)}"
    return f'<br><span class="why">{escape(row.transform)}</span><br><span class="where">region: {where}</span>'


def _figure(item: GalleryItem, show_training_images: bool) -> str:
    row = item.row
    images = img_tag(item.thumbnail, f"candidate {row.key}") + " "
    if not show_training_images:
        images += '<span class="hidden" title="run with --show-training-images to show it">training image hidden</span>'
    elif item.train_thumbnail:
        images += img_tag(item.train_thumbnail, f"training {row.nearest_train_key}")
    else:
        images += '<span class="hidden">training image not found</span>'
    status = "flagged" if row.flagged else "not flagged"
    status += ", dropped" if row.dropped else ""
    return (
        f'<figure class="{"flagged" if row.flagged else ""}">{images}<figcaption>'
        f"<b>{row.similarity:.4f}</b> ({status})<br>candidate: {escape(row.key)}"
        f"{f' [{escape(row.label)}]' if row.label else ''}<br>"
        f"nearest training: {escape(row.nearest_train_key)}{evidence_caption(row)}</figcaption></figure>"
    )


def gallery_html(items: list[GalleryItem], n_flagged: int, show_training_images: bool) -> str:
    """The flagged candidates (or, if none, the most similar), each with its evidence."""
    if not items:
        return "<p>No candidates.</p>"
    if n_flagged:
        intro = f"<p>{len(items)} of {n_flagged} flagged candidates, most similar first.</p>"
    else:
        intro = f"<p>No candidate was flagged. The {len(items)} most similar candidates:</p>"
    if any(item.row.match_kind for item in items):
        intro += (
            "<p>The outline marks the region the detector matched (no outline: the whole image); the caption gives the "
            "number of consistent keypoint matches, the transform that turns the training image into the "
            "candidate, and the region's pixel coordinates in both images.</p>"
        )
    if not show_training_images:
        intro += (
            '<p class="note">Training images are hidden for privacy; only their keys are shown. '
            "Run <code>synthgen audit --show-training-images</code> to show them side by side.</p>"
        )
    figures = "".join(_figure(item, show_training_images) for item in items)
    return intro + f'<div class="grid">{figures}</div>'
