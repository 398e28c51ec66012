"""`threshold: auto` on novel patients: does calibration deliver its target false-positive rate on a real domain?

    python bench/bench_calibration.py [--domains radiology,colonoscopy] [--limit N] [--legacy] [--edits N]

Data: $SYNTHGEN_REAL_DATA/{radiology-real,colonoscopy-real} (default ../shared/data, next to the repo), read in
place. Each domain is cut by a group-disjoint split, 20% held out, seed 0: radiology by `patient_id`, else the
patient in the file name (as recipes/radiology-real.yaml); colonoscopy by hospital (PolypGen's `centre` column,
CVC-ClinicDB one more), or `colonoscopy-sequence`: videos inferred from file-name numbering, which leaks
neighbouring frames across the split. The audit is fitted on the train side with default settings (copydetect,
threshold auto, target 1%, groups `auto`: the split's) and judges every held-out image, none of which is a
copy of a training patient. Prints per domain: the calibrated threshold, the calibration's own FPR estimate
with its 95% interval, and the held-out flag rate with counts; held-out images scoring > 0.99 are listed as
true duplicates (the same picture published under two patient ids) and left out of the rate.

`--legacy` also calibrates as before this change (sequences from file-name numbering, the detector's cap) on
the same fitted detector. `--edits N` measures what the threshold costs: recall of N edited copies of training
images per global edit kind of bench/copyset.py, at the calibrated threshold. `--limit` caps the images read
per side (quick iterations; report the full split). Copydetect runs on the CPU: use 1 thread (SYNTHGEN_THREADS=1)
and expect several minutes per domain.
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

from synthgen.audit.detection.auditor import Auditor  # noqa: E402
from synthgen.audit.detection.calibrate import DUPLICATE, calibrate, clopper_pearson  # noqa: E402
from synthgen.audit.index.train_index import batched  # noqa: E402
from synthgen.sample import Sample  # noqa: E402
from synthgen.sources import open_source  # noqa: E402
from synthgen.sources.groups import split_key  # noqa: E402
from synthgen.sources.spec import SourceSpec  # noqa: E402

# The radiology recipe's split (recipes/radiology-real.yaml): patient_id, else the patient in the file name.
RADIOLOGY_PATTERN = r"nih14__\w+?__(\d{8})_\d+|kermany__(?:NORMAL2-)?(IM-\d{4})|kermany__(person\d+)_"
DOMAINS = {
    "radiology": ("radiology-real", {"by": "patient_id", "name_pattern": RADIOLOGY_PATTERN}),
    # Hospitals: PolypGen's `centre` column, CVC-ClinicDB (no centre) one group by its file names.
    "colonoscopy": ("colonoscopy-real", {"by": "centre", "name_pattern": r"(cvcclinicdb)256__"}),
    # Videos inferred from file-name numbering: leaky (neighbouring frames of C3 and C2 fall on both sides).
    "colonoscopy-sequence": ("colonoscopy-real", {"by": "sequence"}),
}
GLOBAL_EDITS = re.compile(  # whole-image edits of bench/copyset.py (its lesion/region crops are colonoscopy's)
    r"^(resize|crop75|hflip|vflip|rot12|jpeg25|noise|blur|jitter|crop\+flip\+jpeg|rot\+jitter\+noise|resize\+blur\+jpeg)$"
)


def data_root() -> Path:
    return Path(os.environ.get("SYNTHGEN_REAL_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def side(folder: Path, split: dict, which: str, limit: int | None):
    spec = SourceSpec(type="imagefolder", path=str(folder), limit=limit, split={**split, "side": which})
    return open_source(spec)


def rate(k: int, n: int) -> str:
    low, high = clopper_pearson(k, n)
    return f"{k}/{n} = {k / max(n, 1):.2%} (95% CI {low:.2%}-{high:.2%})"


def judge(auditor: Auditor, holdout) -> list[tuple[str, float, str]]:
    """(held-out key, similarity, nearest training key) of every readable held-out image."""
    rows = []
    for batch in batched(holdout, 64):
        for sample, verdict in zip(batch, auditor.check(batch), strict=True):
            rows.append((sample.key, verdict.similarity, verdict.nearest_train_key))
    return rows


def report_flags(rows: list[tuple[str, float, str]], threshold: float, label: str) -> None:
    novel = [row for row in rows if row[1] <= DUPLICATE]  # true duplicates aside
    flagged = [row for row in novel if row[1] >= threshold]
    print(f"  {label}: threshold {threshold:.6f}; held-out flagged {rate(len(flagged), len(novel))} (duplicates aside)")
    by_set: dict[str, list[int]] = {}
    for key, similarity, _ in novel:
        counts = by_set.setdefault(Path(key).name.split("__")[0], [0, 0])
        counts[0] += similarity >= threshold
        counts[1] += 1
    print("    by source set: " + ", ".join(f"{name} {k}/{n}" for name, (k, n) in sorted(by_set.items())))
    frames = [row for row in flagged if neighbouring_frames(row[0], row[2])]
    if frames:
        print(f"    of them neighbouring frames of one numbered sequence (a leaky split, not novel): {len(frames)}")
    for key, similarity, nearest in sorted(flagged, key=lambda row: -row[1])[:10]:
        print(f"    flagged {similarity:.3f} {key} ~ {nearest}")


def neighbouring_frames(key: str, nearest: str, window: int = 50) -> bool:
    """Same text around the last number and numbers within `window`: frames of one video on both sides."""
    first, second = split_key(key), split_key(nearest)
    return first is not None and second is not None and first[0] == second[0] and abs(first[1] - second[1]) <= window


def recall(auditor: Auditor, train, count: int, threshold: float, cap: float) -> None:
    """Edited copies of `count` training images per global edit kind: the share at or above `threshold`
    (and at or above the detector's cap, for comparison)."""
    from copyset import EDITS  # bench/copyset.py (the copy-detection bench's edits)

    rng = np.random.default_rng(0)
    keys = set(auditor.detector.keys[:: max(1, len(auditor.detector.keys) // count)][:count])
    originals = [s for s in train if s.key in keys]
    scores = []
    for kind, edit in EDITS.items():
        if not GLOBAL_EDITS.match(kind):
            continue
        copies = [Sample(s.key, edit(s.image.convert("RGB"), rng)) for s in originals]
        similarities = np.array([v.similarity for v in auditor.check(copies)])
        scores.append(similarities)
        print(f"    {kind:>18}: {np.mean(similarities >= threshold):.0%} of {len(copies)} at or above the threshold")
    every = np.concatenate(scores)
    print(f"  edited copies found at the threshold: {rate(int((every >= threshold).sum()), len(every))}")
    print(f"  edited copies found at the cap {cap:.3f}: {rate(int((every >= cap).sum()), len(every))}")


def run(name: str, args: argparse.Namespace) -> None:
    folder_name, split = DOMAINS[name]
    split = {**split, "holdout": 0.2, "seed": 0}
    folder = data_root() / folder_name
    train, holdout = side(folder, split, "train", args.limit), side(folder, split, "holdout", args.limit)
    print(f"\n== {name}: {train.description}")
    start = time.perf_counter()
    auditor = Auditor.from_source(train)  # defaults: copydetect, threshold auto, target 1%, groups auto
    fitted = time.perf_counter() - start
    rows = judge(auditor, holdout)
    calibration = auditor.calibration or {}
    estimate = calibration["fpr_estimate"]
    low, high = estimate["ci95"]
    print(f"  train {auditor.n_train} images, held out {len(rows)}; fit + calibration {fitted:.0f} s")
    print(f"  groups: {calibration['groups']}")
    print(
        f"  calibration: threshold {auditor.threshold:.6f} (quantile {calibration['quantile']}, bounded by "
        f"{calibration['bounded_by']}); FPR estimate {estimate['flagged']}/{estimate['n']} = {estimate['rate']:.2%} "
        f"(95% CI {low:.2%}-{high:.2%}); {calibration['n_near_duplicates']} leave-one-out near-duplicates"
    )
    for key, nearest, similarity in calibration["near_duplicates"]:
        print(f"    train near-duplicate {similarity:.3f} {key} ~ {nearest}")
    duplicates = [row for row in rows if row[1] > DUPLICATE]
    print(f"  true duplicates among held-out images (> {DUPLICATE}): {len(duplicates)}")
    for key, similarity, nearest in duplicates:
        print(f"    {similarity:.3f} {key} ~ {nearest}")
    report_flags(rows, auditor.threshold, "default")
    if args.legacy:
        legacy, info = calibrate(auditor.detector, train, target_fpr=0.01)
        report_flags(rows, legacy, f"legacy (sequences, cap {info['cap']})")
    if args.edits:
        recall(auditor, train, args.edits, auditor.threshold, calibration["cap"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domains", default="radiology,colonoscopy")
    parser.add_argument("--limit", type=int, default=None, help="read at most this many images per side")
    parser.add_argument("--legacy", action="store_true", help="also the old calibration (sequences + cap)")
    parser.add_argument("--edits", type=int, default=0, help="edited copies per edit kind (recall at the threshold)")
    args = parser.parse_args()
    for name in args.domains.split(","):
        run(name.strip(), args)


if __name__ == "__main__":
    main()
