"""How fast the copy audit keeps up, side by side in one run on real colonoscopy frames:

1. audited images/s of `Auditor.check` with 1 and with 2 worker threads (same auditor, same candidates);
2. fitting the training index cold (cache miss: keypoints, vocabularies, tiles, calibration) against loading
   it from the on-disk cache (fit_cache.py);
3. fit time, resident state and match cost at a few training-set sizes, extrapolated linearly to 100k frames
   (an extrapolation, printed as one; embedding indexes at 100k are measured by bench_index_scale.py).

    SYNTHGEN_THREADS=2 python bench/bench_audit_speed.py --data /work/shared/data/colonoscopy-real

Numbers on a shared machine are noisy: compare the columns of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import resource
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
    train = SourceSpec(type="demo", classes=["polyp", "ulcer", "normal"], per_class=48, resolution=64)
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
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    demo_row()
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
