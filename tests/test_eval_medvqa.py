"""The MEDVQA-GI 2025 image-synthesis scores, on constructed features with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from synthgen.errors import SynthgenError
from synthgen.evaluation.fidelity import fd
from synthgen.evaluation.medvqa import FIDELITY_SCALE, medvqa_scores, scorer_fid


def clouds(seed: int, n: int = 40, d: int = 6, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def test_scorer_fid_is_the_frechet_distance() -> None:
    a, b = clouds(0), clouds(1, shift=0.5)
    assert scorer_fid(a, b) == pytest.approx(fd(a, b), rel=1e-6)
    assert scorer_fid(a, a) == pytest.approx(0.0, abs=1e-6)


def test_pairs_agreement_diversity_and_official_half() -> None:
    eye = np.eye(4)
    # prompts p0..p3, 3 images each; p0 and p1 show the same three orthogonal unit images
    synthetic = np.concatenate([eye[:3], eye[:3], eye[1:], eye[1:]])
    prompts = [p for p in ("p0", "p1", "p2", "p3") for _ in range(3)]
    labels = ["a"] * 6 + ["b"] * 6
    real = np.concatenate([eye[:3], eye[1:]])
    real_labels = ["a"] * 3 + ["b"] * 3
    official = medvqa_scores(synthetic, prompts, real, real_labels, labels)
    assert official["pairs"] == 1 and official["prompts"] == 4  # range(0, 4 // 2, 2): the scorer's first half
    assert official["agreement"] == pytest.approx(1 / 3)  # mean of the 3x3 identity's entries
    assert official["diversity"] == pytest.approx(np.sqrt(2))  # orthogonal unit vectors
    assert official["fidelity"] == pytest.approx(FIDELITY_SCALE, rel=1e-3)  # the images are the reference
    every = medvqa_scores(synthetic, prompts, real, real_labels, labels, official_pairing=False)
    assert every["pairs"] == 2 and not every["official_pairing"]


def test_too_few_images_or_prompts_is_an_error() -> None:
    with pytest.raises(SynthgenError, match="at least 2 prompts"):
        medvqa_scores(np.eye(3), ["a", "b", "c"], np.eye(3), ["x"] * 3, ["x"] * 3)
    with pytest.raises(SynthgenError, match="fewer than 2 real images"):
        medvqa_scores(clouds(0, 8), ["a"] * 4 + ["b"] * 4, clouds(1, 3), ["y"] * 3, ["x"] * 8, official_pairing=False)
