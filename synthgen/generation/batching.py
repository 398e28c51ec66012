"""The batch size synthgen samples in when the recipe says `sampling.batch_size: auto`, and the numerics record.

On a CPU the denoiser of a small model is bound by per-call overhead and cache reuse, not by arithmetic: on two
cores a tiny MSDM UNet costs about 15% less per image at 48 images a call (96 rows with guidance) than at 16
(docs/performance.md). Larger latents need fewer images for the same work per call. On CUDA the budget grows
with the device's total memory (not its free memory, which changes from run to run: the same hardware must pick
the same size, since a sample's float rounding may depend on the batch it was sampled in).
"""

from __future__ import annotations

import json
from typing import Any

CPU_LATENT_BUDGET = 48 * 16 * 16  # images x latent pixels per call: 48 at 64 px for a 4x VAE (tiny MSDM)
CUDA_LATENT_BUDGET_PER_GIB = 48 * 64 * 64 / 80  # 48 SD-1.5-sized 512 px images on an 80 GiB device
MAX_AUTO_BATCH = 128


def latent_side(pipeline: Any, resolution: int) -> int:
    scale = getattr(pipeline, "vae_scale_factor", None) or 8
    return max(1, resolution // int(scale))


def auto_batch_size(pipeline: Any, resolution: int, device: Any) -> int:
    """Images per pipeline call: a fixed latent-pixel budget (CPU), or one that grows with total GPU memory."""
    area = latent_side(pipeline, resolution) ** 2
    budget: float = CPU_LATENT_BUDGET
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
        budget = CUDA_LATENT_BUDGET_PER_GIB * total_gib
    return int(min(MAX_AUTO_BATCH, max(1, budget // area)))


def numerics_record(pipeline: Any, batch: int, prompt_cache: bool, threads: int | None = None) -> str:
    """What a sample's float rounding depends on beyond the recipe: batch, device, dtype, attention, versions,
    and on a CPU the torch threads of its denoising stream (`threads`).

    Not the number of streams: a batch's bytes depend only on its jobs and its stream's threads, so one-thread
    streams give the same bytes in a local build of any width and in one-CPU Ray workers.

    Stored per sample (`sampling_numerics`, a JSON object) so a rerun on the same hardware can be checked
    for the same bytes.
    """
    import diffusers
    import torch

    denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
    device = getattr(pipeline, "device", None)
    attention = "sdpa" if hasattr(torch.nn.functional, "scaled_dot_product_attention") else "math"
    record = {
        "batch": batch,
        "device": str(getattr(device, "type", device)),
        "dtype": str(getattr(denoiser, "dtype", "")).replace("torch.", ""),
        "attention": attention,
        "prompt_cache": prompt_cache,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }
    if threads is not None and record["device"] == "cpu":
        record["threads"] = threads
    return json.dumps(record, sort_keys=True, separators=(",", ":"))
