"""Privacy metrics on constructed embeddings whose answer is known: copies vs. fresh draws of the same distribution."""

from __future__ import annotations

import json

import numpy as np
import pytest

from synthgen.audit.privacy.metrics import MetricsInputs, compute_metrics
from synthgen.audit.privacy.stats import knn, mann_whitney_z, wilson_interval

DIM = 32
LABELS = ("polyp", "ulcer", "normal")


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def draw(rng: np.random.Generator, n: int, spread: float = 0.35) -> tuple[np.ndarray, list[str]]:
    """n points around three class centres (fixed across calls: same distribution), with their labels."""
    centres = np.random.default_rng(123).normal(size=(3, DIM)) * 3 / np.sqrt(DIM)
    classes = rng.integers(3, size=n)
    return unit(centres[classes] + spread * rng.normal(size=(n, DIM))), [LABELS[c] for c in classes]


@pytest.fixture(scope="module")
def real() -> dict[str, tuple[np.ndarray, list[str]]]:
    rng = np.random.default_rng(0)
    return {"train": draw(rng, 240), "holdout": draw(rng, 240), "fresh": draw(rng, 240)}


def test_copies_of_training_data_are_caught(real) -> None:
    (t, t_lab), (h, h_lab) = real["train"], real["holdout"]
    idx = np.random.default_rng(1).integers(len(t), size=200)
    s, s_lab = t[idx], [t_lab[i] for i in idx]
    m = compute_metrics(t, s, h, s_lab, t_lab, 0.95, holdout_labels=h_lab)
    json.dumps(m, allow_nan=False)  # JSON-able, no NaN
    assert m["computed"] and m["n_train"] == 240 and m["n_synthetic"] == 200 and m["n_holdout"] == 240
    assert m["nn_similarity"]["share_at_or_above_threshold"] == 1.0
    assert m["dcr"]["synthetic"]["p50"] < 1e-3 and m["dcr"]["synthetic"]["max"] < 1e-2
    assert m["dcr"]["p5_ratio"] < 0.01 and m["dcr"]["share_below_holdout_p5"] == 1.0
    assert m["authenticity"]["share_authentic"] == 0.0 and m["authenticity"]["holdout_share_authentic"] > 0.5
    assert m["holdout"]["share_nearer_train"] > 0.95 and m["holdout"]["ci95"][0] > 0.9
    assert m["data_copying"]["C_T"] < -5 and m["data_copying"]["z_global"] < -5
    assert m["nndr"]["synthetic"]["p50"] < 0.01  # each copy is far nearer its original than any other record
    for label in LABELS:
        block = m["per_class"][label]
        assert block["holdout"]["share_nearer_train"] > 0.9 and block["authenticity"]["share_authentic"] == 0.0
        assert block["n_train"] == t_lab.count(label)


def test_fresh_samples_of_the_same_distribution_look_private(real) -> None:
    (t, t_lab), (h, h_lab), (s, s_lab) = real["train"], real["holdout"], real["fresh"]
    m = compute_metrics(t, s, h, s_lab, t_lab, 0.95, holdout_labels=h_lab)
    share = m["holdout"]
    assert 0.38 < share["share_nearer_train"] < 0.62 and share["ci95"][0] < 0.5 < share["ci95"][1]
    assert abs(m["data_copying"]["C_T"]) < 2.5 and m["data_copying"]["cells_used"] >= 5
    assert 0.7 < m["dcr"]["p5_ratio"] < 1.4
    authentic, reference = m["authenticity"]["share_authentic"], m["authenticity"]["holdout_share_authentic"]
    assert authentic > 0.5 and abs(authentic - reference) < 0.12
    assert m["nn_similarity"]["share_at_or_above_threshold"] == 0.0
    assert sum(m["histograms"]["nn_similarity"]["counts"]) == 240
    assert sum(m["histograms"]["dcr_holdout"]["counts"]) == 240


def test_without_holdout_only_train_based_metrics() -> None:
    rng = np.random.default_rng(2)
    (t, _), (s, s_lab) = draw(rng, 100), draw(rng, 50)
    m = compute_metrics(t, s, None, s_lab, None, None)
    assert m["holdout"] is None and m["data_copying"] is None and m["dcr"]["holdout"] is None
    assert m["nn_similarity"]["share_at_or_above_threshold"] is None and m["notes"]
    assert m["authenticity"]["share_authentic"] is not None
    assert set(m["per_class"]) | set(m["skipped_classes"]) == set(s_lab)


def test_small_classes_are_skipped_with_a_reason() -> None:
    rng = np.random.default_rng(3)
    (t, t_lab), (h, h_lab) = draw(rng, 100), draw(rng, 100)
    s, s_lab = draw(rng, 40)
    s_lab = ["rare" if i < 3 else label for i, label in enumerate(s_lab)]
    m = compute_metrics(t, s, h, s_lab, t_lab, 0.9, holdout_labels=h_lab, min_class_size=5)
    assert "rare" not in m["per_class"] and "3 synthetic samples" in m["skipped_classes"]["rare"]


def test_too_few_vectors_is_reported_not_raised() -> None:
    m = compute_metrics(np.ones((1, 4)), np.ones((3, 4)))
    assert m == {"computed": False, "reason": m["reason"]} and "training" in m["reason"]


def test_metrics_inputs_accumulates_and_caps() -> None:
    rng = np.random.default_rng(4)
    (t, t_lab), (s, s_lab), (h, h_lab) = draw(rng, 120), draw(rng, 60), draw(rng, 60)
    inputs = MetricsInputs()
    for start in range(0, 120, 50):  # batch by batch, as the auditor feeds it
        inputs.add("train", t[start : start + 50], t_lab[start : start + 50])
    inputs.add("synthetic", s, s_lab)
    inputs.add("holdout", h, h_lab)
    direct = compute_metrics(t, s, h, s_lab, t_lab, 0.9, holdout_labels=h_lab)
    fed = inputs.compute(0.9)
    assert fed["counts"]["train"] == {"seen": 120, "used": 120}
    assert fed["holdout"] == direct["holdout"] and fed["data_copying"] == direct["data_copying"]

    capped = MetricsInputs(max_per_set=30, seed=1)
    values = np.arange(3000, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32)
    for start in range(0, 3000, 256):
        capped.add("train", values[start : start + 256], [str(i) for i in range(start, min(start + 256, 3000))])
    kept = capped.sets["train"]
    assert kept.seen == 3000 and len(kept.labels) == 30 and kept.vectors.shape == (30, 2)
    assert [str(int(v)) for v in kept.vectors[:, 0]] == kept.labels  # vectors and labels stay paired
    assert kept.vectors[:, 0].mean() > 600  # a sample of the whole stream, not its first 30 rows


def test_knn_excludes_self_by_id_even_for_duplicates() -> None:
    base = unit(np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32))
    d, ids = knn(base, base, 1, exclude_self=True)
    assert ids[:, 0].tolist() == [1, 0, 0] or ids[:, 0].tolist() == [1, 0, 1]
    assert d[0, 0] == pytest.approx(0.0, abs=1e-6) and d[2, 0] == pytest.approx(np.sqrt(2), abs=1e-6)


def test_mann_whitney_and_wilson_match_reference_values() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=40), rng.normal(0.5, size=60)
    stats = pytest.importorskip("scipy.stats")
    u = stats.mannwhitneyu(a, b, use_continuity=False).statistic
    expected = (u - 40 * 60 / 2) / np.sqrt(40 * 60 * 101 / 12)
    assert mann_whitney_z(a, b) == pytest.approx(expected, rel=1e-9)
    assert mann_whitney_z(a, b) < 0  # a is smaller
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
