"""The audit's worker pool: copy detection spread over threads, with results in the serial order.

Threads, not processes: the costly calls (SIFT in OpenCV, its matcher, RANSAC, FAISS searches, numpy
products) release the GIL, and threads share the fitted index instead of copying hundreds of MB into each
process. One pool per worker count is shared by every auditor of the process; a task that itself asks for
a parallel map (an auditor checked from inside a pool thread) runs serially, so the pool can never deadlock
waiting on itself.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from synthgen.audit.detection.local_features import FeatureExtractor, Features
from synthgen.runtime import cpu_threads

T = TypeVar("T")
R = TypeVar("R")

_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}  # (process id, workers): a forked child makes its own
_POOLS_LOCK = threading.Lock()
_STATE = threading.local()


def worker_count(workers: int | None) -> int:
    """`workers`, or half the CPU threads synthgen may use (SYNTHGEN_THREADS, OMP_NUM_THREADS, affinity): OpenCV,
    FAISS and BLAS already run each call on up to `cpu_threads()` threads. Measured on 2 busy cores
    (bench/bench_audit_speed.py): 2 workers were no faster than 1 (demo: equal; 400 real training frames: 1 worker
    checked 1.5-1.7x more images/s, at ~2/3 of the CPU per image)."""
    return max(1, workers if workers is not None else cpu_threads() // 2)


def _pool(workers: int) -> ThreadPoolExecutor:
    key = (os.getpid(), workers)  # a fork keeps the pool object but not its threads: tasks would never run
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="synthgen-audit")
        return pool


def parallel_map(function: Callable[[T], R], items: Sequence[T], workers: int | None = None) -> list[R]:
    """[function(item) for item in items], spread over `workers` threads; serial for one worker, one item, or
    when called from a pool thread."""
    count = worker_count(workers)
    if count <= 1 or len(items) <= 1 or getattr(_STATE, "inside", False):
        return [function(item) for item in items]

    def run(item: T) -> R:
        _STATE.inside = True
        try:
            return function(item)
        finally:
            _STATE.inside = False

    return list(_pool(count).map(run, items))


def spans(n: int, parts: int) -> list[slice]:
    """`parts` contiguous, near-equal slices of range(n) (fewer when n is smaller), in order."""
    parts = max(1, min(parts, n))
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def match_in_chunks(
    match: Callable[..., list],
    images: list,
    workers: int | None,
    *,
    exclude: list[set[str]] | None = None,
    vectors: np.ndarray | None = None,
) -> list:
    """`match(images, ...)` as one contiguous chunk per worker, in threads, results in the serial order.

    Candidates are independent and the detector's searches are `stable` (no answer depends on its batch), so
    the chunks give exactly what the whole batch gives. `exclude` / `vectors` are passed only when given (a
    detector written by a caller may not take them).
    """
    count = worker_count(workers)

    def run(span: slice) -> list:
        extra: dict = {}
        if exclude is not None:
            extra["exclude"] = exclude[span]
        if vectors is not None:
            extra["vectors"] = vectors[span]
        return match(images[span], **extra)

    return [result for part in parallel_map(run, spans(len(images), count), count) for result in part]


class PerThreadExtractor:
    """A `FeatureExtractor` per thread: OpenCV does not promise that one SIFT object may run in two threads."""

    def __init__(self, max_keypoints: int) -> None:
        self.max_keypoints = max_keypoints
        self._local = threading.local()

    def __call__(self, gray: np.ndarray) -> Features:
        extractor = getattr(self._local, "extractor", None)
        if extractor is None:
            extractor = self._local.extractor = FeatureExtractor(max_keypoints=self.max_keypoints)
        return extractor(gray)
