"""Copy detection on real colonoscopy frames: recall per edit kind at 1% false positives, for each detector.

    python bench/bench_copy_detection.py [--detectors pixel,copydetect] [--edits 100] [--kinds REGEX] [--overlay]
                                         [--show-fp 10] [--show-misses 10]

Data: $SYNTHGEN_REAL_DATA/colonoscopy-real (default ../shared/data, next to the repo), read in place. The copy
set (bench/copyset.py) splits by sequence: training frames, edited copies of some of them (positives, one set
per edit kind) and frames of other sequences and centres (negatives). Prints, per detector: AUC, the
threshold that keeps false positives at 1% and the recall it gives overall and per edit kind, and the
recall / false-positive rate at the detector's fixed default threshold and at `threshold: auto`; then timings.
`--overlay` stamps the same text box on every image (scope furniture that must not make images copies).
`--kinds` keeps only the edit kinds matching a regular expression (e.g. `lesion|region`: the region crops).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from copyset import EDITS, REGION_EDITS, CopySet, build_copyset  # noqa: E402

from synthgen.audit.detection.calibrate import calibrate  # noqa: E402
from synthgen.audit.detection.detector import get_detector  # noqa: E402
from synthgen.sources.memory import MemorySource  # noqa: E402

TARGET_FPR = 0.01


def auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """P(positive > negative) + half the ties (Mann-Whitney)."""
    values = np.concatenate([positives, negatives])
    order = values.argsort(kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for value in np.unique(values):  # average ranks of ties
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return float(
        (ranks[: len(positives)].sum() - len(positives) * (len(positives) + 1) / 2) / (len(positives) * len(negatives))
    )


def threshold_at_fpr(negatives: np.ndarray, fpr: float) -> float:
    """Smallest threshold (flag if >=) whose false-positive rate is at most `fpr`."""
    allowed = int(np.floor(fpr * len(negatives)))
    ranked = np.sort(negatives)[::-1]
    return float(np.nextafter(ranked[allowed], np.inf)) if allowed < len(ranked) else float(ranked[-1])


def index_bytes(detector: object) -> int:
    """Bytes of the numpy arrays a fitted detector keeps per training set (features, codes, embeddings)."""
    seen: set[int] = set()

    def size(value: object, depth: int = 0) -> int:
        if id(value) in seen or depth > 4:
            return 0
        seen.add(id(value))
        if isinstance(value, np.ndarray):
            return value.nbytes
        if isinstance(value, (list, tuple)):
            return sum(size(item, depth + 1) for item in value)
        if isinstance(value, dict):
            return sum(size(item, depth + 1) for item in value.values())
        if hasattr(value, "__dict__") and type(value).__module__.startswith("synthgen"):
            return sum(size(item, depth + 1) for item in vars(value).values())
        return 0

    return size(detector)


def evaluate(name: str, data: CopySet, show_fp: int, show_misses: int = 0) -> dict[str, float]:
    detector = get_detector(name)
    started = time.perf_counter()
    detector.fit(MemorySource(data.train, "train"))
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    auto, calibration = calibrate(detector, MemorySource(data.train, "train"), target_fpr=TARGET_FPR)
    calibrate_s = time.perf_counter() - started

    started = time.perf_counter()
    scores: dict[str, np.ndarray] = {}
    correct: dict[str, float] = {}
    for kind, items in data.positives.items():
        results = detector.match([image for _, image in items])
        scores[kind] = np.array([s for s, _ in results])
        correct[kind] = float(np.mean([key == source for (source, _), (_, key) in zip(items, results, strict=True)]))
    negative_results = detector.match([image for _, image in data.negatives])
    match_s = time.perf_counter() - started
    negatives = np.array([s for s, _ in negative_results])
    positives = np.concatenate(list(scores.values()))
    n_queries = len(positives) + len(negatives)

    at_fpr = threshold_at_fpr(negatives, TARGET_FPR)
    fixed = detector.default_threshold
    print(f"\n== {name}: {detector.n_train} training images, {len(positives)} copies, {len(negatives)} novel ==")
    print(f"detector: {detector.info()}")
    memory = index_bytes(detector)
    print(f"index memory: {memory / 2**20:.1f} MiB ({memory / 1024 / detector.n_train:.1f} KiB per training image)")
    print(f"AUC {auc(positives, negatives):.4f}")
    print(f"thresholds: at 1% FPR {at_fpr:.4f} | fixed default {fixed:.4f} | auto {auto:.4f}")
    print(f"auto calibration: {calibration}")
    header = f"{'edit kind':<20}{'n':>5}{'recall@1%FPR':>14}{'recall@fixed':>14}{'recall@auto':>13}{'top1 src':>10}"
    print(header)
    print("-" * len(header))
    for kind, values in scores.items():
        print(
            f"{kind:<20}{len(values):>5}{np.mean(values >= at_fpr):>14.3f}{np.mean(values >= fixed):>14.3f}"
            f"{np.mean(values >= auto):>13.3f}{correct[kind]:>10.2f}"
        )
    print("-" * len(header))
    print(
        f"{'ALL copies':<20}{len(positives):>5}{np.mean(positives >= at_fpr):>14.3f}"
        f"{np.mean(positives >= fixed):>14.3f}{np.mean(positives >= auto):>13.3f}"
    )
    print(
        f"{'FPR (novel)':<20}{len(negatives):>5}{np.mean(negatives >= at_fpr):>14.4f}"
        f"{np.mean(negatives >= fixed):>14.4f}{np.mean(negatives >= auto):>13.4f}"
    )
    print(
        f"timings: fit {fit_s:.1f} s ({1000 * fit_s / detector.n_train:.1f} ms/image), calibrate {calibrate_s:.1f} s, "
        f"match {match_s:.1f} s ({1000 * match_s / n_queries:.1f} ms/candidate)"
    )
    if show_fp:
        order = np.argsort(-negatives)[:show_fp]
        print("highest-scoring novel images (candidate -> nearest training image: score):")
        for i in order:
            print(f"  {data.negatives[i][0]} -> {negative_results[i][1]}: {negatives[i]:.4f}")
    if show_misses:
        print(f"lowest-scoring copies per kind (below the auto threshold {auto:.4f}):")
        for kind, values in scores.items():
            low = [i for i in np.argsort(values)[:show_misses] if values[i] < auto]
            print(f"  {kind}: " + ", ".join(f"{data.positives[kind][i][0]}: {values[i]:.3f}" for i in low))
    return {"recall_at_1pct": float(np.mean(positives >= at_fpr)), "auc": auc(positives, negatives)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", default="pixel,copydetect")
    parser.add_argument("--edits", type=int, default=100, help="copies per edit kind")
    parser.add_argument("--train", type=int, default=None, help="at most this many training images")
    parser.add_argument("--novel", type=int, default=None, help="at most this many novel images")
    parser.add_argument("--overlay", action="store_true", help="stamp one text box on every image")
    parser.add_argument("--show-fp", type=int, default=0, help="list the N highest-scoring novel images")
    parser.add_argument("--show-misses", type=int, default=0, help="list the N lowest-scoring copies per kind")
    parser.add_argument("--kinds", default="", help="regular expression: keep only the edit kinds it finds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    default_root = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    root = Path(os.environ.get("SYNTHGEN_REAL_DATA") or default_root) / "colonoscopy-real"
    started = time.perf_counter()
    edits = {kind: edit for kind, edit in {**EDITS, **REGION_EDITS}.items() if re.search(args.kinds, kind)}
    sizes = {"n_train": args.train, "n_edit": args.edits, "n_novel": args.novel}
    data = build_copyset(root, **sizes, seed=args.seed, overlay=args.overlay, edits=edits)
    print(f"copy set from {root}: {data.info} ({time.perf_counter() - started:.1f} s){' + overlay' * args.overlay}")
    for name in args.detectors.split(","):
        evaluate(name.strip(), data, args.show_fp, args.show_misses)


if __name__ == "__main__":
    main()
