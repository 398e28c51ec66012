"""Finishing batches in one worker thread while the caller samples the next: a bounded two-stage pipeline.

The denoiser runs on the calling thread; VAE decode, PIL conversion, image encoding and the audit check of
batch k run on the worker meanwhile. At most `depth` finished-but-uncollected batches wait (back-pressure: the
caller blocks before it samples further ahead). One worker runs the batches in order, and every step is the
same computation as the sequential path, so the results are the same bytes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


def _inference(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        import torch

        with torch.inference_mode():  # grad mode is per thread
            return fn()

    return run


class Finisher:
    """`submit(fn)` runs `fn` now (sequential) or on the worker (overlapped); `drain` yields results in order."""

    def __init__(self, overlap: bool, depth: int = 1):
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="synthgen-finish") if overlap else None
        self._pending: deque[Future] = deque()
        self._done: deque[Any] = deque()
        self.depth = depth

    def submit(self, fn: Callable[[], Any]) -> None:
        if self._pool is None:
            self._done.append(_inference(fn)())
            return
        while len(self._pending) > self.depth:  # back-pressure: do not sample further ahead than `depth`
            self._done.append(self._pending.popleft().result())
        self._pending.append(self._pool.submit(_inference(fn)))

    def ready(self) -> list[Any]:
        """Results finished so far, in submission order (collects completed work without waiting)."""
        while self._pending and self._pending[0].done():
            self._done.append(self._pending.popleft().result())
        out = list(self._done)
        self._done.clear()
        return out

    def drain(self) -> list[Any]:
        """Every remaining result, in submission order (waits for the worker)."""
        while self._pending:
            self._done.append(self._pending.popleft().result())
        return self.ready()

    def close(self) -> None:
        if self._pool is not None:
            for future in self._pending:
                future.cancel()
            self._pool.shutdown(wait=True)

    def __enter__(self) -> Finisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
