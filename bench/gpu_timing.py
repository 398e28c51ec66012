"""Timing helpers shared by the benchmarks: device sync, peak memory, GPU utilisation, the bf16 matmul peak.

Every function takes a `torch.device` and does nothing (or returns None) where it has no meaning on the CPU.
torch is imported inside the functions, so importing this module is free.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

MATMUL_N = 8192


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> float | None:
    import torch

    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**30


def empty_cache(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()


def median_step(step: Callable[[], Any], device, warmup: int, steps: int) -> float:
    """Seconds of one `step()` call: the median of `steps` synchronised calls after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


class UtilSampler:
    """Mean GPU utilisation (nvidia-ml via torch.cuda.utilization) sampled every 100 ms; None where unreadable."""

    def __init__(self, device) -> None:
        self.device, self.samples, self._stop = device, [], threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> UtilSampler:
        import torch

        if self.device.type == "cuda":
            try:
                torch.cuda.utilization(self.device)
            except Exception:  # noqa: BLE001 - no NVML: no utilisation figure
                return self
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        import torch

        while not self._stop.wait(0.1):
            with contextlib.suppress(Exception):
                self.samples.append(float(torch.cuda.utilization(self.device)))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def matmul_peak_tflops(device, n: int = MATMUL_N, iterations: int = 10) -> float:
    """bf16 n^3 matmul on random data (not zeros: they run faster), median of `iterations` after 3 warm-ups."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del a, b
    return 2 * n**3 / statistics.median(times) / 1e12
