"""What every check of bench/gpu_check.py shares: the sizes, the run's context and report, the per-check wrapper.

A check is a function `check(ctx: Context) -> dict` (its figures, with a one-line `headline`); `run_check`
gives it its own peak-memory window and records its result, its error (with the traceback tail) or that it
was skipped for want of budget, then rewrites `gpu_check.json`.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclasses.dataclass
class Sizes:
    """How big each check is: the GPU sizes, or tiny ones for --smoke on a CPU."""

    device: str = "cuda"
    preset: str = "base"
    resolution: int = 256
    train_batches: tuple[int, ...] = (32, 128)
    train_steps: int = 20
    train_warmup: int = 3
    latent_items: int = 512
    vae_batch: int = 16
    vae_steps: int = 5
    gen_images: int = 288
    gen_batch: int = 32
    gen_steps: int = 25
    gen_repeats: int = 3
    gen_build: bool = True
    faiss_n: int = 100_000
    faiss_d: int = 512
    faiss_queries: int = 10_000
    faiss_nlist: int = 1024
    faiss_nprobe: int = 16
    sd15_preset: str = "sd15"
    sd15_resolution: int = 512
    sd15_images: int = 48
    sd15_batch: int = 16
    matmul_n: int = 8192


SMOKE = Sizes(
    device="cpu",
    preset="tiny",
    resolution=64,
    train_batches=(4,),
    train_steps=2,
    train_warmup=1,
    latent_items=8,
    vae_batch=2,
    vae_steps=1,
    gen_images=6,
    gen_batch=3,
    gen_steps=3,
    gen_repeats=1,
    gen_build=True,
    faiss_n=5_000,
    faiss_d=64,
    faiss_queries=200,
    faiss_nlist=16,
    faiss_nprobe=4,
    sd15_preset="small",  # the SD-1.5-sized model is too big for a CPU smoke run: same code path, small model
    sd15_resolution=64,
    sd15_images=3,
    sd15_batch=3,
    matmul_n=512,
)


class Context:
    """The run: its sizes, device, CPU threads, deadline, report (written to `out`) and the bf16 peak once known."""

    def __init__(self, sizes: Sizes, budget_s: float, out: Path | None, smoke: bool) -> None:
        import torch

        from synthgen.runtime import use_cpu_threads

        self.sizes, self.out, self.smoke = sizes, out, smoke
        self.started = time.perf_counter()
        self.deadline = self.started + budget_s
        self.device = torch.device(sizes.device if sizes.device != "cuda" or torch.cuda.is_available() else "cpu")
        self.threads = use_cpu_threads()  # synthgen's count (SYNTHGEN_THREADS, OMP_NUM_THREADS, affinity mask)
        self.report: dict[str, Any] = {"smoke": smoke, "budget_s": budget_s, "checks": {}}
        self.peak_tflops: float | None = None

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def save(self) -> None:
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.report["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        (self.out / "gpu_check.json").write_text(json.dumps(self.report, indent=2, default=str))


Check = Callable[[Context], dict[str, Any]]


def _clean(ctx: Context) -> None:
    import torch

    gc.collect()
    if ctx.device.type == "cuda":
        torch.cuda.empty_cache()


def _run(ctx: Context, name: str, check: Check) -> dict[str, Any]:
    """The check's record: its figures and status ok, or its error; seconds, and peak GiB on CUDA."""
    import torch

    cuda = ctx.device.type == "cuda"
    _clean(ctx)
    if cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)
    began = time.perf_counter()
    try:
        record = {"status": "ok", **check(ctx)}
    except Exception as error:  # noqa: BLE001 - one failure must not stop the other checks
        record = {
            "status": "error",
            "error": f"{type(error).__name__}: {error}"[:2000],
            "traceback": traceback.format_exc()[-4000:],
        }
        log(f"{name}: FAILED {record['error'][:500]}")
    record["seconds"] = round(time.perf_counter() - began, 1)
    if cuda:
        torch.cuda.synchronize(ctx.device)
        record["peak_gib"] = round(torch.cuda.max_memory_allocated(ctx.device) / 2**30, 2)
    _clean(ctx)
    return record


def run_check(ctx: Context, name: str, estimate_s: float, check: Check) -> None:
    """Run one check with its own peak-memory window; record its result, its error, or that it was skipped."""
    if ctx.left() < estimate_s:
        record = {"status": "skipped", "reason": f"{ctx.left():.0f}s left of the budget, needs ~{estimate_s:.0f}s"}
        log(f"{name}: skipped ({record['reason']})")
    else:
        log(f"{name}: start ({ctx.left():.0f}s of budget left)")
        record = _run(ctx, name, check)
        log(f"{name}: {record['status']} in {record['seconds']}s")
    ctx.report["checks"][name] = record
    ctx.save()
