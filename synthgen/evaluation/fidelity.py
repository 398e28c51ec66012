"""Fidelity and diversity of a synthetic set against real images, measured on feature rows (numpy/scipy only).

Every metric takes two (n, d) feature matrices, one row per image, from one feature space (features.py):
  fd        Fréchet distance of Gaussians fitted to the rows (the FID formula on any features), with a
            bootstrap CI because a single FD number hides how much it moves with the sample;
  kid       unbiased MMD² with the cubic polynomial kernel (Bińkowski et al. 2018), mean and std over subsets;
            unbiased, so it is comparable across set sizes where FD is not;
  prdc      precision / recall / density / coverage with k-NN balls (Kynkäänniemi et al. 2019, Naeem et al.
            2020): fidelity and diversity separately, which one FD number cannot tell apart. Each set's radii
            are capped at their 0.9 quantile (`prdc_settings`), so a few outliers with wide neighbourhoods
            cannot vouch for far-off images;
  vendi     exp of the entropy of the cosine-similarity kernel's eigenvalues (Friedman & Dieng 2023): the
            effective number of distinct images, 1 for a set of copies.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synthgen.errors import SynthgenError

_CHUNK = 1024  # rows per block of pairwise distances: 1024 x 5000 float64 is 40 MB
PRDC_K = 5
# Every k-NN radius above this quantile of its set's radii is lowered to it. An isolated image's k-th
# neighbour is far, so its ball is wide and counts any image thrown into the empty space around it as
# realistic (precision, density) or as covering (recall): the known outlier weakness of k-NN precision.
# Kynkäänniemi et al. (2019) drop the largest half of the balls for their realism score for this reason;
# capping the top tenth keeps every ball and leaves ordinary ones untouched (docs/evaluation.md).
RADIUS_CAP_QUANTILE = 0.9


def _rows(features: np.ndarray, what: str, minimum: int = 2) -> np.ndarray:
    """A float64 (n, d) matrix, or a one-line error saying what is wrong with it."""
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise SynthgenError(f"{what} features must be a 2-D (images, dims) array, got shape {array.shape}")
    if array.shape[0] == 0:
        raise SynthgenError(f"{what} set is empty: no images to measure")
    if array.shape[0] < minimum:
        raise SynthgenError(f"{what} set has {array.shape[0]} image(s); these metrics need at least {minimum}")
    if not np.all(np.isfinite(array)):
        raise SynthgenError(f"{what} features contain NaN or infinite values")
    return array


def _pair(real: np.ndarray, synth: np.ndarray, minimum: int = 2) -> tuple[np.ndarray, np.ndarray]:
    real, synth = _rows(real, "real", minimum), _rows(synth, "synthetic", minimum)
    if real.shape[1] != synth.shape[1]:
        raise SynthgenError(
            f"real and synthetic features differ in size ({real.shape[1]} vs {synth.shape[1]} dims): "
            "use one feature space for both"
        )
    return real, synth


def _gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance (negative round-off eigenvalues clipped to 0)."""
    values, vectors = np.linalg.eigh(sigma)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """|mu1 - mu2|² + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2).

    tr sqrt(S1 S2) is the sum of the square roots of the eigenvalues of S1 S2, which are those of the
    symmetric PSD matrix sqrt(S1) S2 sqrt(S1): two `eigh` calls instead of scipy's `sqrtm` (the same number,
    no complex round-off, no eps offset for singular covariances when n < d, and ~50x faster at d = 768, which
    the bootstrap needs).
    """
    diff = mu1 - mu2
    root = _psd_sqrt(sigma1)
    eigenvalues = np.linalg.eigvalsh(root @ sigma2 @ root)
    trace_covmean = float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_covmean)
    return max(value, 0.0)


def fd(real: np.ndarray, synth: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to the real and the synthetic rows (float64)."""
    real, synth = _pair(real, synth)
    return frechet_distance(*_gaussian(real), *_gaussian(synth))


def fd_bootstrap_ci(real: np.ndarray, synth: np.ndarray, n_bootstrap: int = 200, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of FD: both sets resampled with replacement, `n_bootstrap` times.

    FD is biased upwards at small n, so the interval says how much the number moves with the sample, not
    where the population FD lies.
    """
    real, synth = _pair(real, synth)
    if n_bootstrap < 1:
        raise SynthgenError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_bootstrap):
        r = real[rng.integers(0, len(real), len(real))]
        s = synth[rng.integers(0, len(synth), len(synth))]
        values.append(frechet_distance(*_gaussian(r), *_gaussian(s)))
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def kid_subset_size(n_real: int, n_synthetic: int) -> int:
    return min(1000, max(2, min(n_real, n_synthetic) // 2))


def kid(
    real: np.ndarray, synth: np.ndarray, subsets: int = 100, subset_size: int | None = None, seed: int = 0
) -> tuple[float, float]:
    """Kernel inception distance: unbiased MMD² with k(x, y) = (x·y/d + 1)³, (mean, std) over random subsets.

    Subsets default to half the smaller set (at most 1000): whole-set subsets, clean-fid's rule below 1000
    images, would all be the same draw and report a spread of 0.
    """
    real, synth = _pair(real, synth)
    m = kid_subset_size(len(real), len(synth)) if subset_size is None else int(subset_size)
    if not 2 <= m <= min(len(real), len(synth)):
        raise SynthgenError(f"KID subset size {m} must be between 2 and the smaller set's size")
    d = real.shape[1]
    rng = np.random.default_rng(seed)
    values = np.empty(subsets)
    for i in range(subsets):
        x = synth[rng.choice(len(synth), m, replace=False)]
        y = real[rng.choice(len(real), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        same = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values[i] = same - 2.0 * kxy.sum() / (m * m)
    return float(values.mean()), float(values.std())


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _distances(a: np.ndarray, b: np.ndarray, b_norms: np.ndarray) -> np.ndarray:
    """Euclidean distances of the rows of `a` (a chunk) to all rows of `b`."""
    squared = _sq_norms(a)[:, None] + b_norms[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(squared, 0.0))


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of every row to its k-th nearest other row (exact, in chunks)."""
    norms = _sq_norms(x)
    radii = np.empty(len(x))
    for start in range(0, len(x), _CHUNK):
        block = _distances(x[start : start + _CHUNK], x, norms)
        # Column k of the sorted row: column 0 is the row itself (distance 0).
        radii[start : start + len(block)] = np.partition(block, k, axis=1)[:, k]
    return radii


def capped_radii(radii: np.ndarray, quantile: float | None) -> np.ndarray:
    """k-NN radii with every radius above the set's `quantile` radius lowered to it (None: unchanged)."""
    if quantile is None:
        return radii
    if not 0.0 < quantile <= 1.0:
        raise SynthgenError(f"radius cap quantile must be in (0, 1], got {quantile}")
    return np.minimum(radii, np.quantile(radii, quantile))


def prdc_settings(k: int = PRDC_K, cap: float | None = RADIUS_CAP_QUANTILE) -> dict[str, Any]:
    """How `prdc` measured: recorded next to the numbers, as a change of estimator changes them."""
    radii = "k-NN radii" if cap is None else "k-NN radii of each set capped at the radius_cap_quantile of its radii"
    return {
        "estimator": "knn" if cap is None else "knn-capped",
        "k": int(k),
        "radius_cap_quantile": cap,
        "definition": f"precision/recall: Kynkaanniemi et al. 2019, density/coverage: Naeem et al. 2020, on {radii}",
    }


def prdc(
    real: np.ndarray, synth: np.ndarray, k: int = PRDC_K, cap: float | None = RADIUS_CAP_QUANTILE
) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with exact k-NN radii, capped at `cap`.

    A real row's ball has the distance to its k-th nearest real row as radius, lowered to the `cap` quantile
    of the real radii (synthetic balls likewise among synthetic rows); `cap=None` is the uncapped original.
    Identical sets still score precision = recall = coverage = 1, since every row lies in its own ball.
    """
    real, synth = _pair(real, synth)
    if not 1 <= k < min(len(real), len(synth)):
        raise SynthgenError(
            f"k={k} nearest neighbours needs more images than k in both sets "
            f"(real {len(real)}, synthetic {len(synth)}); lower k or add images"
        )
    real_radii, synth_radii = capped_radii(knn_radii(real, k), cap), capped_radii(knn_radii(synth, k), cap)
    real_norms = _sq_norms(real)
    inside_real = np.zeros(len(synth))  # per synthetic row: how many real balls contain it
    nearest_synth = np.full(len(real), np.inf)  # per real row: distance to its nearest synthetic row
    recalled = np.zeros(len(real), dtype=bool)  # per real row: inside some synthetic ball
    for start in range(0, len(synth), _CHUNK):
        chunk = synth[start : start + _CHUNK]
        dist = _distances(chunk, real, real_norms)  # (chunk, n_real)
        inside_real[start : start + len(chunk)] = (dist < real_radii[None, :]).sum(axis=1)
        nearest_synth = np.minimum(nearest_synth, dist.min(axis=0))
        recalled |= (dist < synth_radii[start : start + len(chunk), None]).any(axis=0)
    return {
        "precision": float((inside_real > 0).mean()),
        "recall": float(recalled.mean()),
        "density": float(inside_real.sum() / (k * len(synth))),
        "coverage": float((nearest_synth < real_radii).mean()),
    }


def vendi_score(features: np.ndarray) -> float:
    """Vendi score with the cosine kernel: exp(entropy of the eigenvalues of K/n), 1 for a set of copies."""
    x = _rows(features, "vendi", minimum=1)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    n, d = x.shape
    # K/n = X Xᵀ/n shares its non-zero eigenvalues with Xᵀ X/n, the smaller matrix when d < n.
    gram = (x.T @ x) / n if d < n else (x @ x.T) / n
    eigenvalues = np.linalg.eigvalsh(gram)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    eigenvalues = eigenvalues / eigenvalues.sum()
    return float(np.exp(-np.sum(eigenvalues * np.log(eigenvalues))))


def fidelity_metrics(
    real: np.ndarray,
    synthetic: np.ndarray,
    *,
    seed: int = 0,
    n_bootstrap: int = 200,
    k: int = PRDC_K,
    cap: float | None = RADIUS_CAP_QUANTILE,
) -> dict[str, Any]:
    """Every fidelity and diversity metric of `synthetic` against `real`, as plain JSON-ready numbers.

    Precision/recall/density/coverage use `prdc(k, cap)`; `prdc_settings(k, cap)` says so for a report.
    """
    real, synthetic = _pair(real, synthetic)
    kid_mean, kid_std = kid(real, synthetic, seed=seed)
    return {
        "n_real": int(len(real)),
        "n_synthetic": int(len(synthetic)),
        "fd": fd(real, synthetic),
        "fd_ci": fd_bootstrap_ci(real, synthetic, n_bootstrap=n_bootstrap, seed=seed),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "kid_subset_size": kid_subset_size(len(real), len(synthetic)),
        "n_bootstrap": n_bootstrap,
        **prdc(real, synthetic, k=k, cap=cap),
        "vendi": vendi_score(synthetic),
        "vendi_real": vendi_score(real),
    }
