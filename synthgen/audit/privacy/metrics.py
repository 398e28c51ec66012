"""Privacy metrics in the audit's embedding space: how close synthetic images (S) sit to the training images (T),
measured against fresh real images of the same domain that were never trained on (holdout, H).

Every metric uses the embedder's unit-norm vectors; the distance of two vectors is sqrt(2 - 2 cos), the Euclidean
distance of unit vectors (0 = same direction, sqrt(2) = orthogonal). A copy detector answers "is this image a
copy?"; these numbers answer "does the generator, as a whole, sit closer to its training data than new data does?".

How to read each block of the result (privacy_audits/README.md has the long form):

- `nn_similarity`: cosine of each S to its nearest T (percentiles, share at or above the audit threshold).
- `dcr`: distance to closest record, S→T and H→T; `p5_ratio` = their 5th percentiles' ratio (≈ 1 fine, ≪ 1 the
  closest synthetic images come nearer T than fresh data ever does); `share_below_holdout_p5` (≈ 0.05 fine).
- `nndr`: nearest / second-nearest T distance (near 0: close to one specific training image).
- `authenticity` (Alaa et al. 2022): share of S at least as far from its nearest T record j as j is from its own
  nearest other record; copies score 0; `holdout_share_authentic` is the level real unseen data reaches.
- `holdout` (`holdout_share`), `data_copying` (C_T): see their functions.

Search is exact (FAISS flat inner product): the sets are moderate (`MetricsInputs` keeps at most `max_per_set`
vectors per set by reservoir sampling), and an approximate index would bias exactly the small distances these
metrics are about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from synthgen.audit.index.embedders import Embedder
from synthgen.audit.privacy.stats import (
    assign_cells,
    histogram,
    kmeans,
    knn,
    mann_whitney_z,
    percentiles,
    rounded,
    wilson_interval,
)
from synthgen.runtime import Progress

Role = Literal["train", "synthetic", "holdout"]
MIN_CLASS_SIZE = 10  # per-class metrics need this many samples in each set
MIN_CELL_SIZE = 5  # C_T uses a cell when it holds this many synthetic and this many holdout samples
MAX_PER_SET = 10_000  # per set; 10k pixel embeddings (3072-d) are 123 MB
KMEANS_MAX_FIT = 5_000  # k-means is fitted on at most this many training vectors (<= 10 cells need few)


@dataclass
class _Geometry:
    """Everything the metrics need, computed once: per-sample distances, nearest ids, cells, holdout race."""

    d_s: np.ndarray  # (n_s, 2) S -> T nearest and second-nearest distances
    authentic_s: np.ndarray  # (n_s,) bool: not closer to its nearest real record than that record's neighbour
    d_h: np.ndarray | None = None  # (n_h, 2) H -> T
    authentic_h: np.ndarray | None = None
    nearer_train: np.ndarray | None = None  # (n_s,) 1 / 0.5 / 0: nearest record in T_balanced / tie / in H
    n_per_side: int = 0
    cells_s: np.ndarray | None = None  # k-means cell of each S / H point (cells fitted on T)
    cells_h: np.ndarray | None = None
    cell_d_s: np.ndarray | None = None  # distance to the nearest training point of the same cell
    cell_d_h: np.ndarray | None = None
    n_cells: int = 0


def measure(t: np.ndarray, s: np.ndarray, h: np.ndarray | None, seed: int = 0) -> _Geometry:
    """All exact searches, once; every block (overall or per class) is then a slice of these arrays."""
    rng = np.random.default_rng(seed)
    d_s, ids_s = knn(s, t, 2)
    r_t = knn(t, t, 1, exclude_self=True)[0][:, 0]  # each real record's distance to its nearest other record
    geo = _Geometry(d_s, d_s[:, 0] >= r_t[ids_s[:, 0]])
    if h is None:
        return geo
    geo.d_h, ids_h = knn(h, t, 2)
    geo.authentic_h = geo.d_h[:, 0] >= r_t[ids_h[:, 0]]
    n = geo.n_per_side = min(len(t), len(h))
    t_bal = t[np.sort(rng.choice(len(t), n, replace=False))] if len(t) > n else t
    h_bal = h[np.sort(rng.choice(len(h), n, replace=False))] if len(h) > n else h
    to_t, to_h = knn(s, t_bal, 1)[0][:, 0], knn(s, h_bal, 1)[0][:, 0]
    geo.nearer_train = np.where(to_t < to_h, 1.0, np.where(to_t == to_h, 0.5, 0.0))
    k = max(1, min(10, len(t) // 20))
    fit = t[rng.choice(len(t), KMEANS_MAX_FIT, replace=False)] if len(t) > KMEANS_MAX_FIT else t
    centroids = kmeans(fit, k, rng)
    cells_t, geo.cells_s, geo.cells_h = (assign_cells(x, centroids) for x in (t, s, h))
    geo.n_cells = len(centroids)
    geo.cell_d_s, geo.cell_d_h = np.full(len(s), np.inf), np.full(len(h), np.inf)
    for j in range(len(centroids)):
        tj = t[cells_t == j]
        if len(tj):
            for cells, x, out in ((geo.cells_s, s, geo.cell_d_s), (geo.cells_h, h, geo.cell_d_h)):
                if np.any(cells == j):
                    out[cells == j] = knn(x[cells == j], tj, 1)[0][:, 0]
    return geo


def data_copying(geo: _Geometry, s_mask: np.ndarray, h_mask: np.ndarray, min_cell: int = MIN_CELL_SIZE) -> dict:
    """Meehan, Chaudhuri & Dasgupta (2020) data-copying statistic C_T.

    T is cut into k = min(10, |T|/20) k-means cells. In each cell the distances of generated points (S) and of
    held-out test points (H) to their nearest training point of that cell (as the authors' code does) are
    compared by a Mann–Whitney U z-score; cells with at least `min_cell` of both are averaged, weighted by their
    share of H. Read it as a z-score: C_T ≈ 0 is no evidence of copying; C_T ≪ 0 (say < -3) means generated
    points sit closer to the training data than fresh data does (data copying); C_T ≫ 0 means farther
    (underfitting). `z_global` is the same test without cells (one pooled comparison).
    """
    assert geo.cells_s is not None and geo.cells_h is not None and geo.cell_d_s is not None
    assert geo.cell_d_h is not None and geo.d_h is not None
    n_h = int(h_mask.sum())
    cells, weighted, weights = [], 0.0, 0.0
    for j in range(geo.n_cells):
        in_s, in_h = s_mask & (geo.cells_s == j), h_mask & (geo.cells_h == j)
        row: dict[str, Any] = {"cell": j, "n_synthetic": int(in_s.sum()), "n_holdout": int(in_h.sum()), "z": None}
        if row["n_synthetic"] >= min_cell and row["n_holdout"] >= min_cell:
            z = mann_whitney_z(geo.cell_d_s[in_s], geo.cell_d_h[in_h])
            row["z"] = rounded(z)
            weighted += row["n_holdout"] / n_h * z
            weights += row["n_holdout"] / n_h
        cells.append(row)
    used = [c for c in cells if c["z"] is not None]
    return {
        "C_T": rounded(weighted / weights) if weights else None,
        "z_global": rounded(mann_whitney_z(geo.d_s[s_mask, 0], geo.d_h[h_mask, 0])),
        "n_cells": geo.n_cells,
        "cells_used": len(used),
        "share_synthetic_in_used_cells": rounded(sum(c["n_synthetic"] for c in used) / max(1, int(s_mask.sum()))),
        "min_cell_size": min_cell,
        "cells": cells,
    }


def holdout_share(geo: _Geometry, s_mask: np.ndarray) -> dict[str, Any]:
    """Share of synthetic samples whose nearest real record is a training one, with T and H balanced.

    The larger of T and H is subsampled (seeded) to the size of the other, so a generator that learned the
    distribution and copied nothing lands ≈ 0.5; clearly above 0.5 (the interval excludes 0.5) means synthetic
    images are nearer the data they were trained on than to equally many fresh images: memorization. A copy of a
    training image left out by the subsampling does not count, so even pure copying reaches only
    0.5 + 0.5·|H|/|T| when |T| > |H|: a large holdout makes the test sharper.
    """
    assert geo.nearer_train is not None
    n = int(s_mask.sum())
    nearer = float(geo.nearer_train[s_mask].sum())
    lo, hi = wilson_interval(nearer, n)
    return {
        "share_nearer_train": rounded(nearer / n),
        "ci95": [rounded(lo), rounded(hi)],
        "n_synthetic": n,
        "n_per_side": geo.n_per_side,
    }


def _nndr(d: np.ndarray) -> np.ndarray:
    """Nearest / second-nearest distance; 1.0 where both are 0 (tied duplicates say nothing specific)."""
    if d.shape[1] < 2:
        return np.zeros(0)
    return np.where(d[:, 1] > 0, d[:, 0] / np.maximum(d[:, 1], 1e-12), 1.0)


def _share(values: np.ndarray | None) -> float | None:
    return None if values is None or len(values) == 0 else rounded(float(np.mean(values)))


def blocks(
    geo: _Geometry, s_mask: np.ndarray, h_mask: np.ndarray | None, threshold: float | None, *, hist: bool = False
) -> dict[str, Any]:
    """The metric blocks for the synthetic samples in `s_mask` (and holdout samples in `h_mask`)."""
    d_s = geo.d_s[s_mask]
    sim_s = 1.0 - d_s[:, 0] ** 2 / 2.0
    out: dict[str, Any] = {
        "n_synthetic": len(d_s),
        "n_holdout": 0 if h_mask is None else int(h_mask.sum()),
        "nn_similarity": {
            **percentiles(sim_s),
            "threshold": threshold,
            "share_at_or_above_threshold": None if threshold is None else _share(sim_s >= threshold),
        },
        "dcr": {"synthetic": percentiles(d_s[:, 0]), "holdout": None, "p5_ratio": None, "share_below_holdout_p5": None},
        "nndr": {"synthetic": percentiles(_nndr(d_s)), "holdout": None},
        "authenticity": {"share_authentic": _share(geo.authentic_s[s_mask]), "holdout_share_authentic": None},
        "holdout": None,
        "data_copying": None,
    }
    if hist:
        lo = min(float(sim_s.min()), 1.0 if threshold is None else threshold)
        lo = max(-1.0, min(math.floor(lo * 10) / 10, 0.9))
        out["histograms"] = {"nn_similarity": histogram(sim_s, lo, 1.0)}
    if h_mask is None or geo.d_h is None or not h_mask.any():
        return out
    d_h = geo.d_h[h_mask]
    p5_s, p5_h = np.percentile(d_s[:, 0], 5), np.percentile(d_h[:, 0], 5)
    out["dcr"].update(
        holdout=percentiles(d_h[:, 0]),
        p5_ratio=rounded(p5_s / p5_h) if p5_h > 0 else None,
        share_below_holdout_p5=_share(d_s[:, 0] < p5_h),
    )
    out["nndr"]["holdout"] = percentiles(_nndr(d_h))
    out["authenticity"]["holdout_share_authentic"] = _share(
        geo.authentic_h[h_mask] if geo.authentic_h is not None else None
    )
    out["holdout"] = holdout_share(geo, s_mask)
    out["data_copying"] = data_copying(geo, s_mask, h_mask)
    if hist:
        top = float(max(d_s[:, 0].max(), d_h[:, 0].max(), 1e-6))
        out["histograms"]["dcr_synthetic"] = histogram(d_s[:, 0], 0.0, top)
        out["histograms"]["dcr_holdout"] = histogram(d_h[:, 0], 0.0, top)
    return out


def compute_metrics(
    train_vectors: np.ndarray,
    synthetic_vectors: np.ndarray,
    holdout_vectors: np.ndarray | None = None,
    synthetic_labels: list[str] | None = None,
    train_labels: list[str] | None = None,
    threshold: float | None = None,
    *,
    holdout_labels: list[str] | None = None,
    min_class_size: int = MIN_CLASS_SIZE,
    seed: int = 0,
) -> dict[str, Any]:
    """Overall and per-class privacy metrics as a JSON-able dict (how to read each number: the docstrings above
    and privacy_audits/README.md).

    Per class means: the synthetic (and holdout) samples of that label, measured against the *whole* training
    set, so a synthetic image of one class that copies a training image of another still counts. A class with
    fewer than `min_class_size` synthetic samples is skipped (listed in `skipped_classes`); its holdout-based
    numbers need as many holdout samples of the class. `train_labels` (optional) only adds per-class counts.
    `threshold` is compared with the cosine similarity of this embedding space.
    """
    t, s = _unit(train_vectors), _unit(synthetic_vectors)
    h = None if holdout_vectors is None or len(holdout_vectors) == 0 else _unit(holdout_vectors)
    if len(t) < 2 or len(s) == 0:
        return {"computed": False, "reason": f"need >= 2 training and >= 1 synthetic vectors, got {len(t)}/{len(s)}"}
    geo = measure(t, s, h, seed)
    all_h = None if h is None else np.ones(len(h), bool)
    result: dict[str, Any] = {
        "computed": True,
        "space": "audit embedding; distance = sqrt(2 - 2 cos) between unit vectors; exact search",
        "n_train": len(t),
        **blocks(geo, np.ones(len(s), bool), all_h, threshold, hist=True),
        "per_class": {},
        "skipped_classes": {},
        "notes": [] if h is not None else ["no holdout set: DCR reference, holdout share and C_T need --holdout"],
    }
    if synthetic_labels is None:
        return result
    s_lab = np.asarray(synthetic_labels, dtype=object)
    h_lab = None if holdout_labels is None or h is None else np.asarray(holdout_labels, dtype=object)
    t_lab = None if train_labels is None else np.asarray(train_labels, dtype=object)
    for label in sorted(set(s_lab)):
        s_mask = s_lab == label
        if s_mask.sum() < min_class_size:
            result["skipped_classes"][label] = f"{int(s_mask.sum())} synthetic samples (< {min_class_size})"
            continue
        h_mask = None if h_lab is None else h_lab == label
        if h_mask is not None and h_mask.sum() < min_class_size:
            result["skipped_classes"][label] = (
                f"holdout metrics: {int(h_mask.sum())} holdout samples (< {min_class_size})"
            )
            h_mask = None
        block = blocks(geo, s_mask, h_mask, threshold)
        block["n_train"] = None if t_lab is None else int(np.sum(t_lab == label))
        result["per_class"][label] = block
    return result


def _unit(vectors: np.ndarray) -> np.ndarray:
    """float32 rows scaled to unit length (embedders already return them; this guards hand-made inputs)."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2:
        raise ValueError(f"expected an (n, dim) array, got shape {v.shape}")
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


class _Reservoir:
    """A uniform sample of at most `cap` (vector, label) rows of a stream (Vitter's algorithm R, seeded)."""

    def __init__(self, cap: int, rng: np.random.Generator) -> None:
        self.cap, self.rng, self.seen = cap, rng, 0
        self._chunks: list[np.ndarray] = []
        self.labels: list[str] = []

    @property
    def vectors(self) -> np.ndarray | None:
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0] if self._chunks else None

    def add(self, vectors: np.ndarray, labels: list[str]) -> None:
        vectors = np.asarray(vectors, dtype=np.float32)
        room = max(0, self.cap - len(self.labels))
        if room and len(vectors):
            self._chunks.append(vectors[:room].copy())
            self.labels += list(labels[:room])
        rest, rest_labels = vectors[room:], list(labels[room:])
        seen = self.seen + min(room, len(vectors)) + np.arange(1, len(rest) + 1)
        self.seen += len(vectors)
        slots = (self.rng.random(len(rest)) * seen).astype(np.int64)  # uniform in [0, seen_i)
        replace = np.flatnonzero(slots < self.cap)
        if len(replace):
            kept = self.vectors
            assert kept is not None
            for i in replace:  # in order: a later row replacing the same slot wins
                kept[slots[i]], self.labels[slots[i]] = rest[i], rest_labels[i]


class MetricsInputs:
    """Collects T, S and H embeddings batch by batch (bounded: at most `max_per_set` each, uniformly sampled),
    so the auditor can feed it as it embeds and `compute` can run once at the end."""

    def __init__(self, max_per_set: int = MAX_PER_SET, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.sets: dict[Role, _Reservoir] = {
            role: _Reservoir(max_per_set, rng) for role in ("train", "synthetic", "holdout")
        }

    def add(self, role: Role, vectors: np.ndarray, labels: list[str] | None = None) -> None:
        """Add one batch of (n, dim) unit vectors of `role`, with their class labels ("" when unknown)."""
        self.sets[role].add(vectors, list(labels) if labels is not None else [""] * len(vectors))

    def compute(self, threshold: float | None = None, **options: Any) -> dict[str, Any]:
        """`compute_metrics` on everything collected; `counts` says how many were seen and how many used."""
        t, s, h = self.sets["train"], self.sets["synthetic"], self.sets["holdout"]
        if t.vectors is None or s.vectors is None:
            return {"computed": False, "reason": "no training or synthetic embeddings were collected"}
        result = compute_metrics(
            t.vectors,
            s.vectors,
            h.vectors if h.seen else None,
            s.labels,
            t.labels if any(t.labels) else None,
            threshold,
            holdout_labels=h.labels if h.seen else None,
            seed=self.seed,
            **options,
        )
        result["counts"] = {role: {"seen": r.seen, "used": len(r.labels)} for role, r in self.sets.items()}
        return result


def embed_into(
    inputs: MetricsInputs,
    role: Role,
    source: Any,
    embedder: Embedder,
    *,
    limit: int | None = None,
    progress: Progress | None = None,
) -> int:
    """Embed a source batch by batch into `inputs` (at most `limit` images); returns how many were embedded."""
    from synthgen.audit.index.train_index import batched, source_total

    total = source_total(source)
    total = min(total, limit) if total is not None and limit is not None else (total or limit)
    done = 0
    for batch in batched(source):
        batch = batch[: None if limit is None else max(0, limit - done)]
        if not batch:
            break
        inputs.add(role, embedder.embed([sample.image for sample in batch]), [sample.label for sample in batch])
        done += len(batch)
        if progress:
            progress(f"embedding {role} images", done, total)
    return done
