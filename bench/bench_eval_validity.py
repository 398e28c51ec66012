"""Do the fidelity metrics move the right way when real images get worse? The validity bench of `synthgen eval`.

    python bench/bench_eval_validity.py [--n 300] [--draws 8] [--features imagestats-v1] [--cache feats.npz]
    python bench/bench_eval_validity.py --calibrate    # rewrite the default feature space's constants

Data: $SYNTHGEN_REAL_DATA (default /work/shared/data) radiology-real and colonoscopy-real, read in place. Each
set is split in two halves by patient (radiology) or video sequence (colonoscopy): a reference and a
"held-out real" half that stands in for a perfect generator. The held-out half is then degraded in graded
steps (Gaussian blur, Gaussian noise, JPEG, mode collapse, the other domain) and every metric of
`fidelity_metrics` is computed against the reference; per-class FD is computed with the held-out labels
shuffled by 0 / 50 / 100 %.

One half-split moves a metric by about as much as a mild degradation does (which images land in which half),
so the bench repeats everything over `--draws` half-splits (seeds seed .. seed + draws - 1) and checks the
means. A PASS line says the mean moved monotonically the right way over the steps; its z values are each
step's paired change over the draws divided by its standard error (|z| < 2: the step moves within the
bench's own sampling noise, however the mean comes out). `--cache` keeps the feature rows between runs, for
work on the metrics: features are deterministic given the feature space and the seed.
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
from synthgen.evaluation.fidelity import fd, fidelity_metrics, prdc_settings, vendi_score
from synthgen.sources.groups import holdout_mask, row_groups

DATASETS = {"radiology": ("radiology-real", "patient_id"), "colonoscopy": ("colonoscopy-real", "sequence")}
METRICS = ("fd", "kid_mean", "precision", "recall", "density", "coverage", "vendi")
UP = ("fd", "kid_mean")  # metrics that grow as images get worse
QUALITY_DOWN = ("precision", "density", "coverage")  # expected to fall for blur / noise / JPEG
COLLAPSE_DOWN = ("recall", "coverage", "vendi")  # expected to fall for mode collapse
SHUFFLED = (0.0, 0.5, 1.0)  # shares of the held-out labels permuted for per-class FD
DEGRADATIONS = {
    "blur": [("radius 1", 1.0), ("radius 2", 2.0), ("radius 4", 4.0)],
    "noise": [("sigma 8", 8.0), ("sigma 20", 20.0), ("sigma 50", 50.0)],
    "jpeg": [("quality 50", 50), ("quality 20", 20), ("quality 5", 5)],
}


class Pool:
    """Every image of a data set, its labels and groups, and feature rows computed once per (condition, image).

    Draws overlap (each half-split picks `n` images from about half the data set), so an image's features
    under a condition are computed once and shared by every draw that uses it. Noise is seeded per image.
    """

    def __init__(self, root: Path, name: str) -> None:
        folder, by = DATASETS[name]
        self.name, self.base = name, root / folder
        with open(self.base / "metadata.csv", newline="") as handle:
            self.rows = list(csv.DictReader(handle))
        self.groups, _ = row_groups(self.base, self.rows, by)
        self.labels = [row["label"] for row in self.rows]
        self.rows_of: dict[str, dict[int, np.ndarray]] = {}

    def halves(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Reference and held-out row indices (at most `n` each) of one patient/sequence half-split."""
        held = holdout_mask(self.groups, 0.5, seed)
        rng = np.random.default_rng(seed)
        reference = rng.permutation(np.flatnonzero(~held))[:n]
        return reference, rng.permutation(np.flatnonzero(held))[:n]

    def compute(self, space, needed: dict[str, set[int]], seed: int, chunk: int = 64) -> None:
        """Feature rows of the `needed` images per condition ('clean' or 'kind amount'), images read once."""
        todo = sorted(set().union(*needed.values()))
        for start in range(0, len(todo), chunk):
            batch = todo[start : start + chunk]
            images = {i: Image.open(self.base / self.rows[i]["file_name"]).convert("RGB") for i in batch}
            for condition, wanted in needed.items():
                indices = [i for i in batch if i in wanted and i not in self.rows_of.get(condition, {})]
                if not indices:
                    continue
                if condition == "clean":
                    shown = [images[i] for i in indices]
                else:
                    kind, amount = condition.split()
                    shown = [
                        degrade(images[i], kind, float(amount), np.random.default_rng([seed, i, int(float(amount))]))
                        for i in indices
                    ]
                target = self.rows_of.setdefault(condition, {})
                for i, row in zip(indices, space.features(shown), strict=True):
                    target[i] = row

    def features(self, condition: str, indices: np.ndarray) -> np.ndarray:
        return np.stack([self.rows_of[condition][int(i)] for i in indices])


def cache_key(space, seed: int, root: Path) -> str:
    return f"{space.name} {space.sha256} noise seed {seed} data {root.resolve()}"


def load_cache(path: Path, pools: dict[str, Pool], key: str) -> None:
    """Feature rows from an earlier run with the same feature space and seed (`--cache`)."""
    if not path.exists():
        return
    with np.load(path) as saved:
        if str(saved["key"]) != key:
            print(f"cache {path} is for another feature space, seed or data folder: not used")
            return
        for name, pool in pools.items():
            for field in saved.files:
                if field.startswith(f"{name}|") and field.endswith("|index"):
                    condition = field.split("|")[1]
                    rows = saved[f"{name}|{condition}|rows"]
                    pool.rows_of[condition] = dict(zip(saved[field].tolist(), rows, strict=True))


def save_cache(path: Path, pools: dict[str, Pool], key: str) -> None:
    arrays: dict[str, np.ndarray] = {"key": np.array(key)}
    for name, pool in pools.items():
        for condition, rows in pool.rows_of.items():
            arrays[f"{name}|{condition}|index"] = np.array(sorted(rows))
            arrays[f"{name}|{condition}|rows"] = np.stack([rows[i] for i in sorted(rows)])
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


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


def draw_conditions(
    pool: Pool, held: np.ndarray, other: np.ndarray, seed: int
) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Feature rows of every condition of one draw, grouped by degradation; each group starts with clean held-out."""
    clean = pool.features("clean", held)
    out: dict[str, list[tuple[str, np.ndarray]]] = {}
    for kind, steps in DEGRADATIONS.items():
        out[kind] = [("clean", clean)] + [(label, pool.features(f"{kind} {amount:g}", held)) for label, amount in steps]
    n = len(clean)
    out["collapse"] = [("clean", clean)] + [(f"k={k}", collapse(clean, k, seed)) for k in (n // 2, n // 10, n // 50)]
    out["domain"] = [("clean", clean), ("other domain", other[:n])]
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


def step_z(per_draw: np.ndarray, direction: str) -> list[float]:
    """Per step, the mean over draws of the paired change (+ = the expected way) over its standard error.

    `per_draw` is (draws, steps). |z| < 2 means the step moves within the bench's own sampling noise.
    """
    sign = 1.0 if direction == "up" else -1.0
    change = np.diff(per_draw, axis=1) * sign
    if len(change) < 2:
        return [float("nan")] * change.shape[1]
    error = change.std(axis=0, ddof=1) / np.sqrt(len(change))
    mean = change.mean(axis=0)
    same = np.where(mean > 0, np.inf, np.where(mean < 0, -np.inf, 0.0))  # the same change in every draw
    z = np.where(error > 0, mean / np.where(error > 0, error, 1.0), same)
    return [float(v) for v in z]


def mean_table(tables: list[list[dict]]) -> list[dict]:
    """Per condition, every metric averaged over the draws (tables[draw][condition])."""
    keys = (*METRICS, "vendi_real")
    return [{m: float(np.mean([t[c][m] for t in tables])) for m in keys} for c in range(len(tables[0]))]


def print_table(kind: str, labels: list[str], tables: list[list[dict]]) -> list[dict]:
    header = f"{'condition':<16}" + "".join(f"{m:>11}" for m in METRICS)
    print(f"\n{kind} (mean of {len(tables)} draw(s))\n{header}")
    means = mean_table(tables)
    for label, row in zip(labels, means, strict=True):
        print(f"{label:<16}" + "".join(f"{row[m]:>11.4g}" for m in METRICS))
    return means


def ranks_clean_first(name: str, tables: list[list[dict]]) -> list[tuple]:
    """The mildest blur must look worse than clean held-out real on every metric (vendi: further from real).

    Vendi is compared through its gap to the reference half's Vendi, averaged over draws: the clean half's gap
    is the sampling difference of two halves, which averages towards 0; blur must open a wider one.
    """
    per_draw = {m: np.array([[t[0][m], t[1][m]] for t in tables]) for m in (*METRICS, "vendi_real")}
    out = []
    for metric in METRICS:
        if metric == "vendi":
            gap = per_draw["vendi"] - per_draw["vendi_real"][:, :1]  # (draws, [clean, blur r1])
            clean_gap, blur_gap = gap.mean(axis=0)
            ok = abs(blur_gap) > abs(clean_gap)
            direction = "up" if blur_gap > clean_gap else "down"  # the way blur moves it, away from the reference
            z = step_z(per_draw["vendi"], direction)
            note = f"gap to reference {clean_gap:+.3g} -> {blur_gap:+.3g}"
        else:
            direction = "up" if metric in UP else "down"
            means = per_draw[metric].mean(axis=0)
            ok = (means[1] - means[0]) * (1.0 if direction == "up" else -1.0) > 0
            z = step_z(per_draw[metric], direction)
            note = ""
        out.append((name, "blur r1 < real", metric, "worse", bool(ok), z, note))
    return out


def run_dataset(name: str, pools: dict, draws: list[tuple], args: argparse.Namespace) -> list[tuple]:
    """Metrics of every condition in every draw, averaged; the checks run on the averages."""
    pool = pools[name]
    tables: dict[str, list[list[dict]]] = {}
    labels: dict[str, list[str]] = {}
    vendi_reference, shuffled = [], []
    for seed, halves in draws:
        reference = pool.features("clean", halves[name][0])
        other_name = next(other for other in pools if other != name)
        other = pools[other_name].features("clean", halves[other_name][1])
        vendi_reference.append(vendi_score(reference))
        for kind, rows in draw_conditions(pool, halves[name][1], other, seed).items():
            labels[kind] = [label for label, _ in rows]
            tables.setdefault(kind, []).append(
                [fidelity_metrics(reference, feats, seed=seed, n_bootstrap=args.bootstrap) for _, feats in rows]
            )
        if name == "radiology":
            shuffled.append(label_shuffle(pool, halves[name], seed))
    n_ref, n_held = len(draws[0][1][name][0]), len(draws[0][1][name][1])
    print(f"\n=== {name}: {len(draws)} draw(s) of reference {n_ref} / held-out {n_held} images ===")
    print(f"vendi of the reference half: {np.mean(vendi_reference):.4g} (std over draws {np.std(vendi_reference):.3g})")
    clean = np.array([[t[0][m] for m in METRICS] for t in tables["blur"]])
    spread = ", ".join(f"{m} {v:.3g}" for m, v in zip(METRICS, clean.std(axis=0), strict=True))
    print(f"clean held-out, std over draws: {spread}")
    results = []
    for kind, per_draw in tables.items():
        means = print_table(kind, labels[kind], per_draw)
        if kind == "blur":
            results += ranks_clean_first(name, per_draw)
        for metric in METRICS:
            direction = expected(metric, kind)
            if direction:
                values = [row[metric] for row in means]
                z = step_z(np.array([[row[metric] for row in t] for t in per_draw]), direction)
                results.append((name, kind, metric, direction, monotone(values, direction), z, ""))
    if shuffled:
        values = np.array(shuffled)
        print(f"\nper-class FD with held-out labels shuffled (mean of {len(values)} draw(s))")
        for fraction, value in zip(SHUFFLED, values.mean(axis=0), strict=True):
            print(f"  shuffled {fraction:>4.0%}: per-class FD {value:.4g}")
        ok = monotone(list(values.mean(axis=0)), "up")
        results.append((name, "label shuffle", "per_class_fd", "up", ok, step_z(values, "up"), ""))
    return results


def label_shuffle(pool: Pool, halves: tuple[np.ndarray, np.ndarray], seed: int) -> list[float]:
    """Per-class FD of one draw with 0 / 50 / 100 % of the held-out labels shuffled."""
    reference, held = (pool.features("clean", side) for side in halves)
    ref_labels, held_labels = ([pool.labels[i] for i in side] for side in halves)
    return [
        per_class_fd(reference, ref_labels, held, shuffle_labels(held_labels, fraction, seed)) for fraction in SHUFFLED
    ]


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
    print("\nPASS/FAIL (the mean over draws moves monotonically the expected way over the steps;")
    print("z: each step's paired change over draws / its standard error, + = the expected way, |z| < 2 = within noise)")
    for name, kind, metric, direction, ok, z, note in results:
        steps = " ".join(f"{v:+.1f}" for v in z)
        verdict = "PASS" if ok else "FAIL"
        print(f"{verdict}  {name:<12} {kind:<14} {metric:<13} expected {direction:<6} z {steps} {note}")
    passed = sum(r[4] for r in results)
    print(f"\nsummary: {passed}/{len(results)} passed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="images per half")
    parser.add_argument("--draws", type=int, default=8, help="half-splits averaged (seeds seed .. seed + draws - 1)")
    parser.add_argument("--features", default=None, help="feature space (default: the default)")
    parser.add_argument("--bootstrap", type=int, default=10, help="FD bootstrap resamples (fd_ci only; not checked)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None, help="an .npz of feature rows, read and updated")
    parser.add_argument("--calibrate", action="store_true")
    args = parser.parse_args()
    root = Path(os.environ.get("SYNTHGEN_REAL_DATA", "/work/shared/data"))
    if args.calibrate:
        return calibrate(root)
    start = time.time()
    space = get_feature_space(args.features)
    print(f"feature space {space.name} ({space.dim}-d, sha256 {space.sha256[:12]})")
    print(f"precision/recall/density/coverage: {prdc_settings()}")
    pools = {name: Pool(root, name) for name in DATASETS}
    if args.cache:
        load_cache(args.cache, pools, cache_key(space, args.seed, root))
    draws = [
        (seed, {name: pool.halves(args.n, seed) for name, pool in pools.items()})
        for seed in range(args.seed, args.seed + args.draws)
    ]
    for name, pool in pools.items():
        needed = {"clean": set()} | {f"{k} {a:g}": set() for k, steps in DEGRADATIONS.items() for _, a in steps}
        for _, halves in draws:
            reference, held = halves[name]
            needed["clean"] |= set(reference.tolist()) | set(held.tolist())
            for condition in needed:
                needed[condition] |= set(held.tolist())
        pool.compute(space, needed, args.seed)
        took = time.time() - start
        print(f"{name}: features of {len(needed['clean'])} images under {len(needed)} conditions, {took:.0f} s")
    if args.cache:
        save_cache(args.cache, pools, cache_key(space, args.seed, root))
    results = []
    for name in DATASETS:
        results += run_dataset(name, pools, draws, args)
    summary(results)
    print(f"runtime {time.time() - start:.0f} s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
