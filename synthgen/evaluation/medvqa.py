"""The ImageCLEFmed MEDVQA-GI 2025 image-synthesis scores (subtask 2), computed as the challenge's scorer does.

So a user can put a synthgen set next to the challenge's published numbers. The official script
(`medvqa/submission_samples/gi-2025/submission_task2.py` in SushantGautam/MedVQA) embeds every image with
BiomedCLIP (the CLS token, L2-normalised), groups the generated images by prompt (10 per prompt), pairs
consecutive prompts (two phrasings of one objective), and scores:
  fidelity  = mean over pairs of 1000 / (1 + FID), FID averaged over the pair's two prompts against the real
              images of that objective;
  agreement = mean cosine similarity between the images of the two prompts of a pair;
  diversity = mean pairwise Euclidean distance among the images of one prompt;
  FBD       = FID of all generated images against all real reference images.
The scorer walks `range(0, n_prompts // 2, 2)`, i.e. only the first half of the prompts; `official_pairing`
keeps that quirk so numbers match, False scores every pair. Our real reference for a prompt is the real images
of its class label. Use it with `--features open_clip:/path/to/BiomedCLIP` (or a transformers port of it
through `dinov2:/path?pooling=cls`) to be in the scorer's space; in any other space the numbers are not
comparable with the leaderboard.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synthgen.errors import SynthgenError

FIDELITY_SCALE = 1000.0


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def scorer_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The scorer's FID: `sqrtm(sigma1 @ sigma2).real`, no regularisation (kept for identical numbers)."""
    import warnings

    from scipy.linalg import LinAlgWarning, sqrtm

    mu1, mu2 = a.mean(0), b.mean(0)
    sigma1, sigma2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():  # 10 images in 512 dimensions: always singular, as in the official scorer
        warnings.simplefilter("ignore", LinAlgWarning)
        covmean = np.real(sqrtm(sigma1 @ sigma2))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * covmean))


def mean_pairwise_distance(x: np.ndarray) -> float:
    """scipy's `pdist(x).mean()`: the mean Euclidean distance over all unordered pairs."""
    from scipy.spatial.distance import pdist

    return float(pdist(x).mean())


def medvqa_scores(
    synthetic: np.ndarray,
    prompts: list[str],
    real: np.ndarray,
    real_labels: list[str],
    synthetic_labels: list[str],
    *,
    official_pairing: bool = True,
) -> dict[str, Any]:
    """The challenge's fidelity, agreement, diversity and FBD for synthetic features grouped by prompt."""
    synthetic, real = _unit(synthetic), _unit(real)
    order = list(dict.fromkeys(prompts))  # prompts in generation order, as the scorer's prompt indices
    rows = {p: np.flatnonzero(np.asarray(prompts) == p) for p in order}
    if len(order) < 2 or min(len(r) for r in rows.values()) < 2:
        raise SynthgenError("medvqa: needs at least 2 prompts with at least 2 images each (the challenge uses 10)")
    real_labels_a = np.asarray(real_labels)
    stop = len(order) // 2 if official_pairing else len(order) - 1
    fids, agreements, diversities, generated, references = [], [], [], [], []
    for i in range(0, stop, 2):
        a, b = synthetic[rows[order[i]]], synthetic[rows[order[i + 1]]]
        label = synthetic_labels[int(rows[order[i]][0])]
        ref = real[real_labels_a == label]
        if len(ref) < 2:
            raise SynthgenError(f"medvqa: fewer than 2 real images of class {label!r} to compare with")
        fids.append((scorer_fid(a, ref) + scorer_fid(b, ref)) / 2)
        agreements.append(float((a @ b.T).mean()))
        diversities += [mean_pairwise_distance(a), mean_pairwise_distance(b)]
        generated += [a, b]
        references.append(ref)
    if not fids:
        raise SynthgenError("medvqa: the official pairing scores no pair with fewer than 4 prompts")
    return {
        "fidelity": float(np.mean(FIDELITY_SCALE / (1 + np.asarray(fids)))),
        "agreement": float(np.mean(agreements)),
        "diversity": float(np.mean(diversities)),
        "FBD": scorer_fid(np.concatenate(generated), np.concatenate(references)),
        "pairs": len(fids),
        "prompts": len(order),
        "official_pairing": official_pairing,
        "fidelity_scale": FIDELITY_SCALE,
    }
