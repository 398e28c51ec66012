"""Fidelity metrics on constructed cases with known answers, and the feature spaces (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from synthgen.errors import SynthgenError
from synthgen.evaluation.features import DEFAULT_FEATURES, FeatureSpace, get_feature_space, weights_sha256
from synthgen.evaluation.fidelity import (
    RADIUS_CAP_QUANTILE,
    capped_radii,
    fd,
    fidelity_metrics,
    frechet_distance,
    kid,
    knn_radii,
    prdc,
    prdc_settings,
    vendi_score,
)

KEYS = {"n_real", "n_synthetic", "fd", "fd_ci", "kid_mean", "kid_std", "precision", "recall", "density"}
KEYS |= {"coverage", "vendi", "vendi_real", "kid_subset_size", "n_bootstrap"}


def gaussian(n: int, d: int = 8, seed: int = 0, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def test_identical_sets() -> None:
    x = gaussian(200)
    metrics = fidelity_metrics(x, x, n_bootstrap=20)
    assert set(metrics) == KEYS
    json.dumps(metrics)  # plain numbers
    assert metrics["fd"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["precision"] == metrics["recall"] == metrics["coverage"] == 1.0
    assert metrics["vendi"] == pytest.approx(metrics["vendi_real"])
    assert metrics["fd_ci"][0] <= metrics["fd_ci"][1]


def test_disjoint_far_sets() -> None:
    metrics = fidelity_metrics(gaussian(200), gaussian(200, seed=1, shift=50.0), n_bootstrap=10)
    assert metrics["precision"] == metrics["recall"] == metrics["density"] == metrics["coverage"] == 0.0
    assert metrics["fd"] > 8 * 50.0**2 * 0.9 and metrics["kid_mean"] > 0


def test_collapsed_set() -> None:
    real = gaussian(300)
    collapsed = np.repeat(gaussian(1, seed=5), 300, axis=0)
    metrics = fidelity_metrics(real, collapsed, n_bootstrap=10)
    assert metrics["vendi"] == pytest.approx(1.0)
    assert metrics["recall"] <= 0.01 and metrics["coverage"] <= 0.05
    assert metrics["vendi_real"] > 5


def test_frechet_distance_closed_form() -> None:
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    var1, var2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = 5.0 + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)  # diagonal covariances
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected)
    # Sampled: N(0, I) vs N(1, 4 I) in 4 dims -> |mu|^2 + d (1 - 2)^2 = 4 + 4.
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20000, 4)), 1.0 + 2.0 * rng.normal(size=(20000, 4))
    assert fd(a, b) == pytest.approx(8.0, rel=0.05)


def test_kid_near_zero_for_one_distribution() -> None:
    same_mean, same_std = kid(gaussian(500), gaussian(500, seed=1), subsets=50, subset_size=200)
    shifted_mean, _ = kid(gaussian(500), gaussian(500, seed=1, shift=1.0), subsets=50, subset_size=200)
    assert abs(same_mean) < 3 * same_std and shifted_mean > 20 * abs(same_mean)


def test_prdc_and_vendi_known_values() -> None:
    eye = np.eye(6)
    assert vendi_score(eye) == pytest.approx(6.0)
    assert vendi_score(np.vstack([eye[:3], eye[:3]])) == pytest.approx(3.0)
    real = gaussian(100)
    half = prdc(real, np.vstack([real[:50], gaussian(50, seed=3, shift=40.0)]), k=3)
    assert half["precision"] == pytest.approx(0.5)  # the copies are inside real balls, the far half is not
    assert 0.5 <= half["coverage"] < 1.0  # the copied half is covered; the rest only partly


def test_prdc_same_distribution_and_identical_density() -> None:
    real, other = gaussian(300), gaussian(300, seed=1)
    same = prdc(real, other)
    assert all(0.85 <= same[m] <= 1.0 for m in ("precision", "recall", "coverage"))
    assert 0.85 <= same["density"] <= 1.1
    identical = prdc(real, real)
    assert identical["precision"] == identical["recall"] == identical["coverage"] == 1.0
    # Every real ball holds its own row and k-1 others (the k-th sits on the boundary): density 1 uncapped,
    # a little less with the widest tenth of the balls capped.
    assert prdc(real, real, cap=None)["density"] == pytest.approx(1.0)
    assert 0.9 <= identical["density"] < 1.0


def test_capped_radii() -> None:
    radii = np.arange(1.0, 11.0)
    np.testing.assert_allclose(capped_radii(radii, 0.9), np.minimum(radii, np.quantile(radii, 0.9)))
    assert capped_radii(radii, None) is radii
    assert np.all(capped_radii(knn_radii(gaussian(50), 5), 0.5) <= np.median(knn_radii(gaussian(50), 5)))
    with pytest.raises(SynthgenError, match="quantile"):
        prdc(gaussian(20), gaussian(20), cap=0.0)


def test_real_outliers_do_not_vouch_for_far_images() -> None:
    """A few isolated real images have wide k-NN balls: uncapped, images thrown near them count as realistic."""
    e1 = np.eye(8)[0]
    rng = np.random.default_rng(0)
    real = np.vstack([gaussian(300), 25 * e1 + 6 * rng.normal(size=(6, 8))])  # 6 outliers, far and scattered
    degraded = 25 * e1 + gaussian(300, seed=2)  # every synthetic image far from the real bulk
    uncapped = prdc(real, degraded, cap=None)
    assert uncapped["precision"] == 1.0 and uncapped["density"] > 1.0  # the outliers' balls take them all in
    capped = prdc(real, degraded)
    assert capped["precision"] == capped["density"] == capped["recall"] == capped["coverage"] == 0.0


def test_synthetic_outliers_do_not_fake_recall() -> None:
    """The mirror case: a collapsed set plus a few scattered images must not 'recall' the real variety."""
    e1 = np.eye(8)[0]
    rng = np.random.default_rng(1)
    real = gaussian(300)
    synth = np.vstack([25 * e1 + gaussian(294, seed=3), 6 * rng.normal(size=(6, 8))])
    assert prdc(real, synth, cap=None)["recall"] > 0.5
    assert prdc(real, synth)["recall"] < 0.1


def test_prdc_settings_name_the_estimator() -> None:
    settings = prdc_settings()
    assert settings["estimator"] == "knn-capped" and settings["k"] == 5
    assert settings["radius_cap_quantile"] == RADIUS_CAP_QUANTILE == 0.9
    assert prdc_settings(cap=None)["estimator"] == "knn"
    json.dumps(settings)
    x, y = gaussian(100), gaussian(100, seed=1)
    chosen = {m: fidelity_metrics(x, y, n_bootstrap=2, cap=None)[m] for m in ("precision", "recall")}
    assert chosen == {m: prdc(x, y, cap=None)[m] for m in ("precision", "recall")}


@pytest.mark.parametrize(
    ("real", "synth", "message"),
    [
        (np.zeros((0, 4)), gaussian(10, 4), "empty"),
        (gaussian(1, 4), gaussian(10, 4), "at least 2"),
        (gaussian(10, 4), gaussian(10, 5), "differ in size"),
        (np.zeros(10), gaussian(10, 4), "2-D"),
        (np.full((10, 4), np.nan), gaussian(10, 4), "NaN"),
    ],
)
def test_bad_inputs(real: np.ndarray, synth: np.ndarray, message: str) -> None:
    with pytest.raises(SynthgenError, match=message):
        fidelity_metrics(real, synth, n_bootstrap=2)


def test_k_too_large() -> None:
    with pytest.raises(SynthgenError, match="k=5"):
        prdc(gaussian(5), gaussian(20))


def blob_image(seed: int, size: int = 96, grayscale: bool = False) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    canvas = np.zeros((size, size, 3), np.float32)
    for _ in range(5):
        cy, cx, radius = *rng.uniform(0, size, 2), rng.uniform(size / 12, size / 4)
        canvas += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))[..., None] * rng.uniform(-1, 1, 3)
    canvas += rng.normal(0, 0.05, canvas.shape)
    canvas = (canvas - canvas.min()) / (canvas.max() - canvas.min() + 1e-6)
    image = Image.fromarray((20 + 215 * canvas).astype(np.uint8), "RGB")
    return image.convert("L") if grayscale else image


def test_default_feature_space() -> None:
    space = get_feature_space()
    assert isinstance(space, FeatureSpace) and space.name == DEFAULT_FEATURES
    assert get_feature_space("default").sha256 == space.sha256 and len(space.sha256) == 64
    images = [blob_image(i) for i in range(4)]
    rows = space.features(images)
    assert rows.shape == (4, space.dim) and rows.dtype == np.float32 and np.all(np.isfinite(rows))
    np.testing.assert_array_equal(get_feature_space().features(images), rows)  # deterministic
    np.testing.assert_allclose(space.features(images[1:2]), rows[1:2], atol=1e-6)  # batch-independent
    gray = blob_image(7, grayscale=True)
    np.testing.assert_allclose(space.features([gray]), space.features([gray.convert("RGB")]), atol=1e-6)
    assert space.features([]).shape == (0, space.dim)


def test_unknown_feature_space() -> None:
    with pytest.raises(SynthgenError, match="unknown feature space"):
        get_feature_space("nope")
    with pytest.raises(SynthgenError, match="not found"):
        get_feature_space("dinov2:/no/such/model")


def test_blur_raises_fd_on_real_images(real_data_dir: Path) -> None:
    files = sorted((real_data_dir / "colonoscopy-real" / "images").iterdir())
    images = [Image.open(f).convert("RGB") for f in files[:120]]
    space = get_feature_space()
    reference, heldout = space.features(images[::2]), space.features(images[1::2])
    blurred = space.features([image.filter(ImageFilter.GaussianBlur(2)) for image in images[1::2]])
    assert fd(reference, blurred) > 2 * fd(reference, heldout)


def test_dinov2_plug_in_gives_raw_features(dinov2_dir: Path) -> None:
    space = get_feature_space(f"dinov2:{dinov2_dir}")
    rows = space.features([blob_image(i) for i in range(3)])
    assert rows.shape == (3, 32) and space.dim == 32 and rows.dtype == np.float32
    assert not np.allclose(np.linalg.norm(rows, axis=1), 1.0)  # raw, not L2-normalised
    assert space.sha256 == weights_sha256(dinov2_dir)
    np.testing.assert_allclose(get_feature_space(f"dinov2:{dinov2_dir}").features([blob_image(0)]), rows[:1], atol=1e-5)


def test_inception_torchscript_plug_in(tmp_path: Path) -> None:
    import torch

    class TinyInception(torch.nn.Module):
        """Stands in for NVlabs' inception-2015-12-05.pt: 0..255 NCHW in, pool features with return_features."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 16, 7, stride=8)

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            pooled = torch.relu(self.conv(x / 255.0)).mean(dim=(2, 3))
            return pooled if return_features else pooled.softmax(dim=1)

    torch.manual_seed(0)
    path = tmp_path / "inception.pt"
    torch.jit.script(TinyInception().eval()).save(str(path))
    space = get_feature_space(f"inception:{path}?allow_pickle=true")
    rows = space.features([blob_image(i) for i in range(2)])
    assert rows.shape == (2, 16) and space.sha256 == weights_sha256(path)
    assert not np.allclose(rows.sum(axis=1), 1.0)  # the features, not the softmax
