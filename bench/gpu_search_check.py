"""The `faiss` check of bench/gpu_check.py: nearest-neighbour search speed, faiss on the CPU and the GPU, torch.

Exact (`IndexFlatL2`) and IVF (`IndexIVFFlat`) search of `faiss_queries` random queries in `faiss_n` x
`faiss_d` float32, k = 10: faiss on the CPU (with synthgen's CPU thread count), faiss on the GPU where this
faiss has GPU support (else why not), and an exact search in torch on the device for comparison; IVF recall@1.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from gpu_context import Context
from gpu_timing import sync

K = 10
NO_FAISS_GPU = (
    "not available: this faiss has no GPU support (the faiss-cpu wheel travelled; faiss-gpu wheels need CUDA 12 "
    "cuBLAS/cudart wheels, hundreds of MB, over what a call can carry, and the machine has CUDA 13 libraries only)"
)


def timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
    """Median seconds of `repeats` calls, and the last call's result."""
    out, times = None, []
    for _ in range(repeats):
        began = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - began)
    return statistics.median(times), out


def _faiss_cpu(faiss: Any, ctx: Context, xb, xq, result: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Exact and IVF search on the CPU; returns (flat index, IVF index, exact ids)."""
    s = ctx.sizes
    faiss.omp_set_num_threads(ctx.threads)
    result["faiss_version"] = getattr(faiss, "__version__", None)
    result["faiss_threads"] = faiss.omp_get_max_threads()
    flat = faiss.IndexFlatL2(s.faiss_d)
    flat.add(xb)
    flat.search(xq[:10], K)
    seconds, (_, exact_ids) = timed(lambda: flat.search(xq, K))
    result["cpu_exact_s"] = round(seconds, 4)
    result["cpu_exact_qps"] = round(s.faiss_queries / seconds)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatL2(s.faiss_d), s.faiss_d, s.faiss_nlist)
    began = time.perf_counter()
    ivf.train(xb)
    ivf.add(xb)
    result["cpu_ivf_build_s"] = round(time.perf_counter() - began, 2)
    ivf.nprobe = s.faiss_nprobe
    seconds, (_, ivf_ids) = timed(lambda: ivf.search(xq, K))
    result["cpu_ivf_s"] = round(seconds, 4)
    result["cpu_ivf_qps"] = round(s.faiss_queries / seconds)
    result["ivf_recall_at_1"] = round(float((ivf_ids[:, 0] == exact_ids[:, 0]).mean()), 4)
    result["ivf"] = f"IVFFlat nlist {s.faiss_nlist} nprobe {s.faiss_nprobe}"
    return flat, ivf, exact_ids


def _faiss_gpu(faiss: Any, ctx: Context, flat, ivf, xq, result: dict[str, Any]) -> None:
    """The same indexes on the GPU where this faiss can; else the reason it cannot, in `faiss_gpu`."""
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    result["faiss_gpus"] = gpus
    if gpus == 0 or ctx.device.type != "cuda":
        result["faiss_gpu"] = NO_FAISS_GPU if gpus == 0 else "faiss sees a GPU but the check ran without CUDA"
        return
    resources = faiss.StandardGpuResources()
    gpu_flat = faiss.index_cpu_to_gpu(resources, 0, flat)
    gpu_flat.search(xq[:10], K)
    seconds, _ = timed(lambda: gpu_flat.search(xq, K))
    result["gpu_exact_s"] = round(seconds, 4)
    gpu_ivf = faiss.index_cpu_to_gpu(resources, 0, ivf)
    gpu_ivf.nprobe = ctx.sizes.faiss_nprobe
    gpu_ivf.search(xq[:10], K)
    seconds, _ = timed(lambda: gpu_ivf.search(xq, K))
    result["gpu_ivf_s"] = round(seconds, 4)


def _torch_exact(ctx: Context, xb, xq, exact_ids, result: dict[str, Any]) -> None:
    """The same exact search in torch on the device (what a GPU could do without faiss-gpu)."""
    import torch

    device = ctx.device
    base, queries = torch.from_numpy(xb).to(device), torch.from_numpy(xq).to(device)
    norms = (base * base).sum(1)

    def search() -> Any:
        ids = []
        for start in range(0, len(queries), 4096):
            q = queries[start : start + 4096]
            distances = norms[None, :] - 2 * q @ base.T  # + |q|^2, constant per row
            ids.append(distances.topk(K, dim=1, largest=False).indices)
        found = torch.cat(ids)
        sync(device)
        return found

    search()
    seconds, torch_ids = timed(search)
    result[f"torch_{device.type}_exact_s"] = round(seconds, 4)
    result[f"torch_{device.type}_exact_qps"] = round(ctx.sizes.faiss_queries / seconds)
    if exact_ids is not None:
        agree = torch_ids[:, 0].cpu().numpy() == exact_ids[:, 0]
        result["torch_recall_at_1_vs_faiss"] = round(float(agree.mean()), 4)


def _headline(ctx: Context, result: dict[str, Any]) -> str:
    parts = []
    if "cpu_exact_qps" in result:
        parts.append(f"faiss CPU exact {result['cpu_exact_qps']} q/s, IVF {result['cpu_ivf_qps']} q/s")
    if "gpu_exact_s" in result:
        parts.append(f"faiss GPU exact {ctx.sizes.faiss_queries / result['gpu_exact_s']:.0f} q/s")
    elif "faiss_gpu" in result or "faiss" in result:
        parts.append("faiss-gpu: not available")
    kind = ctx.device.type
    parts.append(f"torch {kind} exact {result[f'torch_{kind}_exact_qps']} q/s")
    return "; ".join(parts)


def check_faiss(ctx: Context) -> dict[str, Any]:
    import numpy as np

    s = ctx.sizes
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((s.faiss_n, s.faiss_d), dtype=np.float32)
    xq = rng.standard_normal((s.faiss_queries, s.faiss_d), dtype=np.float32)
    result: dict[str, Any] = {"n": s.faiss_n, "d": s.faiss_d, "queries": s.faiss_queries, "k": K}
    exact_ids = None
    try:
        import faiss
    except ImportError as error:
        result["faiss"] = f"not importable: {error}"
    else:
        flat, ivf, exact_ids = _faiss_cpu(faiss, ctx, xb, xq, result)
        _faiss_gpu(faiss, ctx, flat, ivf, xq, result)
    _torch_exact(ctx, xb, xq, exact_ids, result)
    result["headline"] = _headline(ctx, result)
    return result
