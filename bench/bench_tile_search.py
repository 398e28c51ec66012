"""copydetect's tile search at scale: the search as it is against the previous formulation, side by side.

    SYNTHGEN_THREADS=1 OMP_NUM_THREADS=1 python bench/bench_tile_search.py [--frames 4000,16000] [--queries 32]

The region path of every check (regions.py: `RegionIndex.search`) scores each candidate's tile-vocabulary codes
against every training tile code (16 per frame, 4,096 int8 components each) exactly. Past ~1,000 training frames
the float32 copy of the codes is not kept, so every search converts them. Previously each block of 2,048 frames'
codes was converted and scaled whole (`codes.astype(float32) * scales`, ~0.5 GB of temporaries per block) before
the product; now TILE_BLOCK codes at a time go into one reused buffer and the scale multiplies the product.
This bench builds a RegionIndex of random codes (no fit: the search does not look at keypoints), times both on
the same queries, interleaved, and checks they retrieve the same frames. One search = one check batch of 16
candidates and their mirrors (32 codes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's synthgen, not an installed one

from synthgen.audit.detection.keypoint_store import KeypointStore  # noqa: E402
from synthgen.audit.detection.regions import RegionIndex  # noqa: E402


def index_of(frames: int, seed: int = 0) -> RegionIndex:
    rng = np.random.default_rng(seed)
    regions = RegionIndex()
    tiles = rng.integers(12, 17, frames)  # frames hold 12-16 coded tiles
    regions.owner = np.repeat(np.arange(frames), tiles)
    regions.codes = rng.integers(-127, 128, (len(regions.owner), 4096), dtype=np.int8)
    regions.scales = rng.uniform(0.001, 0.01, len(regions.owner)).astype(np.float32)
    empty = np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8), np.zeros(frames + 1, np.int64)
    regions.features = KeypointStore.over(*empty)
    return regions


class PreviousSearch(RegionIndex):
    """The search before this change (regions.py at 3989f31): each block of IMAGE_BLOCK frames' codes converted and
    scaled whole, then multiplied (the rest of `search` did not change)."""

    def _similarities(self, queries: np.ndarray, first: int, last: int, floats: np.ndarray | None) -> np.ndarray:
        return queries @ (self.codes[first:last].astype(np.float32) * self.scales[first:last, None]).T


def previous_of(regions: RegionIndex) -> PreviousSearch:
    previous = PreviousSearch()
    previous.__dict__.update(regions.__dict__)  # the same arrays, not copies
    return previous


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", default="4000,16000", help="training frames, comma-separated")
    parser.add_argument("--queries", type=int, default=32, help="codes per search (a check batch: 16 + mirrors)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("wall seconds per search, median of the repeats (CPU seconds in brackets)")
    print(f"{'frames':>7} {'tiles':>8} {'previous s':>16} {'now s':>14} {'speed-up':>8} {'same rows':>9}")
    for frames in [int(n) for n in args.frames.split(",")]:
        regions = index_of(frames)
        queries = np.random.default_rng(1).standard_normal((args.queries, 4096)).astype(np.float32)
        exclude: list[set[int]] = [set() for _ in range(args.queries)]
        times: dict[str, list[float]] = {"previous": [], "now": []}
        cpus: dict[str, list[float]] = {"previous": [], "now": []}
        results = {}
        searches = {"previous": previous_of(regions).search, "now": regions.search}
        for _ in range(args.repeats):  # interleaved: the machine's load moves both alike
            for name, search in searches.items():
                start, cpu = time.perf_counter(), time.process_time()
                results[name] = search(queries, exclude)
                times[name].append(time.perf_counter() - start)
                cpus[name].append(time.process_time() - cpu)
        before, after = float(np.median(times["previous"])), float(np.median(times["now"]))
        same = sum(a == b for a, b in zip(results["previous"], results["now"], strict=True))
        cpu_before, cpu_after = float(np.median(cpus["previous"])), float(np.median(cpus["now"]))
        print(
            f"{frames:>7} {len(regions.owner):>8} {before:>8.2f} ({cpu_before:>5.2f}) "
            f"{after:>6.2f} ({cpu_after:>5.2f}) "
            f"{before / after:>7.2f}x {same:>6}/{args.queries}"
        )
        print("   each call, wall s:", {name: [round(t, 2) for t in values] for name, values in times.items()})


if __name__ == "__main__":
    main()
