"""`threshold: auto`: the copy threshold derived from the training set itself, by leave-one-out.

Why leave-one-out: a training image scored against the *rest* of the training set is a novel image of the
same domain (same scopes, hospitals, borders, overlays), which is exactly what the audit must not flag. The
(1 - target FPR) quantile of those scores is the threshold that flags about `target_fpr` of novel images.

Why exclusions: video data sets hold consecutive frames of one lesion, which *are* near-copies of each other
and would drag the quantile up to "copy" scores. Keys that differ only in their last number are taken as one
sequence and left out of each other's search when that group is small (seq12_frame0895.jpg and
seq12_frame0979.jpg); the inference is `synthgen.sources.groups`, shared with training's `split_by: sequence`
and `synthgen split --by sequence`. When a whole data set is numbered that way (cvcclinicdb__1.jpg ...
__612.jpg), global embeddings tell whether the numbers follow videos (consecutive images alike): if so, each
image's shot (cut where consecutive images stop looking alike, like video shot detection), the shots either
side and the numbers within `window` are left out; if not (independent images such as the demo phantoms), nothing but
the image itself is, so the null keeps the images most like it.

Why bounds: file names do not always reveal sequences (a data set may number frames out of order or hash
them), and the near-duplicates that leak in would push the quantile towards 1 and hide real copies. So the
result is kept within the detector's `threshold_bounds`: for copydetect, at least its fixed default and at
most the score of 16 geometrically consistent matches, which is a copy whatever the calibration says. For
the same reason leave-one-out scores at or above that cap are counted as the training set's own
near-duplicates and left out of the quantile. The returned dict (it goes to summary.json) records the raw
quantile, the near-duplicates and which bound, if any, applied.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from synthgen.audit.detection.detector import SIMILARITY_DECIMALS
from synthgen.runtime import Progress
from synthgen.sources.groups import SequenceNeighbours

if TYPE_CHECKING:
    from synthgen.sources.base import Source


class Calibratable(Protocol):
    keys: list[str]
    threshold_bounds: tuple[float, float]

    def match(self, images: list[Image.Image], exclude: list[set[str]] | None = None) -> list[tuple[float, str]]: ...


def _leave_one_out(
    detector: Calibratable,
    train: Source,
    wanted: set[str],
    neighbours: SequenceNeighbours,
    batch_size: int,
    progress: Progress | None,
) -> tuple[list[float], list[int]]:
    """Score each `wanted` training image against the rest (its presumed sequence left out), in batches.

    Returns the scores and, per image, how many neighbours its search left out. `wanted` is used up.
    """
    scores: list[float] = []
    excluded: list[int] = []
    batch: list[tuple[Image.Image, set[str]]] = []
    total = len(wanted)  # counted before `wanted` is used up (else the bar reads 500/0)

    def flush() -> None:
        results = detector.match([image for image, _ in batch], [skip for _, skip in batch])
        scores.extend(similarity for similarity, _ in results)
        excluded.extend(len(skip) - 1 for _, skip in batch)
        batch.clear()
        if progress:
            progress("calibrating threshold", len(scores), total)

    for sample in train:
        if sample.key in wanted:
            wanted.discard(sample.key)
            batch.append((sample.image, neighbours(sample.key)))
            if len(batch) >= batch_size:
                flush()
            if not wanted:
                break
    if batch:
        flush()
    return scores, excluded


def calibrate(
    detector: Calibratable,
    train: Source,
    *,
    target_fpr: float = 0.01,
    max_samples: int = 500,
    window: int = 50,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> tuple[float, dict[str, Any]]:
    """(threshold, how it was derived): leave-one-out scores of up to `max_samples` training images."""
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must be between 0 and 1, got {target_fpr}")
    keys = detector.keys
    positions = np.unique(np.linspace(0, len(keys) - 1, min(max_samples, len(keys))).round().astype(int))
    wanted = {keys[i] for i in positions}
    vectors = getattr(getattr(detector, "index", None), "vectors", None)
    usable = vectors is not None and len(vectors) == len(keys)
    neighbours = SequenceNeighbours(keys, vectors if usable else None, window=window)
    scores, excluded = _leave_one_out(detector, train, wanted, neighbours, batch_size, progress)
    floor, cap = detector.threshold_bounds
    values = np.asarray(scores, dtype=np.float64)
    chance = np.sort(values[values < cap] if cap < 1.0 else values)[::-1]  # at/above the cap: near-duplicates
    allowed = int(np.floor(target_fpr * len(chance)))  # leave-one-out images that may score at or above it
    quantile = float(chance[allowed]) if allowed < len(chance) else floor
    # Just above that score (similarities are rounded to 6 decimals), so at most `allowed` reach the threshold.
    raw = round(quantile + 10**-SIMILARITY_DECIMALS, SIMILARITY_DECIMALS)
    threshold = float(min(max(raw, floor), cap))
    bound = "floor" if raw < floor else "cap" if raw > cap else None
    return round(threshold, 6), {
        "method": "leave-one-out: just above the (1 - target_fpr) quantile of training images' scores against "
        "the rest of the training set (own sequence excluded)",
        "target_fpr": target_fpr,
        "n": len(values),
        "n_near_duplicates": int(len(values) - len(chance)),
        "quantile": round(quantile, 6),
        "floor": round(floor, 6),
        "cap": round(cap, 6),
        "bounded_by": bound,
        "threshold": round(threshold, 6),
        "sequences": "shots of similar consecutive images" if usable else f"numbers within {window}",
        "mean_excluded_neighbours": round(float(np.mean(excluded)), 2) if excluded else 0.0,
        "loo_share_at_or_above": round(float((values >= threshold).mean()), 6) if len(values) else 0.0,
        "loo_scores": {
            "median": round(float(np.median(values)), 6) if len(values) else None,
            "p99": round(float(np.percentile(values, 99)), 6) if len(values) else None,
            "max": round(float(values.max()), 6) if len(values) else None,
        },
    }
