"""Audit rows and their aggregation into summary.json (one place computes the numbers the report shows)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

import synthgen
from synthgen.sources.base import Skipped

if TYPE_CHECKING:
    import pyarrow as pa

    from synthgen.audit.detection.evidence import Evidence

PERCENTILES = {"median": 50, "p95": 95, "p99": 99}


@dataclass(frozen=True)
class AuditRow:
    """One audited candidate: one row of audit.parquet."""

    key: str
    label: str
    nearest_train_key: str
    similarity: float
    flagged: bool
    dropped: bool = False
    attempt: int = 0
    # Why (copydetect's evidence, detection/evidence.py; None for embedding detectors or when nothing matched):
    match_kind: str | None = None  # keypoints, region or pixel
    matches: int | None = None  # consistent keypoint matches
    transform: str | None = None  # the copy operation in words
    zoom: float | None = None  # candidate pixels per training pixel
    rotation: float | None = None  # degrees anticlockwise
    mirrored: bool | None = None
    candidate_box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 in the candidate's pixels
    train_box: tuple[int, int, int, int] | None = None  # the same region in the training image's pixels


BOX_FIELDS = ("candidate_box", "train_box")


def evidence_fields(evidence: Evidence | None) -> dict[str, Any]:
    """The AuditRow fields of a verdict's evidence (none when the detector gave none)."""
    if evidence is None:
        return {}
    return {
        "match_kind": evidence.kind,
        "matches": evidence.matches,
        "transform": evidence.words,
        "zoom": evidence.zoom,
        "rotation": evidence.rotation,
        "mirrored": evidence.mirrored,
        "candidate_box": evidence.candidate_box,
        "train_box": evidence.train_box,
    }


def row_from_state(row: dict[str, Any]) -> AuditRow:
    """An AuditRow from its JSON form (a resumed build's state; states written before evidence existed too)."""
    boxes = {name: tuple(row[name]) for name in BOX_FIELDS if row.get(name) is not None}
    return AuditRow(**{**row, **boxes})


def audit_table(rows: list[AuditRow]) -> pa.Table:
    """audit.parquet: one row per candidate; the evidence columns are null where there is none."""
    import pyarrow as pa

    box = pa.list_(pa.int32(), 4)
    columns = {
        "key": pa.string(),
        "label": pa.string(),
        "nearest_train_key": pa.string(),
        "similarity": pa.float64(),
        "flagged": pa.bool_(),
        "dropped": pa.bool_(),
        "attempt": pa.int32(),
        "match_kind": pa.string(),
        "matches": pa.int32(),
        "transform": pa.string(),
        "zoom": pa.float64(),
        "rotation": pa.float64(),
        "mirrored": pa.bool_(),
        "candidate_box": box,
        "train_box": box,
    }
    return pa.table({name: pa.array([getattr(r, name) for r in rows], kind) for name, kind in columns.items()})


def similarity_stats(similarities: np.ndarray) -> dict[str, float | None]:
    """min / mean / median / p95 / p99 / max; all None when there is nothing to describe (JSON has no NaN)."""
    names = ["min", "mean", *PERCENTILES, "max"]
    if len(similarities) == 0:
        return dict.fromkeys(names, None)
    values = np.asarray(similarities, dtype=np.float64)
    stats = {"min": values.min(), "mean": values.mean()}
    stats.update({name: np.percentile(values, q) for name, q in PERCENTILES.items()})
    stats["max"] = values.max()
    return {name: round(float(stats[name]), 6) for name in names}


def per_label_table(rows: list[AuditRow]) -> dict[str, dict[str, Any]]:
    """Per label: n, n_flagged, mean / p95 / max similarity (a class that memorizes more shows up here)."""
    by_label: dict[str, list[AuditRow]] = {}
    for row in rows:
        by_label.setdefault(row.label, []).append(row)
    table: dict[str, dict[str, Any]] = {}
    for label in sorted(by_label):
        group = by_label[label]
        stats = similarity_stats(np.array([r.similarity for r in group]))
        table[label] = {
            "n": len(group),
            "n_flagged": sum(r.flagged for r in group),
            "mean": stats["mean"],
            "p95": stats["p95"],
            "max": stats["max"],
        }
    return table


def flagged_by_match(rows: list[AuditRow]) -> dict[str, int]:
    """Flagged candidates per kind of evidence (keypoints, region, pixel; `none`: the detector gave none)."""
    counts: dict[str, int] = {}
    for row in rows:
        if row.flagged:
            counts[row.match_kind or "none"] = counts.get(row.match_kind or "none", 0) + 1
    return dict(sorted(counts.items()))


def skipped_block(items: list[Skipped]) -> dict[str, Any]:
    return {"count": len(items), "items": [asdict(item) for item in items]}


def header() -> dict[str, Any]:
    """What every summary.json starts with: which synthgen wrote it, and when."""
    return {
        "synthgen_version": synthgen.__version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def source_block(description: str, fingerprint: str | None, **extra: Any) -> dict[str, Any]:
    """A data set as summary.json names it (description + fingerprint, plus counts where known)."""
    return {"description": description, "fingerprint": fingerprint, **extra}


def membership_only_summary(
    membership: dict[str, Any], *, train: dict[str, Any], holdout: dict[str, Any]
) -> dict[str, Any]:
    """summary.json of a `synthgen audit --model` run without --candidates: membership inference only."""
    return {**header(), "train": train, "holdout": holdout, "membership": membership}


def build_summary(
    rows: list[AuditRow],
    *,
    embedder: str,
    threshold: float,
    similarity_meaning: str,
    n_train: int,
    train_description: str,
    train_fingerprint: str | None,
    train_skipped: list[Skipped],
    candidates_skipped: list[Skipped],
) -> dict[str, Any]:
    """The JSON-able audit summary: headline counts, similarity distribution, per-label table, skips (callers add
    the detector block, the privacy `metrics`, `holdout` and `membership` blocks when they computed them)."""
    n_flagged = sum(r.flagged for r in rows)
    return {
        **header(),
        "embedder": embedder,
        "threshold": threshold,
        "similarity_meaning": similarity_meaning,
        "n_train": n_train,
        "n_candidates": len(rows),
        "n_flagged": n_flagged,
        "n_dropped": sum(r.dropped for r in rows),
        "flagged_rate": round(n_flagged / len(rows), 6) if rows else 0.0,
        "similarity": similarity_stats(np.array([r.similarity for r in rows])),
        "per_label": per_label_table(rows),
        "flagged_by_match": flagged_by_match(rows),
        "train": {"description": train_description, "fingerprint": train_fingerprint},
        "skipped": {"train": skipped_block(train_skipped), "candidates": skipped_block(candidates_skipped)},
    }
