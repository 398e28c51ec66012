"""How fast the copy audit keeps up, side by side in one run on real colonoscopy frames:

1. audited images/s of `Auditor.check` with 1 and with 2 worker threads (same auditor, same candidates);
2. fitting the training index cold (cache miss: keypoints, vocabularies, tiles, calibration) against loading
   it from the on-disk cache (fit_cache.py);
3. fit time, resident state and match cost at a few training-set sizes, extrapolated linearly to 100k frames
   (an extrapolation, printed as one; embedding indexes at 100k are measured by bench_index_scale.py).

    SYNTHGEN_THREADS=2 python bench/bench_audit_speed.py --data /work/shared/data/colonoscopy-real

`--demo-only` prints only the demo row (or, with `--baseline`, the comparison). `--baseline DIR` compares the
cost of `Auditor.check` on the demo (recipes/demo.yaml's training phantoms, `threshold: auto`, 96 novel phantoms,
batches of 16, one worker) between this tree and another checkout's `synthgen` package (e.g. `git worktree add
/tmp/base HEAD`), each in its own process, alternately, `--repeats` times; it prints ms of CPU per image both
ways and whether every verdict (similarity, nearest key, flag, evidence) is identical:

    SYNTHGEN_THREADS=1 OMP_NUM_THREADS=1 python bench/bench_audit_speed.py --baseline /tmp/base --demo-only

Numbers on a shared machine are noisy: compare the columns of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from synthgen.audit.detection.auditor import Auditor
from synthgen.audit.detection.fit_cache import _state
from synthgen.sample import Sample
from synthgen.sources import open_source
from synthgen.sources.spec import SourceSpec

BATCH = 16  # candidates per check, as a build's generation batch


def source(data: str, limit: int):
    return open_source(SourceSpec(path=data, type="imagefolder", limit=limit))


def candidates(data: str, count: int) -> list[Sample]:
    """Edited copies (rotated, cropped) of the first frames and frames beyond every training size used."""
    frames = [s.image for s in source(data, 2100)]
    copies = [f.rotate(10) if i % 2 else f.crop((20, 20, 220, 220)) for i, f in enumerate(frames[: count // 2])]
    novel = frames[-(count - len(copies)) :]
    return [Sample(key=f"c{i}", image=image) for i, image in enumerate(copies + novel)]


def rate(auditor: Auditor, batch: list[Sample], workers: int) -> tuple[float, float]:
    """(images/s, CPU seconds per wall second of this process: above 1 only when the threads really overlap;
    well below 1 when other processes hold the cores)."""
    auditor.workers = workers
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(batch), BATCH):
        auditor.check(batch[i : i + BATCH])
    wall = time.perf_counter() - start
    return len(batch) / wall, (time.process_time() - cpu) / wall


def demo_row() -> None:
    """The demo recipe's audit: 144 training phantoms at 64 px, `threshold: auto`, 48 novel phantoms checked."""
    train = DEMO_TRAIN
    batch = [
        Sample(key=f"c{i}", image=s.image) for i, s in enumerate(open_source(train.model_copy(update={"seed": 99})))
    ]
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        Auditor.from_source(open_source(train), cache=Path(folder))
        cold = time.perf_counter() - start
        start = time.perf_counter()
        hit = Auditor.from_source(open_source(train), cache=Path(folder))
        warm = time.perf_counter() - start
        (one, cpu_one), (two, cpu_two) = rate(hit, batch[:48], 1), rate(hit, batch[:48], 2)
    print(
        f"demo audit (144 phantoms, threshold auto): fit+calibrate cold {cold:.1f} s, cache hit {warm:.2f} s "
        f"(hit: {hit.cache_hit}); check {1000 / one:.1f} ms/img with 1 worker ({1000 * cpu_one / one:.0f} CPU ms/img, "
        f"cpu/wall {cpu_one:.2f}), {1000 / two:.1f} ms/img with 2 ({1000 * cpu_two / two:.0f} CPU ms/img, "
        f"cpu/wall {cpu_two:.2f})"
    )


DEMO_TRAIN = SourceSpec(type="demo", classes=["polyp", "ulcer", "normal"], per_class=48, resolution=64)


def demo_child(cache: str, count: int) -> None:
    """One process's demo check cost (the `--baseline` comparison): one JSON line on stdout."""
    auditor = Auditor.from_source(open_source(DEMO_TRAIN), cache=Path(cache), workers=1)
    novel = open_source(DEMO_TRAIN.model_copy(update={"seed": 99, "per_class": -(-count // 3)}))
    batch = [Sample(key=f"c{i}", image=s.image) for i, s in enumerate(novel)][:count]
    auditor.check(batch[:BATCH])  # warm-up: lazily built state, first-call costs
    start, cpu = time.perf_counter(), time.process_time()
    verdicts = [v for i in range(0, len(batch), BATCH) for v in auditor.check(batch[i : i + BATCH])]
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    rows = [[v.similarity, v.nearest_train_key, v.flagged, repr(v.evidence)] for v in verdicts]
    flagged = sum(v.flagged for v in verdicts)
    per_image = {"cpu_ms": 1000 * cpu / len(batch), "wall_ms": 1000 * wall / len(batch)}
    print(json.dumps({"threshold": auditor.threshold, **per_image, "flagged": flagged, "verdicts": rows}))


def compare_with(baseline: str, repeats: int, count: int) -> None:
    """The demo check cost in `baseline`'s synthgen and in this tree's, alternately, each in a fresh process."""
    trees = {"baseline": str(Path(baseline).resolve()), "this tree": str(Path(__file__).resolve().parent.parent)}
    found: dict[str, list[dict]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as cache:  # one cache: the two code versions get their own entries
        for repeat in range(repeats + 1):  # the first round fits and calibrates (cold), and is not counted
            for name, tree in trees.items():
                env = {**os.environ, "PYTHONPATH": tree}
                command = [sys.executable, __file__, "--demo-child", cache, "--candidates", str(count)]
                out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
                if repeat:
                    found[name].append(json.loads(out.strip().splitlines()[-1]))
    for name, runs in found.items():
        cpu = [r["cpu_ms"] for r in runs]
        print(
            f"{name:>10}: check {np.median(cpu):.1f} ms CPU/img (median of {len(cpu)}: "
            f"{', '.join(f'{c:.1f}' for c in cpu)}), wall {np.median([r['wall_ms'] for r in runs]):.1f} ms/img, "
            f"threshold {runs[0]['threshold']}, flagged {runs[0]['flagged']}/{count}"
        )
    base, this = found["baseline"], found["this tree"]
    same = all(r["verdicts"] == base[0]["verdicts"] and r["threshold"] == base[0]["threshold"] for r in base + this)
    ratio = np.median([r["cpu_ms"] for r in this]) / np.median([r["cpu_ms"] for r in base])
    print(f"this tree / baseline CPU per image: {ratio:.2f}x; every verdict identical: {same}")


def state_mb(auditor: Auditor) -> float:
    arrays, _ = _state(auditor.detector)  # type: ignore[arg-type]
    return sum(a.nbytes for a in arrays.values()) / 2**20


def fit(data: str, n: int, cache: Path, threshold: float | str) -> tuple[Auditor, float, float]:
    """(auditor, wall s, CPU s of this process): CPU seconds hardly depend on what else runs on the machine."""
    start, cpu = time.perf_counter(), time.process_time()
    auditor = Auditor.from_source(source(data, n), threshold=threshold, cache=cache)
    return auditor, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="/work/shared/data/colonoscopy-real")
    parser.add_argument("--sizes", default="250,500,1000", help="training-set sizes for the scaling table")
    parser.add_argument("--candidates", type=int, default=48)
    parser.add_argument("--baseline", help="another checkout: compare the demo check cost and verdicts with it")
    parser.add_argument("--repeats", type=int, default=3, help="--baseline: alternating runs per tree")
    parser.add_argument("--demo-only", action="store_true", help="skip the real-data table")
    parser.add_argument("--demo-child", help=argparse.SUPPRESS)  # internal: one --baseline measurement
    args = parser.parse_args()
    if args.demo_child:
        demo_child(args.demo_child, args.candidates)
        return
    if args.baseline:
        compare_with(args.baseline, args.repeats, max(args.candidates, 96))
    else:
        demo_row()
    if args.demo_only:
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    batch = candidates(args.data, args.candidates)
    print(
        f"{'train':>6} {'fit wall s':>10} {'fit cpu s':>9} {'calib s':>8} {'hit s':>6} {'state MB':>9} "
        f"{'img/s 1w':>8} {'img/s 2w':>8} {'cpu ms/img 1w':>13} {'cpu ms/img 2w':>13} {'cpu/wall 2w':>11}"
    )
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for n in sizes:
            rows.append(size_row(args.data, n, Path(folder) / f"n{n}", batch, calibrate=n == sizes[0]))
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    n = np.array([r[0] for r in rows], float)
    for name, column in (("fit CPU s", 1), ("fitted state MB (RAM; the cache entry is the same size)", 2),
                         ("check CPU ms/img", 3)):  # fmt: skip
        slope, intercept = np.polyfit(n, [r[column] for r in rows], 1)
        print(
            f"EXTRAPOLATED (linear fit over {args.sizes} frames, not measured) to 100k frames: {name} ~ "
            f"{slope * 100_000 + intercept:,.0f}"
        )


def size_row(data: str, n: int, cache: Path, batch: list[Sample], calibrate: bool) -> tuple[int, float, float, float]:
    """One row of the table: fit cold, (calibration,) cache hit, check with 1 and 2 workers."""
    _, wall, cpu = fit(data, n, cache, 0.5)  # fit only (fixed threshold)
    calibrate_s = float("nan")
    if calibrate:  # the fit is cached now: this is the calibration (threshold: auto) alone
        _, calibrate_s, _ = fit(data, n, cache, "auto")
    threshold = "auto" if calibrate else 0.5
    hit, hit_s, _ = fit(data, n, cache, threshold)
    if not hit.cache_hit:  # the detector's source changed meanwhile (a new key): measure the hit again
        hit, hit_s, _ = fit(data, n, cache, threshold)
    assert hit.cache_hit
    (one, use_one), (two, use_two) = rate(hit, batch, 1), rate(hit, batch, 2)
    cpu_one, cpu_two = 1000 * use_one / one, 1000 * use_two / two
    mb = state_mb(hit)
    print(
        f"{n:>6} {wall:>10.1f} {cpu:>9.1f} {calibrate_s:>8.1f} {hit_s:>6.2f} {mb:>9.1f} "
        f"{one:>8.2f} {two:>8.2f} {cpu_one:>13.0f} {cpu_two:>13.0f} {use_two:>11.2f}"
    )
    return n, cpu, mb, cpu_one


if __name__ == "__main__":
    main()
