"""Downstream utility: classification metrics on constructed cases, and TRTR / TSTR on a tiny separable problem."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from synthgen.errors import SynthgenError
from synthgen.evaluation.classify import (
    Budget,
    SmallCNN,
    augment,
    classification_metrics,
    train_cnn,
    train_linear_probe,
)
from synthgen.evaluation.utility import LabelledImages, summarise, utility_metrics

TINY = Budget(steps=20, batch_size=16, resolution=16)


def one_hot(labels: list[int], n: int) -> np.ndarray:
    return np.eye(n)[labels]


def test_perfect_prediction_scores_one() -> None:
    y = np.array([0, 1, 2, 2, 1, 0])
    m = classification_metrics(y, one_hot(list(y), 3), 3)
    assert (m["balanced_accuracy"], m["macro_f1"], m["macro_auroc"], m["accuracy"]) == (1.0, 1.0, 1.0, 1.0)
    assert m["confusion"] == [[2, 0, 0], [0, 2, 0], [0, 0, 2]] and m["auroc_left_out"] == []


def test_constant_prediction_is_chance() -> None:
    y = np.array([0, 0, 0, 0, 1, 2, 2, 3])  # imbalanced: plain accuracy would reward the majority
    proba = np.tile([0.4, 0.3, 0.2, 0.1], (len(y), 1))
    m = classification_metrics(y, proba)
    assert m["balanced_accuracy"] == pytest.approx(1 / 4)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["macro_auroc"] == pytest.approx(0.5)  # every score tied: each tie counts one half


def test_known_confusion_and_f1() -> None:
    y = np.array([0, 0, 1, 1, 2])
    pred = [0, 1, 1, 1, 0]
    m = classification_metrics(y, one_hot(pred, 3), 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0) / 3)
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) * 1 / (2 / 3 + 1), 0.0]
    assert m["macro_f1"] == pytest.approx(np.mean(f1))


def test_auroc_matches_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    proba = rng.integers(0, 5, (60, 3)).astype(float)  # many ties
    m = classification_metrics(y, proba, 3)
    expected = []
    for c in range(3):
        pos, neg = proba[y == c, c], proba[y != c, c]
        pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
        expected.append(np.mean(pairs))
    assert m["macro_auroc"] == pytest.approx(np.mean(expected))


def test_absent_class_left_out_of_auroc() -> None:
    y = np.array([0, 1, 0, 1])
    proba = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.6, 0.3, 0.1], [0.4, 0.5, 0.1]])
    m = classification_metrics(y, proba, 3)
    assert m["auroc_left_out"] == [2] and m["macro_auroc"] == 1.0
    assert m["per_class_recall"][2] is None and m["balanced_accuracy"] == 1.0


def test_metric_input_errors() -> None:
    with pytest.raises(SynthgenError, match="scores"):
        classification_metrics(np.array([0, 1]), np.zeros((3, 2)))
    with pytest.raises(SynthgenError, match="labels"):
        classification_metrics(np.array([0, 5]), np.zeros((2, 2)))


def test_summarise_t_interval() -> None:
    s = summarise([0.5, 0.6, 0.7])
    assert s["mean"] == pytest.approx(0.6) and s["ci"][0] < 0.5 and s["ci"][1] > 0.7
    assert summarise([0.4])["ci"] == [0.4, 0.4] and summarise([None])["mean"] is None


def squares(n_per_class: int, seed: int, side: int = 16) -> LabelledImages:
    """Class 0: dark images, class 1: bright ones, each with noise and a random small square."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1], n_per_class)
    base = np.where(labels == 1, 170, 70)[:, None, None, None]
    pixels = np.clip(base + rng.normal(0, 25, (len(labels), 1, side, side)), 0, 255).astype(np.uint8)
    for i in range(len(labels)):
        y, x = rng.integers(0, side - 4, 2)
        pixels[i, 0, y : y + 4, x : x + 4] = 255 - pixels[i, 0, y : y + 4, x : x + 4]
    groups = [f"s{seed}-p{i // 2}" for i in range(len(labels))]
    return LabelledImages(pixels, labels, ["dark", "bright"], groups)


def test_augment_keeps_shape_and_range() -> None:
    x = torch.rand(5, 1, 16, 16)
    out = augment(x, TINY, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    assert 50_000 < sum(p.numel() for p in SmallCNN(1, 4).parameters()) < 300_000


def test_training_is_deterministic_per_seed() -> None:
    data = squares(10, 0)
    x = torch.from_numpy(data.pixels).float() / 255
    a, b = (train_cnn(x, data.labels, 2, Budget(steps=3, batch_size=8, resolution=16), seed=1) for _ in range(2))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_utility_on_separable_problem() -> None:
    real, synthetic, test = squares(30, 0), squares(30, 1), squares(20, 2)
    features = [d.pixels.reshape(len(d), -1).mean(1, keepdims=True) for d in (real, synthetic, test)]
    lines: list[str] = []
    result = utility_metrics(
        real,
        synthetic,
        test,
        budget=TINY,
        curve_sizes=(5,),
        real_features=features[0],
        synthetic_features=features[1],
        test_features=features[2],
        progress=lines.append,
    )
    for regime in ("trtr", "tstr", "trtr_plus_synthetic"):
        assert result[regime]["balanced_accuracy"]["mean"] > 0.9, regime
        assert len(result[regime]["macro_auroc"]["values"]) == 3
        assert np.sum(result["confusion"][regime]) == 3 * len(test)
    assert result["label_fidelity"]["agreement"] > 0.9
    assert result["linear_probe"]["tstr"]["balanced_accuracy"]["mean"] > 0.9
    curve = result["learning_curve"]
    assert list(curve["tstr"]) == ["5", "30"] and curve["steps"] == {"5": TINY.steps}
    assert result["classifier"]["seeds"] == [0, 1, 2] and result["classifier"]["budget"]["steps"] == TINY.steps
    assert result["data"]["train_test_shared_groups"] == 0 and lines


def test_shuffled_synthetic_labels_give_chance_tstr() -> None:
    real, synthetic, test = squares(30, 0), squares(30, 1), squares(20, 2)
    # Labels independent of the image: within each true class, half keep their label and half swap.
    synthetic.labels = np.tile([0, 1], len(synthetic) // 2)
    result = utility_metrics(real, synthetic, test, seeds=range(6), budget=TINY, curve_sizes=None)
    assert result["trtr"]["balanced_accuracy"]["mean"] > 0.9
    # Each seed's model splits on some arbitrary direction (0 to 1 alone); over seeds it is chance.
    assert 0.3 < result["tstr"]["balanced_accuracy"]["mean"] < 0.7
    assert result["label_fidelity"]["agreement"] == pytest.approx(0.5, abs=0.1)
    assert "learning_curve" not in result


def test_synthetic_classes_mapped_by_name() -> None:
    real, test = squares(10, 0), squares(5, 2)
    only_bright = squares(10, 1).subset(np.arange(10, 20))
    renamed = LabelledImages(only_bright.pixels, np.zeros(10, np.int64), ["bright"])
    result = utility_metrics(real, renamed, test, seeds=(0,), budget=Budget(steps=2, batch_size=8, resolution=16))
    assert result["data"]["class_counts"]["synthetic"] == {"dark": 0, "bright": 10}
    assert result["data"]["synthetic_missing_classes"] == ["dark"]


def test_bad_inputs_raise() -> None:
    real, synthetic, test = squares(5, 0), squares(5, 1), squares(5, 2)
    alien = LabelledImages(synthetic.pixels, synthetic.labels, ["dark", "polyp"])
    with pytest.raises(SynthgenError, match=r"synthetic classes \['polyp'\]"):
        utility_metrics(real, alien, test)
    with pytest.raises(SynthgenError, match="only one class"):
        utility_metrics(real, synthetic, test.subset(np.arange(5)))
    with pytest.raises(SynthgenError, match="test set is empty"):
        utility_metrics(real, synthetic, test.subset(np.arange(0)))
    with pytest.raises(SynthgenError, match="uint8"):
        LabelledImages(np.zeros((2, 1, 4, 4), np.float32), np.zeros(2), ["a"])
    with pytest.raises(SynthgenError, match="not among the classes"):
        LabelledImages.from_images([Image.new("L", (8, 8))], ["cat"], ["dark", "bright"])


def test_from_images_and_linear_probe() -> None:
    images = [Image.new("RGB", (20, 10), (v, v, v)) for v in (10, 240)]
    data = LabelledImages.from_images(images, ["dark", "bright"], ["dark", "bright"], side=8, channels=1)
    assert data.pixels.shape == (2, 1, 8, 8) and list(data.labels) == [0, 1] and data.pixels[1].min() == 240
    x = np.r_[np.random.default_rng(0).normal(-2, 1, (20, 3)), np.random.default_rng(1).normal(2, 1, (20, 3))]
    y = np.repeat([0, 1], 20)
    probe = train_linear_probe(x, y, 2)
    assert classification_metrics(y, probe.predict_proba(x))["balanced_accuracy"] == 1.0
