"""Statistics behind the privacy metrics: exact k-NN on unit vectors, percentiles and histograms as JSON,
Wilson intervals, the Mann–Whitney z-score and a small seeded k-means (numpy + FAISS; no scipy dependency).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
HISTOGRAM_BINS = 40


def rounded(value: float | None) -> float | None:
    """Round for JSON; NaN/inf become None (JSON has no NaN)."""
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def percentiles(values: np.ndarray) -> dict[str, float | None]:
    """p1 … p99 plus min / mean / max of `values`; all None for an empty set."""
    names = ["min", "mean", *(f"p{q}" for q in PERCENTILES), "max"]
    if len(values) == 0:
        return dict.fromkeys(names, None)
    v = np.asarray(values, dtype=np.float64)
    out = {"min": v.min(), "mean": v.mean(), **{f"p{q}": np.percentile(v, q) for q in PERCENTILES}, "max": v.max()}
    return {name: rounded(out[name]) for name in names}


def histogram(values: np.ndarray, lo: float, hi: float, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Fixed-range histogram as JSON (the report draws from these, so report and summary.json agree)."""
    counts, edges = np.histogram(np.clip(np.asarray(values, dtype=np.float64), lo, hi), bins=bins, range=(lo, hi))
    return {"edges": [round(float(e), 6) for e in edges], "counts": [int(c) for c in counts]}


def to_distance(similarity: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit vectors -> their Euclidean distance sqrt(2 - 2 cos)."""
    return np.sqrt(np.clip(2.0 - 2.0 * np.asarray(similarity, dtype=np.float64), 0.0, 4.0))


def knn(queries: np.ndarray, base: np.ndarray, k: int, *, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-`k` of each query in `base`: (n, k) distances (ascending) and row ids into `base`.

    With `exclude_self` (queries is base) each row's own entry is dropped, by id, so duplicates still count.
    """
    import faiss

    queries = np.ascontiguousarray(queries, dtype=np.float32)
    base = np.ascontiguousarray(base, dtype=np.float32)
    k = min(k, len(base) - (1 if exclude_self else 0))
    if k <= 0 or len(queries) == 0:
        return np.zeros((len(queries), 0)), np.zeros((len(queries), 0), dtype=np.int64)
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    sims, ids = index.search(queries, k + 1 if exclude_self else k)
    if exclude_self:
        own = ids == np.arange(len(queries))[:, None]
        own[~own.any(axis=1), -1] = True  # self not among the top k+1 (ties): drop the last instead
        sims = sims[~own].reshape(len(queries), k)
        ids = ids[~own].reshape(len(queries), k)
    return to_distance(sims), ids.astype(np.int64)


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sound near 0 and 1, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mann_whitney_z(generated: np.ndarray, test: np.ndarray) -> float:
    """z-score of the Mann–Whitney U of `generated` vs `test` (tie-corrected): < 0 when generated values are smaller."""
    m, n = len(generated), len(test)
    values = np.concatenate([generated, test]).astype(np.float64)
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]
    u = ranks[:m].sum() - m * (m + 1) / 2.0  # pairs with generated > test (ties half)
    total = m + n
    tie = float((counts.astype(np.float64) ** 3 - counts).sum()) / (total * (total - 1)) if total > 1 else 0.0
    var = m * n / 12.0 * ((total + 1) - tie)
    return 0.0 if var <= 0 else float((u - m * n / 2.0) / math.sqrt(var))


def kmeans(vectors: np.ndarray, k: int, rng: np.random.Generator, iterations: int = 25) -> np.ndarray:
    """Lloyd's k-means with k-means++ seeding; returns the (k', dim) centroids of non-empty cells (deterministic)."""
    x = np.asarray(vectors, dtype=np.float64)
    centroids = [x[rng.integers(len(x))]]
    d2 = ((x - centroids[0]) ** 2).sum(1)
    for _ in range(1, k):
        if d2.sum() <= 0:
            break
        centroids.append(x[rng.choice(len(x), p=d2 / d2.sum())])
        d2 = np.minimum(d2, ((x - centroids[-1]) ** 2).sum(1))
    c = np.asarray(centroids)
    for _ in range(iterations):
        cells = assign_cells(x, c)
        c_new = np.asarray([x[cells == j].mean(0) for j in range(len(c)) if np.any(cells == j)])
        if c_new.shape == c.shape and np.allclose(c_new, c):
            break
        c = c_new
    return c


def assign_cells(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of each row (squared Euclidean)."""
    x = np.asarray(vectors, dtype=np.float64)
    d2 = (centroids**2).sum(1)[None, :] - 2.0 * x @ centroids.T
    return np.argmin(d2, axis=1)
