"""copydetect (the default audit detector) at scale: fit time and memory per training image, extrapolated to 100k.

    SYNTHGEN_THREADS=2 python bench/bench_copydetect_scale.py [--sizes 500,2000,8000] [--data DIR] [--spill-mib 64]

Each size N runs in fresh processes (so one size's memory does not hide another's): one fits a default
`CopyDetector` (regions on, as the build does) on N training images and saves it to the fit cache
(fit_cache.py), one loads that cache entry. Per N it prints fit wall and CPU seconds, peak RSS (VmHWM) and
RSS after fit, the bytes of the fitted state (sum of its arrays), the cache entry's size, the cache load's
time, RSS and anonymous (non file-backed) RSS, and `match` milliseconds per candidate for a fixed set of
`--candidates` images (edited copies and plain frames), fresh and after the load (and whether both gave the
same verdicts). Then the per-image slopes (least squares over the sizes) and their extrapolation to
100,000 training images: an extrapolation, printed as one.

Training images: the real colonoscopy frames of `--data` (default $SYNTHGEN_REAL_DATA/colonoscopy-real, the
imagefolder layout with metadata.csv, read through synthgen's own reader) and, beyond its 2,146 frames,
deterministic variants of the same frames (crop, mirror, colour jitter), so N can exceed the real count.
Variants of the same frames share content, so they are not an unrelated-frames benchmark: only cost and
memory are measured here, not detection. Numbers on a shared machine are noisy (CPU seconds less so).
`--tree DIR` runs another checkout's `synthgen` (e.g. a copy from before a change) for a before/after.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

MIB = 2**20
TARGET = 100_000
REPO = Path(__file__).resolve().parent.parent
VARIANTS_VERSION = 1  # bump when `variant` changes (it keys the fit cache through the fingerprint)


def default_data() -> str:
    return str(Path(os.environ.get("SYNTHGEN_REAL_DATA", "/work/shared/data")) / "colonoscopy-real")


def proc_status() -> dict[str, float]:
    """VmHWM (peak), VmRSS and RssAnon of this process in MiB (/proc/self/status)."""
    found = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS", "RssAnon"):
                found[name] = int(value.split()[0]) / 1024
    return found


class AnonPeak:
    """The peak anonymous RSS (RssAnon: the process's own memory, not the page cache behind memory maps) while
    in this context, sampled every 20 ms by a thread: VmHWM counts mapped file pages too, which the kernel can
    drop, and the fit reads its spilled keypoints through memory maps."""

    def __enter__(self) -> AnonPeak:
        import threading

        self.peak_mib, self._stop = proc_status()["RssAnon"], threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_mib = max(self.peak_mib, proc_status()["RssAnon"])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mib = max(self.peak_mib, proc_status()["RssAnon"])


def lower_spill(mib: int | None) -> None:
    """--spill-mib: spill keypoints, tile codes and index vectors past `mib` MiB instead of 1 GiB, so the bounded
    fit shows at sizes a bench can run (the arrays and verdicts do not change: tests/test_copydetect_scale.py)."""
    if mib:
        from synthgen.audit.index import index_backends

        index_backends.SPILL_BYTES = mib * MIB


def reset_peak() -> None:
    """Start VmHWM afresh (Linux: writing 5 to clear_refs), so the peak is the fit's, not the set-up's."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def variant(image: Image.Image, round_: int, index: int) -> Image.Image:
    """Round 0: the frame itself; later rounds: a crop of 80-95%, mirrored on odd rounds, colour-jittered,
    resized back (deterministic in round and index)."""
    if round_ == 0:
        return image
    rng = np.random.default_rng([round_, index])
    width, height = image.size
    keep = rng.uniform(0.80, 0.95)
    x0, y0 = rng.uniform(0, 1 - keep, 2)
    box = (round(x0 * width), round(y0 * height), round((x0 + keep) * width), round((y0 + keep) * height))
    out = image.convert("RGB").crop(box).resize(image.size, Image.Resampling.BILINEAR)
    if round_ % 2:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.85, 1.15))
    return ImageEnhance.Color(out).enhance(rng.uniform(0.8, 1.2))


def make_source(data: str, n: int):
    """A synthgen `Source` of `n` training images: the real frames, then their variants (module docstring)."""
    from synthgen.sample import Sample
    from synthgen.sources import open_source
    from synthgen.sources.base import Source
    from synthgen.sources.spec import SourceSpec

    def real():
        return open_source(SourceSpec(path=data, type="imagefolder"))

    class VariantSource(Source):
        def __len__(self) -> int:  # the audit's progress (and memory check) know the total
            return n

        def _iter_samples(self) -> Iterator[Sample]:
            count, round_ = 0, 0
            while count < n:
                for index, sample in enumerate(real()):
                    if count >= n:
                        return
                    key = sample.key if round_ == 0 else f"variant{round_}/{sample.key}"
                    yield Sample(key, variant(sample.image, round_, index), label=sample.label)
                    count += 1
                round_ += 1

        def fingerprint(self) -> str:
            blob = f"{real().fingerprint()} {n} {VARIANTS_VERSION}"
            return hashlib.sha256(blob.encode()).hexdigest()

    return VariantSource(description=f"{n} frames of {data} (variants beyond the real ones)")


def candidates(data: str, count: int) -> list[Image.Image]:
    """A fixed set: rotated / cropped-and-enlarged copies of the first frames, and plain frames from the end."""
    from synthgen.sources import open_source
    from synthgen.sources.spec import SourceSpec

    half = count // 2
    first = [s.image for s in open_source(SourceSpec(path=data, type="imagefolder", limit=half))]
    copies = [f.rotate(10) if i % 2 else f.crop((40, 40, 200, 200)).resize(f.size) for i, f in enumerate(first)]
    last = deque((s.image for s in open_source(SourceSpec(path=data, type="imagefolder"))), maxlen=count - half)
    return copies + list(last)


def timed_match(detector, images: list[Image.Image]) -> tuple[float, list]:
    """(ms per candidate, the verdicts as plain values), in batches of 16 as the build checks them."""
    detector.match_evidence(images[:2])  # first-call costs (lazy float tiles, FAISS init) not counted
    start = time.perf_counter()
    found = [v for i in range(0, len(images), 16) for v in detector.match_evidence(images[i : i + 16])]
    ms = 1000 * (time.perf_counter() - start) / len(images)
    return ms, [[round(s, 6), k, repr(e)] for s, k, e in found]


def child_fit(args: argparse.Namespace) -> dict:
    """Fit on N images and save the cache entry (this process): the figures of one size."""
    from synthgen.audit.detection.copydetect import CopyDetector
    from synthgen.audit.detection.fit_cache import _parts, _save, copydetect_key

    images = candidates(args.data, args.candidates)
    source = make_source(args.data, args.n)
    detector = CopyDetector()
    lower_spill(args.spill_mib)
    reset_peak()
    before = proc_status()
    start, cpu = time.perf_counter(), time.process_time()
    with AnonPeak() as anon:
        detector.fit(source)
    fit_s, fit_cpu = time.perf_counter() - start, time.process_time() - cpu
    after = proc_status()
    arrays, keypoints, _ = _parts(detector)
    state = sum(a.nbytes for a in arrays.values()) + sum(store.nbytes for store in keypoints.values())
    del arrays, keypoints
    entry = Path(args.cache) / f"copydetect-{copydetect_key(source.fingerprint(), detector)}"
    start = time.perf_counter()
    _save(detector, entry, entry.name.removeprefix("copydetect-"))
    save_s = time.perf_counter() - start
    match_ms, verdicts = timed_match(detector, images)
    cache_bytes = sum(p.stat().st_size for p in entry.iterdir() if p.is_file())
    import synthgen

    return {
        "synthgen": str(Path(synthgen.__file__).parent),
        "n": detector.n_train,
        "fit_s": fit_s,
        "fit_cpu_s": fit_cpu,
        "rss_before_mib": before["VmRSS"],
        "peak_mib": after["VmHWM"],
        "peak_anon_mib": anon.peak_mib,
        "rss_fit_mib": after["VmRSS"],
        "anon_fit_mib": after["RssAnon"],
        "state_mib": state / MIB,
        "save_s": save_s,
        "cache_mib": cache_bytes / MIB,
        "match_ms": match_ms,
        "verdicts": verdicts,
    }


def child_load(args: argparse.Namespace) -> dict:
    """Load the size's cache entry in a fresh process: time, RSS, and match cost from the loaded state."""
    from synthgen.audit.detection.copydetect import CopyDetector
    from synthgen.audit.detection.fit_cache import FitCache

    images = candidates(args.data, args.candidates)
    source = make_source(args.data, args.n)
    source.fingerprint()
    detector = CopyDetector()
    before = proc_status()
    store = FitCache(args.cache)
    start = time.perf_counter()
    store.fit(detector, source)
    load_s = time.perf_counter() - start
    after = proc_status()
    match_ms, verdicts = timed_match(detector, images)
    matched = proc_status()
    return {
        "hit": store.hit,
        "load_s": load_s,
        "load_rss_mib": after["VmRSS"] - before["VmRSS"],
        "load_anon_mib": after["RssAnon"] - before["RssAnon"],
        "match_anon_mib": matched["RssAnon"] - before["RssAnon"],
        "load_match_ms": match_ms,
        "load_verdicts": verdicts,
    }


def run_child(args: argparse.Namespace, mode: str, n: int, cache: str) -> dict:
    env = {**os.environ, "SYNTHGEN_BENCH_TREE": str(Path(args.tree or REPO).resolve())}
    command = [sys.executable, __file__, f"--{mode}", str(n), "--cache", cache, "--data", args.data]
    command += ["--candidates", str(args.candidates)] + (["--spill-mib", str(args.spill_mib)] if args.spill_mib else [])
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def slopes(rows: list[dict], name: str) -> tuple[float, float]:
    """(per-image slope, intercept) of a column over the sizes (least squares; a single size: through 0)."""
    n = np.array([r["n"] for r in rows], float)
    values = np.array([r[name] for r in rows], float)
    if len(rows) == 1:
        return float(values[0] / n[0]), 0.0
    slope, intercept = np.polyfit(n, values, 1)
    return float(slope), float(intercept)


def report(rows: list[dict]) -> None:
    print(
        f"\n{'N':>6} {'fit s':>7} {'fit cpu s':>9} {'peak MiB':>9} {'peak anon':>9} {'rss fit':>8} {'anon fit':>8} "
        f"{'state MiB':>9} {'cache MiB':>9} "
        f"{'save s':>6} {'load s':>6} {'load rss':>8} {'load anon':>9} {'anon+match':>10} {'match ms':>8} "
        f"{'ms hit':>6} {'same':>5}"
    )
    for r in rows:
        print(
            f"{r['n']:>6} {r['fit_s']:>7.1f} {r['fit_cpu_s']:>9.1f} {r['peak_mib']:>9.0f} {r['peak_anon_mib']:>9.0f} "
            f"{r['rss_fit_mib']:>8.0f} {r['anon_fit_mib']:>8.0f} "
            f"{r['state_mib']:>9.1f} {r['cache_mib']:>9.1f} {r['save_s']:>6.1f} {r['load_s']:>6.2f} "
            f"{r['load_rss_mib']:>8.0f} {r['load_anon_mib']:>9.0f} {r['match_anon_mib']:>10.0f} "
            f"{r['match_ms']:>8.0f} {r['load_match_ms']:>6.0f} {str(r['verdicts'] == r['load_verdicts']):>5}"
        )
    print(f"\nper training image (least squares over N = {', '.join(str(r['n']) for r in rows)}), and EXTRAPOLATED")
    print(f"(not measured) to {TARGET:,} training images:")
    columns = (
        ("fit wall", "fit_s", "s"),
        ("fit CPU", "fit_cpu_s", "s"),
        ("peak RSS of fit", "peak_mib", "MiB"),
        ("peak anonymous RSS of fit", "peak_anon_mib", "MiB"),
        ("RSS after fit", "rss_fit_mib", "MiB"),
        ("anonymous RSS after fit", "anon_fit_mib", "MiB"),
        ("fitted state", "state_mib", "MiB"),
        ("cache entry", "cache_mib", "MiB"),
        ("anonymous RSS after a cache load", "load_anon_mib", "MiB"),
        ("anonymous RSS after load + match", "match_anon_mib", "MiB"),
        ("match per candidate", "match_ms", "ms"),
    )
    for label, name, unit in columns:
        slope, intercept = slopes(rows, name)
        per = f"{slope * 1024:.1f} KiB" if unit == "MiB" else f"{slope * 1000:.3f} {'ms' if unit == 's' else 'us'}"
        total = slope * TARGET + intercept
        shown = f"{total / 1024:.1f} GiB" if unit == "MiB" else f"{total:,.0f} {unit}"
        print(f"  {label:<34} {per:>12} per image  -> {shown} at {TARGET:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=default_data())
    parser.add_argument("--sizes", default="500,2000,8000", help="training-set sizes, one fresh process each")
    parser.add_argument("--candidates", type=int, default=32, help="images matched per size")
    parser.add_argument("--spill-mib", type=int, help="spill past this many MiB instead of 1 GiB (shows the bound)")
    parser.add_argument("--tree", help="run this checkout's synthgen instead of the one next to this script")
    parser.add_argument("--cache", help=argparse.SUPPRESS)  # internal: the child's fit cache folder
    parser.add_argument("--fit", type=int, dest="fit_n", help=argparse.SUPPRESS)  # internal: one fit
    parser.add_argument("--load", type=int, dest="load_n", help=argparse.SUPPRESS)  # internal: one load
    args = parser.parse_args()
    if args.fit_n or args.load_n:
        args.n = args.fit_n or args.load_n
        print(json.dumps(child_fit(args) if args.fit_n else child_load(args)))
        return
    tree = args.tree or str(REPO)
    print(f"copydetect at scale: synthgen from {tree}, data {args.data}, {args.candidates} candidates", flush=True)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        with tempfile.TemporaryDirectory(prefix="synthgen-scale-") as cache:
            row = run_child(args, "fit", n, cache)
            row.update(run_child(args, "load", n, cache))
        print(
            f"  N={n}: fit {row['fit_s']:.0f} s, peak {row['peak_mib']:.0f} MiB, hit {row['hit']}, {row['synthgen']}",
            flush=True,
        )
        rows.append(row)
    report(rows)


if __name__ == "__main__":
    sys.path.insert(0, os.environ.get("SYNTHGEN_BENCH_TREE", str(REPO)))
    main()
