"""`threshold: auto`: the copy threshold derived from the training set itself, by leave-one-out.

Why leave-one-out: a training image scored against the *rest* of the training set is a novel image of the
same domain (same scopes, hospitals, borders, overlays), which is exactly what the audit must not flag. The
(1 - target FPR) quantile of those scores is the threshold that flags about `target_fpr` of novel images.

Why groups: "the rest" must not hold the same patient's other images, and must hold everything else. When the
data names its patients (`grouping.py`: the column the split reads, with its file-name pattern, or a
`patient_id` column), each image's search leaves out exactly its own patient: the scores are cross-patient,
the null of a patient-disjoint holdout. Duplicates across groups (the same picture published under two
patient ids, scoring >= `DUPLICATE`) are listed and left out of the quantile; nothing else is, and the
detector's cap does not apply: on pediatric chest films different children reach 16-30 consistent matches,
so a capped threshold flagged 4% of novel patients.

Without a group column (video data sets), keys that differ only in their last number are taken as one
sequence and left out of each other's search when that group is small (seq12_frame0895.jpg and
seq12_frame0979.jpg); the inference is `synthgen.sources.groups`, shared with training's `split_by: sequence`
and `synthgen split --by sequence`. When a whole data set is numbered that way (cvcclinicdb__1.jpg ...
__612.jpg), global embeddings tell whether the numbers follow videos (consecutive images alike): if so, each
image's shot (cut where consecutive images stop looking alike, like video shot detection), the shots either
side and the numbers within `window` are left out; if not (independent images such as the demo phantoms), nothing but
the image itself is, so the null keeps the images most like it. File names do not always reveal sequences,
and near-duplicates that leak in would push the quantile towards 1 and hide real copies, so then the result
is kept within the detector's `threshold_bounds` (copydetect: at most the score of 16 consistent matches) and
scores at or above the cap count as near-duplicates, left out of the quantile.

The returned dict (it goes to summary.json) records the grouping, the raw quantile, the near-duplicates,
which bound applied, and the calibration's own estimate of its false-positive rate: the share of the null
scores at or above the threshold with a Clopper-Pearson interval (in-sample, so slightly optimistic).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from synthgen.audit.detection.detector import SIMILARITY_DECIMALS
from synthgen.audit.detection.parallel import match_in_chunks
from synthgen.runtime import Progress
from synthgen.sources.groups import SequenceNeighbours

if TYPE_CHECKING:
    from synthgen.audit.detection.grouping import Grouping
    from synthgen.sources.base import Source

DUPLICATE = 0.99  # a cross-group score this high is the same picture under two ids, not a novel patient
CONFIDENCE = 0.95
MAX_LISTED = 20  # duplicates listed by key in the summary


class Calibratable(Protocol):
    keys: list[str]
    threshold_bounds: tuple[float, float]

    def match(self, images: list[Image.Image], exclude: list[set[str]] | None = None) -> list[tuple[float, str]]: ...


def _leave_one_out(
    detector: Calibratable,
    train: Source,
    wanted: set[str],
    neighbours: Callable[[str], set[str]],
    batch_size: int,
    progress: Progress | None,
) -> tuple[list[tuple[str, float, str]], list[int]]:
    """Score each `wanted` training image against the rest (its group or presumed sequence left out), in batches.

    Returns (key, score, nearest key) per image and, per image, how many neighbours its search left out.
    `wanted` is used up.
    """
    scores: list[tuple[str, float, str]] = []
    excluded: list[int] = []
    batch: list[tuple[str, Image.Image, set[str]]] = []
    total = len(wanted)  # counted before `wanted` is used up (else the bar reads 500/0)

    def flush() -> None:
        images, skips = [image for _, image, _ in batch], [set(skip) for _, _, skip in batch]
        if getattr(detector, "parallel_match", False):  # chunks in threads: the same scores (parallel.py)
            results = match_in_chunks(detector.match, images, getattr(detector, "workers", None), exclude=skips)
        else:
            results = detector.match(images, skips)
        for (key, _, _), (similarity, nearest) in zip(batch, results, strict=True):
            scores.append((key, similarity, nearest))
        excluded.extend(len(skip) - 1 for _, _, skip in batch)
        batch.clear()
        if progress:
            progress("calibrating threshold", len(scores), total)

    for sample in train:
        if sample.key in wanted:
            wanted.discard(sample.key)
            batch.append((sample.key, sample.image, neighbours(sample.key)))
            if len(batch) >= batch_size:
                flush()
            if not wanted:
                break
    if batch:
        flush()
    return scores, excluded


def _at_least(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space."""
    if k <= 0 or p >= 1.0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
        for i in range(k, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(term - top) for term in terms))


def _solve(increasing: Callable[[float], float], level: float) -> float:
    """The p in [0, 1] where an increasing function of p reaches `level` (bisection)."""
    low, high = 0.0, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if increasing(middle) < level else (low, middle)
    return (low + high) / 2


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided interval of a binomial rate seen k times in n."""
    if n <= 0:
        return 0.0, 1.0
    tail = (1.0 - confidence) / 2
    lower = 0.0 if k <= 0 else _solve(lambda p: _at_least(k, n, p), tail)
    upper = 1.0 if k >= n else _solve(lambda p: _at_least(k + 1, n, p), 1.0 - tail)
    return lower, upper


def _quantile_threshold(chance: np.ndarray, target_fpr: float, floor: float) -> tuple[float, float]:
    """(quantile, threshold just above it): at most floor(target_fpr * n) of `chance` reach the threshold."""
    ordered = np.sort(chance)[::-1]
    allowed = int(np.floor(target_fpr * len(ordered)))  # leave-one-out images that may score at or above it
    quantile = float(ordered[allowed]) if allowed < len(ordered) else floor
    # Just above that score (similarities are rounded to 6 decimals), so at most `allowed` reach the threshold.
    return quantile, round(quantile + 10**-SIMILARITY_DECIMALS, SIMILARITY_DECIMALS)


def fpr_estimate(chance: np.ndarray, threshold: float, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Share of the null scores (novel images: own group left out, near-duplicates too) at or above `threshold`."""
    k, n = int((chance >= threshold).sum()), len(chance)
    lower, upper = clopper_pearson(k, n, confidence)
    return {
        "flagged": k,
        "n": n,
        "rate": round(k / n, 6) if n else None,
        f"ci{round(confidence * 100)}": [round(lower, 6), round(upper, 6)],
        "method": "share of the leave-one-out scores (own group or sequence left out, near-duplicates left out) "
        "at or above the threshold; Clopper-Pearson interval; in-sample, so slightly optimistic",
    }


def _neighbours(
    detector: Calibratable, grouping: Grouping | None, window: int
) -> tuple[Callable[[str], set[str]], str]:
    """What each leave-one-out search leaves out, and how that was decided (for the summary)."""
    if grouping is not None:
        return grouping, f"own group by {grouping.by}"
    keys = detector.keys
    vectors = getattr(getattr(detector, "index", None), "vectors", None)
    usable = vectors is not None and len(vectors) == len(keys)
    how = "shots of similar consecutive images" if usable else f"numbers within {window}"
    return SequenceNeighbours(keys, vectors if usable else None, window=window), f"own sequence ({how})"


def calibrate(
    detector: Calibratable,
    train: Source,
    *,
    target_fpr: float = 0.01,
    max_samples: int = 500,
    window: int = 50,
    batch_size: int = 64,
    grouping: Grouping | None = None,
    progress: Progress | None = None,
) -> tuple[float, dict[str, Any]]:
    """(threshold, how it was derived): leave-one-out scores of up to `max_samples` training images.

    `grouping` (`grouping.training_groups`): each image's search leaves out its own group only; None: its
    sequence inferred from file-name numbering, with the detector's cap.
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must be between 0 and 1, got {target_fpr}")
    keys = detector.keys
    positions = np.unique(np.linspace(0, len(keys) - 1, min(max_samples, len(keys))).round().astype(int))
    neighbours, excluding = _neighbours(detector, grouping, window)
    scored, excluded = _leave_one_out(detector, train, {keys[i] for i in positions}, neighbours, batch_size, progress)
    floor, cap = detector.threshold_bounds
    values = np.asarray([score for _, score, _ in scored], dtype=np.float64)
    # At or above `duplicate`: the training set's own near-duplicates, left out of the quantile.
    duplicate = DUPLICATE if grouping is not None else cap
    near = values >= duplicate if duplicate < 1.0 else np.zeros(len(values), bool)
    chance = values[~near]
    quantile, raw = _quantile_threshold(chance, target_fpr, floor)
    upper = 1.0 if grouping is not None else cap  # with groups the null is trusted: the cap does not apply
    threshold = round(float(min(max(raw, floor), upper)), 6)
    bound = "floor" if raw < floor else "cap" if raw > upper else None
    duplicates = sorted(((s, k, n) for (k, s, n), is_near in zip(scored, near, strict=True) if is_near), reverse=True)
    return threshold, {
        "method": "leave-one-out: just above the (1 - target_fpr) quantile of training images' scores against "
        f"the rest of the training set ({excluding} excluded)",
        "target_fpr": target_fpr,
        "groups": grouping.info() if grouping is not None else {"by": "sequence", "from": "file-name numbering"},
        "n": len(values),
        "n_near_duplicates": int(near.sum()),
        "near_duplicate_level": round(duplicate, 6),
        "near_duplicates": [[k, n, round(float(s), 6)] for s, k, n in duplicates[:MAX_LISTED]],
        "quantile": round(quantile, 6),
        "floor": round(floor, 6),
        "cap": round(cap, 6),
        "cap_applies": grouping is None,
        "bounded_by": bound,
        "threshold": threshold,
        "fpr_estimate": fpr_estimate(chance, threshold),
        "mean_excluded_neighbours": round(float(np.mean(excluded)), 2) if excluded else 0.0,
        "loo_share_at_or_above": round(float((values >= threshold).mean()), 6) if len(values) else 0.0,
        "loo_scores": {
            "median": round(float(np.median(values)), 6) if len(values) else None,
            "p99": round(float(np.percentile(values, 99)), 6) if len(values) else None,
            "max": round(float(values.max()), 6) if len(values) else None,
        },
    }
