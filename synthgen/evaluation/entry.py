"""`run_eval`: is a synthetic set worth using? Fidelity, diversity, label fidelity and downstream utility.

What `synthgen eval` and a recipe's `eval:` block run. Three sets: the real reference (the generator's training
data, by default), the synthetic set, and real test images of patients the generator never saw. Fidelity and
diversity compare synthetic with real features class by class; the same numbers between the real reference
and the test set (`baseline`) say what "as good as real" looks like at these sample sizes. Utility trains the
same classifier on real, synthetic and both, and tests it on the test patients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthgen import __version__
from synthgen.atomic import write_json, write_text
from synthgen.errors import SynthgenError
from synthgen.evaluation.image_sets import (
    ImageSet,
    check_classes,
    read_set,
    rename,
    restrict,
    shared_images,
    split_by_group,
)
from synthgen.provenance import utc_now
from synthgen.runtime import Reporter, use_cpu_threads
from synthgen.sources.base import Source
from synthgen.sources.spec import SourceSpec

MIN_PER_CLASS = 6  # precision/recall use k = 5 neighbours: a class needs more images than that on each side
MAX_SHARED_SHARE = 0.05  # test images also in the training data above this share: refuse (below: warn)
Spec = SourceSpec | str | Path | Source


@dataclass
class EvalRequest:
    """What to evaluate and how; the recipe's `eval:` block and the CLI's options fill the same fields."""

    real: Spec
    synthetic: Spec
    out_dir: Path
    test: Spec | None = None
    features: str | None = None  # feature space name (None: the default, which needs no downloaded weights)
    split_by: str | None = None  # without `test`: hold out whole groups of `real` by this column as the test set
    seeds: int = 3
    bootstrap: int = 200  # resamples for the FD confidence interval
    max_per_class: int | None = 500
    classifier_resolution: int = 64
    classifier_steps: int = 150  # AdamW steps per classifier (the same budget in every regime)
    learning_curve: bool = True  # also train at 10/25/50/100 images per class (one seed)
    utility: bool = True
    medvqa: bool = False
    show_real_images: bool = False
    label_map: dict[str, str] | None = None  # real/test data label -> class name (a recipe's `labels:`)
    trained_on: str | None = None  # the model's training-data fingerprint (model info), to refuse a leaked test
    base_dir: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # recorded as-is in eval.json (e.g. the build's recipe)


def run_eval(request: EvalRequest, reporter: Reporter | None = None) -> dict[str, Any]:
    """Read the sets, measure, write `eval.json` and `report.html` into `out_dir`; return eval.json's contents."""
    reporter = reporter or Reporter()
    started = time.time()
    if request.classifier_resolution % 8:
        raise SynthgenError(f"--classifier-resolution: must be a multiple of 8, got {request.classifier_resolution}")

    use_cpu_threads()
    real, synthetic, test = _read_sets(request, reporter)
    classes = check_classes(real, synthetic, test)
    real = restrict(real, classes)
    test = restrict(test, classes) if test is not None else None
    shared = _check_test(request, real, test, reporter)

    from synthgen.evaluation.features import get_feature_space

    space = get_feature_space(request.features)
    features = {s.name: _features(space, s, reporter) for s in (real, synthetic, test) if s is not None}
    summary: dict[str, Any] = _header(request, space, real, synthetic, test, shared)
    fidelity = (features["real"], features["synthetic"], real.labels, synthetic.labels, classes, request.bootstrap)
    summary.update(_fidelity(*fidelity))
    if test is not None:
        baseline = (features["real"], features["test"], real.labels, test.labels, classes, request.bootstrap)
        summary["baseline"] = _fidelity(*baseline)
    if request.utility:
        summary.update(_utility(request, real, synthetic, test, features, classes, reporter))
    if request.medvqa:
        from synthgen.evaluation.medvqa import medvqa_scores

        summary["medvqa"] = medvqa_scores(
            features["synthetic"], synthetic.prompts, features["real"], real.labels, synthetic.labels
        )
    summary["seconds"] = round(time.time() - started, 1)
    _write(request, summary, real, synthetic)
    return summary


def _read_sets(request: EvalRequest, reporter: Reporter) -> tuple[ImageSet, ImageSet, ImageSet | None]:
    def read(name: str, spec: Spec) -> ImageSet:
        reporter.log(f"eval: reading {name} images")
        return read_set(
            name, spec, base_dir=request.base_dir, max_per_class=request.max_per_class, progress=reporter.log
        )

    real = rename(read("real", request.real), request.label_map)
    synthetic = read("synthetic", request.synthetic)
    test = rename(read("test", request.test), request.label_map) if request.test is not None else None
    if test is None and request.split_by:
        real, test = split_by_group(real, request.split_by)
        reporter.log(f"eval: {len(test)} real images of held-out {request.split_by} groups are the test set")
    return real, synthetic, test


def _check_test(request: EvalRequest, real: ImageSet, test: ImageSet | None, reporter: Reporter) -> list[str]:
    """Refuse a test set the generator trained on; warn about a few images shared with the training data."""
    if test is None:
        return []
    if request.trained_on and test.fingerprint == request.trained_on:
        raise SynthgenError(
            f"--test: {test.description} is the model's training data (same fingerprint); evaluate on patients "
            "the generator never saw"
        )
    shared = shared_images(test, real)
    if len(shared) > MAX_SHARED_SHARE * len(test):
        raise SynthgenError(
            f"--test: {len(shared)} of {len(test)} test images are also in the real/training data (e.g. "
            f"{shared[0]}); the generator has seen them, so the test would flatter it: use held-out patients"
        )
    if shared:
        reporter.log(
            f"eval: WARNING {len(shared)} of {len(test)} test images have the same pixels as a training image "
            f"(duplicates in the data?), e.g. {shared[0]}",
            warning=True,
        )
    return shared


def _features(space: Any, images: ImageSet, reporter: Reporter, chunk: int = 64) -> np.ndarray:
    rows = []
    for start in range(0, len(images), chunk):
        rows.append(np.asarray(space.features(images.images[start : start + chunk]), dtype=np.float32))
        reporter.progress(f"eval: {space.name} features of {images.name}", min(start + chunk, len(images)), len(images))
    return np.concatenate(rows)


def _fidelity(
    real: np.ndarray,
    synthetic: np.ndarray,
    real_labels: list[str],
    synthetic_labels: list[str],
    classes: list[str],
    bootstrap: int,
) -> dict[str, Any]:
    """fidelity_metrics overall and per class (a class with too few images on a side gets a `skipped` reason)."""
    from synthgen.evaluation.fidelity import fidelity_metrics

    result = dict(fidelity_metrics(real, synthetic, n_bootstrap=bootstrap))
    per_class: dict[str, Any] = {}
    real_labels_a, synthetic_labels_a = np.asarray(real_labels), np.asarray(synthetic_labels)
    for label in classes:
        r, s = real[real_labels_a == label], synthetic[synthetic_labels_a == label]
        if min(len(r), len(s)) < MIN_PER_CLASS:
            per_class[label] = {
                "n_real": len(r),
                "n_synthetic": len(s),
                "skipped": f"fewer than {MIN_PER_CLASS} images on a side",
            }
            continue
        per_class[label] = fidelity_metrics(r, s, n_bootstrap=bootstrap)
    result["per_class"] = per_class
    return result


def _utility(
    request: EvalRequest,
    real: ImageSet,
    synthetic: ImageSet,
    test: ImageSet | None,
    features: dict[str, np.ndarray],
    classes: list[str],
    reporter: Reporter,
) -> dict[str, Any]:
    """TRTR / TSTR / TRTR+S and label fidelity on the test patients (needs a test set)."""
    if test is None:
        reporter.log("eval: no test set (--test or --split-by): utility and label fidelity are skipped", warning=True)
        return {"utility": {"skipped": "no real test set: pass --test or --split-by"}}
    from synthgen.evaluation.utility import LabelledImages, utility_metrics

    channels = 1 if all(s.is_grayscale() for s in (real, synthetic, test)) else 3
    side = request.classifier_resolution

    def labelled(images: ImageSet) -> LabelledImages:
        return LabelledImages.from_images(images.images, images.labels, classes, side=side, channels=channels)

    from synthgen.evaluation.classify import Budget

    result = utility_metrics(
        labelled(real),
        labelled(synthetic),
        labelled(test),
        seeds=tuple(range(request.seeds)),
        real_features=features["real"],
        synthetic_features=features["synthetic"],
        test_features=features["test"],
        budget=Budget(steps=request.classifier_steps, resolution=side),
        curve_sizes=None if not request.learning_curve else (10, 25, 50, 100),
        progress=reporter.log,
    )
    label_fidelity = result.pop("label_fidelity", None)
    return {"utility": result, "label_fidelity": label_fidelity}


def _header(
    request: EvalRequest,
    space: Any,
    real: ImageSet,
    synthetic: ImageSet,
    test: ImageSet | None,
    shared: list[str],
) -> dict[str, Any]:
    from synthgen.evaluation.fidelity import prdc_settings

    sets = {s.name: s for s in (real, synthetic, test) if s is not None}
    return {
        "synthgen_version": __version__,
        "created_at": utc_now(),
        "features": {
            "name": space.name,
            "sha256": space.sha256,
            "dim": int(space.dim),
            "description": space.description,
        },
        "classes": sorted(set(synthetic.labels)),
        "seeds": list(range(request.seeds)),
        "sets": {
            name: {"description": s.description, "images": len(s), "per_class": s.counts(), "skipped": s.skipped}
            for name, s in sets.items()
        },
        "settings": {
            "max_per_class": request.max_per_class,
            "split_by": request.split_by,
            "classifier_resolution": request.classifier_resolution,
            "classifier_steps": request.classifier_steps,
            "prdc": prdc_settings(),
        },
        "test_shared_with_real": len(shared),
        **request.extra,
    }


def _write(request: EvalRequest, summary: dict[str, Any], real: ImageSet, synthetic: ImageSet) -> None:
    from synthgen.evaluation.eval_report import render_eval_report

    out = Path(request.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html = render_eval_report(summary, real, synthetic, show_real_images=request.show_real_images)
    write_json(out / "eval.json", summary)
    write_text(out / "report.html", html)
