"""Downstream utility of a synthetic set: does a classifier trained on it work on real test images?

One fixed classifier (`classify.SmallCNN`) under one fixed budget is trained for three regimes, each over
several seeds: TRTR (train real, test real: the reference), TSTR (train synthetic, test real) and TRTR+S
(real + synthetic, test real: augmentation value). The TRTR models also label the synthetic images (label
fidelity: do they look like their class to a real-data classifier?), and a learning curve shows how many
images per class each source is worth. With feature vectors, a linear probe repeats the three regimes cheaply.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from synthgen.errors import SynthgenError

Progress = Callable[[str], None]
REGIMES = ("trtr", "tstr", "trtr_plus_synthetic")
METRICS = ("balanced_accuracy", "macro_f1", "macro_auroc", "accuracy")
CURVE_SIZES = (10, 25, 50, 100)
CI_METHOD = (
    "95% Student t-interval over seeds (mean +- t(0.975, n-1) * sd / sqrt(n)), clipped to [0, 1]; "
    "[mean, mean] for one value"
)


@dataclass
class LabelledImages:
    """Images with labels: pixels uint8 (n, C, H, W), labels int64 indices into `classes`, optional groups.

    `groups` (patient or sequence id per image) lets the evaluation check that no group is on both the train
    and the test side, which would inflate TRTR.
    """

    pixels: np.ndarray
    labels: np.ndarray
    classes: list[str]
    groups: list[str] | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.classes = list(self.classes)
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 4 or self.pixels.shape[1] not in (1, 3):
            raise SynthgenError(f"pixels must be uint8 (n, 1|3, H, W), got {self.pixels.dtype} {self.pixels.shape}")
        if self.labels.shape != (len(self.pixels),):
            raise SynthgenError(f"{len(self.labels)} labels for {len(self.pixels)} images")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise SynthgenError(f"labels must index the {len(self.classes)} classes {self.classes}")
        if self.groups is not None and len(self.groups) != len(self.pixels):
            raise SynthgenError(f"{len(self.groups)} groups for {len(self.pixels)} images")

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_images(
        cls,
        images: Sequence[Image.Image],
        labels: Sequence[str],
        classes: Sequence[str],
        *,
        side: int = 64,
        channels: int = 1,
        groups: Sequence[str] | None = None,
    ) -> LabelledImages:
        """PIL images with label names, resized (not cropped: a finding may sit near the edge) to side x side."""
        classes = list(classes)
        unknown = sorted(set(labels) - set(classes))
        if unknown:
            raise SynthgenError(f"labels {unknown} are not among the classes {classes}")
        mode = "L" if channels == 1 else "RGB"
        pixels = np.zeros((len(images), channels, side, side), dtype=np.uint8)
        for i, image in enumerate(images):
            array = np.asarray(image.convert(mode).resize((side, side), Image.Resampling.BILINEAR))
            pixels[i] = array[None] if channels == 1 else array.transpose(2, 0, 1)
        index = {name: i for i, name in enumerate(classes)}
        label_ids = np.array([index[name] for name in labels], dtype=np.int64)
        return cls(pixels, label_ids, classes, list(groups) if groups is not None else None)

    def subset(self, rows: np.ndarray) -> LabelledImages:
        groups = [self.groups[i] for i in rows] if self.groups is not None else None
        return LabelledImages(self.pixels[rows], self.labels[rows], self.classes, groups)


def _remap(images: LabelledImages, classes: list[str], role: str) -> np.ndarray:
    """`images`' labels as indices into `classes` (matched by name); a class `classes` lacks is an error."""
    missing = [name for name in images.classes if name not in classes]
    if missing:
        raise SynthgenError(f"{role} classes {missing} are not among the real classes {classes}")
    lookup = np.array([classes.index(name) for name in images.classes], dtype=np.int64)
    return lookup[images.labels]


def _check_inputs(real: LabelledImages, synthetic: LabelledImages, test: LabelledImages) -> dict[str, np.ndarray]:
    for role, images in (("real_train", real), ("synthetic", synthetic), ("test", test)):
        if len(images) == 0:
            raise SynthgenError(f"utility: the {role} set is empty")
    labels = {"real": real.labels, "synthetic": _remap(synthetic, real.classes, "synthetic")}
    labels["test"] = _remap(test, real.classes, "test")
    if len(np.unique(labels["test"])) < 2:
        raise SynthgenError("utility: the test set holds only one class; balanced accuracy and AUROC need two")
    return labels


def summarise(values: Sequence[float | None]) -> dict[str, Any]:
    """{mean, ci: [lo, hi], values} of one metric over seeds (see CI_METHOD); None values are left out."""
    from scipy import stats

    kept = np.array([v for v in values if v is not None], dtype=np.float64)
    if kept.size == 0:
        return {"mean": None, "ci": [None, None], "values": list(values)}
    mean = float(kept.mean())
    half = 0.0
    if kept.size > 1:
        half = float(stats.t.ppf(0.975, kept.size - 1) * kept.std(ddof=1) / np.sqrt(kept.size))
    low, high = max(mean - half, 0.0), min(mean + half, 1.0)  # every metric here is a share in [0, 1]
    return {"mean": mean, "ci": [low, high], "values": [float(v) for v in kept]}


def _per_class_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Up to `per_class` rows of every class, drawn without replacement (seeded)."""
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(rows))


class _Runner:
    """Trains and scores the CNN on prepared tensors, keeping the TRTR models for label fidelity."""

    def __init__(self, tensors: dict[str, Any], labels: dict[str, np.ndarray], n_classes: int, budget: Any) -> None:
        self.x, self.y, self.n_classes, self.budget = tensors, labels, n_classes, budget

    def train_set(self, regime: str) -> tuple[Any, np.ndarray]:
        import torch

        if regime == "trtr":
            return self.x["real"], self.y["real"]
        if regime == "tstr":
            return self.x["synthetic"], self.y["synthetic"]
        x = torch.cat([self.x["real"], self.x["synthetic"]])
        return x, np.concatenate([self.y["real"], self.y["synthetic"]])

    def fit_score(self, x: Any, y: np.ndarray, seed: int, budget: Any = None) -> tuple[dict[str, Any], Any]:
        from synthgen.evaluation.classify import classification_metrics, predict_proba, train_cnn

        model = train_cnn(x, y, self.n_classes, budget or self.budget, seed)
        metrics = classification_metrics(self.y["test"], predict_proba(model, self.x["test"]), self.n_classes)
        return metrics, model


def _say(progress: Progress | None, line: str) -> None:
    if progress is not None:
        progress(line)


def utility_metrics(
    real_train: LabelledImages,
    synthetic: LabelledImages,
    test: LabelledImages,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    real_features: np.ndarray | None = None,
    synthetic_features: np.ndarray | None = None,
    test_features: np.ndarray | None = None,
    budget: Any = None,
    curve_sizes: Sequence[int] | None = CURVE_SIZES,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """TRTR, TSTR and TRTR+S with one classifier and budget over `seeds`, label fidelity, a learning curve.

    Class lists are matched by name: synthetic and test classes must be among `real_train.classes`, whose
    order gives the label indices. `budget` is a `classify.Budget` (default: 150 steps of 64 at 64 px).
    `curve_sizes`: images per class for the learning curve (first seed only; None or () to skip it).
    The three feature arrays, when all given, add the same regimes with a linear probe.
    """
    from synthgen.evaluation.classify import Budget, prepare_pixels
    from synthgen.runtime import use_cpu_threads

    started = time.perf_counter()
    labels = _check_inputs(real_train, synthetic, test)
    seeds = [int(seed) for seed in seeds]
    if not seeds:
        raise SynthgenError("utility: give at least one seed")
    budget = budget or Budget()
    threads = use_cpu_threads()
    channels, n_classes = real_train.pixels.shape[1], len(real_train.classes)
    sets = {"real": real_train, "synthetic": synthetic, "test": test}
    tensors = {k: prepare_pixels(v.pixels, channels, budget.resolution) for k, v in sets.items()}
    runner = _Runner(tensors, labels, n_classes, budget)
    per_seed, fidelity_runs = _run_regimes(runner, seeds, progress)
    result: dict[str, Any] = {r: _aggregate(per_seed[r]) for r in REGIMES}
    result["confusion"] = {r: _sum_confusion(per_seed[r]) for r in REGIMES}
    result["gap"] = _gap(result)
    result["label_fidelity"] = _label_fidelity(fidelity_runs, labels["synthetic"], real_train.classes, result)
    if curve_sizes:
        result["learning_curve"] = _learning_curve(runner, per_seed, curve_sizes, seeds[0], progress)
    features = (real_features, synthetic_features, test_features)
    if all(f is not None for f in features):
        result["linear_probe"] = _linear_probe(features, labels, n_classes)  # type: ignore[arg-type]
    result["classifier"] = _classifier_record(budget, channels, n_classes, seeds, threads)
    result["data"] = _data_record(real_train, synthetic, test, labels)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _run_regimes(
    runner: _Runner, seeds: list[int], progress: Progress | None
) -> tuple[dict[str, list[dict[str, Any]]], list[np.ndarray]]:
    """Test metrics of every regime and seed, and the TRTR models' predictions on the synthetic images."""
    per_seed: dict[str, list[dict[str, Any]]] = {r: [] for r in REGIMES}
    fidelity_runs: list[np.ndarray] = []
    total, done = len(REGIMES) * len(seeds), 0
    for regime in REGIMES:
        x, y = runner.train_set(regime)
        for seed in seeds:
            done += 1
            _say(progress, f"utility: {regime} seed {seed} ({done}/{total}, {len(y)} training images)")
            metrics, model = runner.fit_score(x, y, seed)
            per_seed[regime].append(metrics)
            if regime == "trtr":
                fidelity_runs.append(_predicted(model, runner.x["synthetic"]))
    return per_seed, fidelity_runs


def _classifier_record(budget: Any, channels: int, n_classes: int, seeds: list[int], threads: int) -> dict[str, Any]:
    """What a reader needs to reproduce the numbers: architecture, size, budget, seeds, CI method."""
    from synthgen.evaluation.classify import SmallCNN

    return {
        "architecture": SmallCNN.name,
        "parameters": sum(p.numel() for p in SmallCNN(channels, n_classes).parameters()),
        "channels": channels,
        "resolution": budget.resolution,
        "budget": budget.record(),
        "optimizer": "AdamW, one-cycle learning rate",
        "sampling": "class-balanced batches (weights 1 / class count)",
        "augmentation": "translation and brightness/contrast jitter; no flips (laterality)",
        "batchnorm": "statistics recomputed on un-augmented training images after training",
        "seeds": list(seeds),
        "ci": CI_METHOD,
        "threads": threads,
    }


def _predicted(model: Any, x: Any) -> np.ndarray:
    from synthgen.evaluation.classify import predict_proba

    return predict_proba(model, x).argmax(axis=1)


def _aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {m: summarise([run[m] for run in runs]) for m in METRICS}


def _sum_confusion(runs: list[dict[str, Any]]) -> list[list[int]]:
    return np.sum([np.array(run["confusion"]) for run in runs], axis=0).astype(int).tolist()


def _gap(result: dict[str, Any]) -> dict[str, Any]:
    """TSTR and TRTR+S against TRTR in balanced accuracy: the headline numbers."""
    trtr = result["trtr"]["balanced_accuracy"]["mean"]
    tstr = result["tstr"]["balanced_accuracy"]["mean"]
    mixed = result["trtr_plus_synthetic"]["balanced_accuracy"]["mean"]
    return {
        "tstr_minus_trtr": tstr - trtr,
        "tstr_over_trtr": tstr / trtr if trtr else None,
        "trtr_plus_synthetic_minus_trtr": mixed - trtr,
    }


def _label_fidelity(
    runs: list[np.ndarray], labels: np.ndarray, classes: list[str], result: dict[str, Any]
) -> dict[str, Any]:
    """Share of synthetic images the real-data classifiers assign to their own label (mean over seeds)."""
    agree = np.mean([run == labels for run in runs], axis=0)
    per_class = {classes[c]: float(agree[labels == c].mean()) for c in np.unique(labels)}
    balanced = float(np.mean(list(per_class.values())))
    real_bacc = result["trtr"]["balanced_accuracy"]["mean"]
    return {
        "agreement": float(agree.mean()),
        "balanced_agreement": balanced,
        "per_class": per_class,
        "real_classifier_balanced_accuracy": real_bacc,
        "ratio": balanced / real_bacc if real_bacc else None,
        "note": "ratio = balanced agreement on synthetic / the same classifiers' balanced accuracy on real test",
    }


def _learning_curve(
    runner: _Runner,
    per_seed: dict[str, list[dict[str, Any]]],
    sizes: Sequence[int],
    seed: int,
    progress: Progress | None,
) -> dict[str, Any]:
    """Balanced accuracy of TRTR and TSTR by images per class (one seed): {regime: {per class: value}}.

    The last point of each regime is its whole training set (the main run of `seed`), keyed by its mean
    images per class. A small subset gets `Budget.scaled_to` its size (the same steps for TRTR and TSTR at
    each size): with the default sizes and budget the curve costs about two full trainings per regime.
    """
    curve: dict[str, Any] = {
        "seed": seed,
        "steps": {str(size): runner.budget.scaled_to(size * runner.n_classes).steps for size in sizes},
    }
    for regime in ("trtr", "tstr"):
        x, y = runner.train_set(regime)
        counts = np.bincount(y)
        points: dict[str, float] = {}
        for size in sizes:
            if size >= counts.max():  # no smaller than the whole set
                continue
            rows = _per_class_subset(y, size, seed)
            budget = runner.budget.scaled_to(len(rows))
            _say(progress, f"utility: learning curve {regime} at {size} per class ({len(rows)} images)")
            metrics, _ = runner.fit_score(x[rows], y[rows], seed, budget)
            points[str(size)] = metrics["balanced_accuracy"]
        whole = round(len(y) / int((counts > 0).sum()))
        points[str(whole)] = per_seed[regime][0]["balanced_accuracy"]
        curve[regime] = points
    return curve


def _linear_probe(features: tuple[np.ndarray, ...], labels: dict[str, np.ndarray], n_classes: int) -> dict[str, Any]:
    """The three regimes with a logistic-regression probe; deterministic, so one fit each."""
    from synthgen.evaluation.classify import LinearProbe, classification_metrics, train_linear_probe

    real, synthetic, test = (np.asarray(f, dtype=np.float64) for f in features)
    for name, array, key in (("real", real, "real"), ("synthetic", synthetic, "synthetic"), ("test", test, "test")):
        if array.ndim != 2 or len(array) != len(labels[key]):
            raise SynthgenError(f"{name} features: expected ({len(labels[key])}, d), got {array.shape}")
    train = {
        "trtr": (real, labels["real"]),
        "tstr": (synthetic, labels["synthetic"]),
        "trtr_plus_synthetic": (
            np.concatenate([real, synthetic]),
            np.concatenate([labels["real"], labels["synthetic"]]),
        ),
    }
    out: dict[str, Any] = {"classifier": LinearProbe.name, "seeds": "deterministic (one fit)"}
    for regime, (x, y) in train.items():
        probe = train_linear_probe(x, y, n_classes)
        metrics = classification_metrics(labels["test"], probe.predict_proba(test), n_classes)
        out[regime] = {m: summarise([metrics[m]]) for m in METRICS}
        out.setdefault("confusion", {})[regime] = metrics["confusion"]
    return out


def _data_record(
    real: LabelledImages, synthetic: LabelledImages, test: LabelledImages, labels: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Sizes and class counts of each set, classes the synthetic set lacks, train/test group overlap."""
    classes = real.classes
    counts = {
        k: {classes[c]: int(n) for c, n in enumerate(np.bincount(v, minlength=len(classes)))} for k, v in labels.items()
    }
    overlap = None
    if real.groups is not None and test.groups is not None:
        overlap = len(set(real.groups) & set(test.groups))
    return {
        "classes": classes,
        "sizes": {k: int(len(v)) for k, v in labels.items()},
        "class_counts": counts,
        "synthetic_missing_classes": [c for c in classes if c not in synthetic.classes or counts["synthetic"][c] == 0],
        "test_missing_classes": [c for c in classes if counts["test"][c] == 0],
        "train_test_shared_groups": overlap,
    }
