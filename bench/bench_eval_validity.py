"""Do the fidelity metrics move the right way when real images get worse? The validity bench of `synthgen eval`.

    python bench/bench_eval_validity.py [--n 300] [--features imagestats-v1] [--bootstrap 50]
    python bench/bench_eval_validity.py --calibrate    # rewrite the default feature space's constants

Data: $SYNTHGEN_REAL_DATA (default /work/shared/data) radiology-real and colonoscopy-real, read in place. Each
set is split in two halves by patient (radiology) or video sequence (colonoscopy): a reference and a
"held-out real" half that stands in for a perfect generator. The held-out half is then degraded in graded
steps (Gaussian blur, Gaussian noise, JPEG, mode collapse, the other domain) and every metric of
`fidelity_metrics` is computed against the reference; per-class FD is computed with the held-out labels
shuffled by 0 / 50 / 100 %. A PASS line says a metric moved monotonically the right way over the steps.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from synthgen.evaluation.features import get_feature_space
from synthgen.evaluation.fidelity import fd, fidelity_metrics
from synthgen.sources.groups import holdout_mask, row_groups

DATASETS = {"radiology": ("radiology-real", "patient_id"), "colonoscopy": ("colonoscopy-real", "sequence")}
METRICS = ("fd", "kid_mean", "precision", "recall", "density", "coverage", "vendi")
UP = ("fd", "kid_mean")  # metrics that grow as images get worse
QUALITY_DOWN = ("precision", "density", "coverage")  # expected to fall for blur / noise / JPEG
COLLAPSE_DOWN = ("recall", "coverage", "vendi")  # expected to fall for mode collapse
DEGRADATIONS = {
    "blur": [("radius 1", 1.0), ("radius 2", 2.0), ("radius 4", 4.0)],
    "noise": [("sigma 8", 8.0), ("sigma 20", 20.0), ("sigma 50", 50.0)],
    "jpeg": [("quality 50", 50), ("quality 20", 20), ("quality 5", 5)],
}


def load_halves(root: Path, name: str, n: int, seed: int = 0) -> dict:
    """Reference and held-out images (at most `n` each) and labels, split by patient or sequence."""
    folder, by = DATASETS[name]
    base = root / folder
    with open(base / "metadata.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    groups, _ = row_groups(base, rows, by)
    held = holdout_mask(groups, 0.5, seed)
    rng = np.random.default_rng(seed)
    halves = {}
    for side, mask in (("reference", ~held), ("heldout", held)):
        chosen = rng.permutation(np.flatnonzero(mask))[:n]
        images = [Image.open(base / rows[i]["file_name"]).convert("RGB") for i in chosen]
        halves[side] = (images, [rows[i]["label"] for i in chosen])
    return halves


def degrade(image: Image.Image, kind: str, amount: float, rng: np.random.Generator) -> Image.Image:
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(amount))
    if kind == "noise":
        pixels = np.asarray(image, np.float32) + rng.normal(0.0, amount, (image.height, image.width, 1))
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=int(amount))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def collapse(features: np.ndarray, distinct: int, seed: int = 0) -> np.ndarray:
    """`distinct` images repeated to fill the set (mode collapse), in feature space."""
    rng = np.random.default_rng(seed)
    keep = rng.choice(len(features), distinct, replace=False)
    return features[np.resize(keep, len(features))]


def per_class_fd(ref: np.ndarray, ref_labels: list[str], held: np.ndarray, held_labels: list[str]) -> float:
    """Mean FD over classes with at least 10 images on both sides."""
    values = []
    for label in sorted(set(ref_labels)):
        a = ref[np.asarray(ref_labels) == label]
        b = held[np.asarray(held_labels) == label]
        if len(a) >= 10 and len(b) >= 10:
            values.append(fd(a, b))
    return float(np.mean(values)) if values else float("nan")


def shuffle_labels(labels: list[str], fraction: float, seed: int = 0) -> list[str]:
    """Labels with a `fraction` of them permuted among themselves (a generator that ignores its class prompt)."""
    rng = np.random.default_rng(seed)
    labels = list(labels)
    picked = rng.choice(len(labels), int(round(fraction * len(labels))), replace=False)
    values = [labels[j] for j in rng.permutation(picked)]
    for i, value in zip(picked, values, strict=True):
        labels[i] = value
    return labels


def conditions(space, halves: dict, other_heldout: np.ndarray, seed: int) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Feature rows of every condition, grouped by degradation; each group starts with the clean held-out half."""
    rng = np.random.default_rng(seed)
    images = halves["heldout"][0]
    clean = space.features(images)
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for kind, steps in DEGRADATIONS.items():
        out[kind] = [("clean", clean)]
        out[kind] += [
            (label, space.features([degrade(im, kind, amount, rng) for im in images])) for label, amount in steps
        ]
    n = len(clean)
    out["collapse"] = [("clean", clean)] + [(f"k={k}", collapse(clean, k, seed)) for k in (n // 2, n // 10, n // 50)]
    out["domain"] = [("clean", clean), ("other domain", other_heldout[:n])]
    return out


def expected(metric: str, kind: str) -> str | None:
    """'up', 'down' or None (no expectation) for a metric under a degradation."""
    if metric in UP:
        return "up"
    if kind in DEGRADATIONS or kind == "domain":
        return "down" if metric in QUALITY_DOWN or (kind in ("blur", "domain") and metric == "recall") else None
    if kind == "collapse":
        return "down" if metric in COLLAPSE_DOWN else None
    return None


def monotone(values: list[float], direction: str) -> bool:
    """Each step no better than the previous one, and the last strictly worse than the clean one."""
    sign = 1.0 if direction == "up" else -1.0
    steps = np.diff(np.asarray(values) * sign)
    return bool(np.all(steps >= -1e-12) and (values[-1] - values[0]) * sign > 0)


def print_table(kind: str, rows: list[tuple[str, np.ndarray]], reference: np.ndarray, args) -> list[dict]:
    header = f"{'condition':<16}" + "".join(f"{m:>11}" for m in METRICS) + f"{'fd_ci':>20}"
    print(f"\n{kind}\n{header}")
    table = []
    for label, feats in rows:
        metrics = fidelity_metrics(reference, feats, seed=args.seed, n_bootstrap=args.bootstrap)
        table.append(metrics)
        ci = "[{:.3g}, {:.3g}]".format(*metrics["fd_ci"])
        print(f"{label:<16}" + "".join(f"{metrics[m]:>11.4g}" for m in METRICS) + f"{ci:>20}")
    return table


def ranks_clean_first(name: str, table: list[dict]) -> list[tuple]:
    """The mildest blur must look worse than clean held-out real on every metric (vendi: further from real)."""
    clean, blurred = table[0], table[1]
    out = []
    for metric in METRICS:
        if metric == "vendi":
            ok = abs(blurred["vendi"] - blurred["vendi_real"]) > abs(clean["vendi"] - clean["vendi_real"])
        else:
            sign = 1.0 if metric in UP else -1.0
            ok = (blurred[metric] - clean[metric]) * sign > 0
        out.append((name, "blur r1 < real", metric, "worse", bool(ok)))
    return out


def run_dataset(name: str, space, halves: dict, other: np.ndarray, args: argparse.Namespace) -> list[tuple]:
    reference = space.features(halves["reference"][0])
    results = []
    print(f"\n=== {name}: reference {len(reference)} images, held-out {len(halves['heldout'][0])} ===")
    print(f"vendi of the reference half: {fidelity_metrics(reference, reference, n_bootstrap=1)['vendi']:.4g}")
    for kind, rows in conditions(space, halves, other, args.seed).items():
        table = print_table(kind, rows, reference, args)
        if kind == "blur":
            results += ranks_clean_first(name, table)
        for metric in METRICS:
            direction = expected(metric, kind)
            if direction:
                results.append((name, kind, metric, direction, monotone([t[metric] for t in table], direction)))
    if name == "radiology":
        results += label_shuffle(space, reference, halves)
    return results


def label_shuffle(space, reference: np.ndarray, halves: dict) -> list[tuple]:
    ref_labels = halves["reference"][1]
    held_images, held_labels = halves["heldout"]
    print("\nper-class FD with held-out labels shuffled")
    values = []
    held = space.features(held_images)
    for fraction in (0.0, 0.5, 1.0):
        value = per_class_fd(reference, ref_labels, held, shuffle_labels(held_labels, fraction))
        values.append(value)
        print(f"  shuffled {fraction:>4.0%}: per-class FD {value:.4g}")
    return [("radiology", "label shuffle", "per_class_fd", "up", monotone(values, "up"))]


def calibrate(root: Path) -> None:
    """Fit the default feature space's standardisation constants and write image_stats_calibration.py."""
    from synthgen.evaluation.image_stats import raw_stats

    files = []
    for folder, _ in DATASETS.values():
        files += sorted((root / folder / "images").iterdir())[::4]
    raw = np.stack([raw_stats(Image.open(f)) for f in files])

    def rows(values: np.ndarray) -> str:
        return "\n".join(
            "    " + ", ".join(f"{v:.5g}" for v in values[i : i + 8]) + "," for i in range(0, len(values), 8)
        )

    target = Path(__file__).resolve().parents[1] / "synthgen" / "evaluation" / "image_stats_calibration.py"
    target.write_text(
        '"""Fixed standardisation constants of the default feature space (image_stats.py): per-feature mean and\n'
        f"std of the raw statistics of {len(files)} chest X-ray and colonoscopy images (every 4th file of\n"
        "radiology-real and colonoscopy-real), written by `python bench/bench_eval_validity.py --calibrate`.\n"
        "Changing them changes the feature space's sha256, so numbers from before and after never mix.\n"
        '"""\n\n# fmt: off\n'
        f"MEAN = (\n{rows(raw.mean(axis=0))}\n)\n\nSTD = (\n{rows(raw.std(axis=0))}\n)\n# fmt: on\n"
    )
    print(f"wrote {target} from {len(files)} images")


def summary(results: list[tuple]) -> None:
    print("\nPASS/FAIL (metric moves monotonically the expected way over the steps)")
    for name, kind, metric, direction, ok in results:
        print(f"{'PASS' if ok else 'FAIL'}  {name:<12} {kind:<14} {metric:<13} expected {direction}")
    passed = sum(ok for *_, ok in results)
    print(f"\nsummary: {passed}/{len(results)} passed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="images per half")
    parser.add_argument("--features", default=None, help="feature space (default: the default)")
    parser.add_argument("--bootstrap", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibrate", action="store_true")
    args = parser.parse_args()
    root = Path(os.environ.get("SYNTHGEN_REAL_DATA", "/work/shared/data"))
    if args.calibrate:
        return calibrate(root)
    start = time.time()
    space = get_feature_space(args.features)
    print(f"feature space {space.name} ({space.dim}-d, sha256 {space.sha256[:12]})")
    halves = {name: load_halves(root, name, args.n, args.seed) for name in DATASETS}
    held = {name: space.features(h["heldout"][0]) for name, h in halves.items()}
    results = []
    for name, other in (("radiology", "colonoscopy"), ("colonoscopy", "radiology")):
        results += run_dataset(name, space, halves[name], held[other], args)
    summary(results)
    print(f"runtime {time.time() - start:.0f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
