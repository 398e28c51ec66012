"""The timed paths of the generation benchmark, each over the same jobs on one loaded pipeline.

- `time_synthgen`: synthgen's `Generator.generate` over the plan's jobs (what `synthgen build` runs per shard);
- `time_stock`: a per-class loop of plain `StableDiffusionPipeline` calls (DDIM) saving PNGs, like a user script;
- `time_unet`: the UNet forward calls of the same jobs alone (steps x batches, CFG-doubled), nothing else;
- `run_build`: the whole `synthgen build` CLI in a fresh process;
- `run_stock_process`: the stock loop as a whole user script in a fresh process (`stock_script.py`), the
  like-for-like comparison for `run_build` (both pay interpreter start, imports and model loading).

Each returns a dict with at least `seconds` and `images`.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gen_model import CLASSES, BenchConfig, class_counts, class_counts_from
from gpu_timing import UtilSampler, peak_gib, reset_peak, sync

REPO = Path(__file__).resolve().parent.parent


def time_synthgen(pipeline, model_path: Path, recipe, device, **options: Any) -> dict[str, Any]:
    """synthgen's Generator.generate over the plan's jobs (the build's generation path).

    `options` go to the Generator (`overlap`, `prompt_cache`); each batch's PNGs are encoded in its `finish`
    step, where `synthgen build` encodes them. Every stream is warmed up (one batch each).
    """
    from synthgen.generate import Generator
    from synthgen.models.loading import LoadedModel
    from synthgen.output.writers import pre_encode
    from synthgen.plan import make_plan

    jobs = list(make_plan(recipe).jobs)
    loaded = LoadedModel(pipeline, "bench", "0" * 64, Path(model_path), {})
    provenance = {"recipe_name": recipe.name, "recipe_sha256": "0" * 64, "model_id": "bench", "model_sha256": "0" * 64}
    generator = Generator(loaded, recipe.sampling, provenance, **options)
    generator.generate(jobs[: generator.batch_size * generator.streams])  # warm-up: kernels, allocator, caches
    warm_wait = generator.wait.waited

    def encode(samples: list[Any]) -> None:
        for sample in samples:
            pre_encode(sample, "png")

    marks: list[float] = []

    def progress(*_: object) -> None:  # called after each batch; only the moment counts
        sync(device)
        marks.append(time.perf_counter())

    reset_peak(device)
    with UtilSampler(device) as util:
        sync(device)
        started = time.perf_counter()
        samples = generator.generate(jobs, progress, finish=encode)
        sync(device)
        seconds = time.perf_counter() - started
    assert len(samples) == len(jobs)
    batches = [b - a for a, b in zip([started, *marks], marks, strict=False)]
    return {
        "seconds": seconds,
        "images": len(jobs),
        "median_batch_s": statistics.median(batches) if batches else None,
        "batch": generator.batch_size,
        "overlap": generator.overlap,
        "streams": generator.streams,
        "threads": generator.threads,
        "denoiser_waited_s": generator.wait.waited - warm_wait,
        "prompt_cache": generator.prompts is not None,
        "peak_gib": peak_gib(device),
        "gpu_util": util.mean,
    }


def _stock_loop(pipeline, cfg: BenchConfig, call: dict[str, Any], device, png_dir: Path) -> dict[str, Any]:
    """Every class in batches of `cfg.batch`, each image saved as a PNG: images made, PNG seconds, batch times."""
    import torch

    counts = class_counts(cfg.images)
    batch_times: list[float] = []
    save_seconds, made = 0.0, 0
    for label, prompt in CLASSES.items():
        for start in range(0, counts[label], cfg.batch):
            n = min(cfg.batch, counts[label] - start)
            began = time.perf_counter()
            generator = torch.Generator(device=device.type).manual_seed(start)
            images = pipeline(prompt=[prompt] * n, generator=generator, **call).images
            saving = time.perf_counter()
            for i, image in enumerate(images):
                image.save(png_dir / f"{label}_{start + i:05d}.png")
            done = time.perf_counter()
            save_seconds += done - saving
            batch_times.append(done - began)
            made += len(images)
    return {"images": made, "png_seconds": save_seconds, "batch_times": batch_times}


def time_stock(pipeline, cfg: BenchConfig, resolution: int, device, png_dir: Path) -> dict[str, Any]:
    """A per-class loop of plain StableDiffusionPipeline calls (DDIM), each image saved as a PNG."""
    from diffusers import DDIMScheduler

    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    call = {"num_inference_steps": cfg.steps, "guidance_scale": cfg.guidance, "height": resolution, "width": resolution}
    first = next(iter(CLASSES.values()))
    pipeline(prompt=[first] * min(cfg.batch, cfg.images), **call)  # warm-up
    png_dir.mkdir(parents=True, exist_ok=True)
    reset_peak(device)
    with UtilSampler(device) as util:
        sync(device)
        started = time.perf_counter()
        loop = _stock_loop(pipeline, cfg, call, device, png_dir)
        sync(device)
        seconds = time.perf_counter() - started
    batch_times = loop.pop("batch_times")
    return {
        "seconds": seconds,
        **loop,
        "median_batch_s": statistics.median(batch_times) if batch_times else None,
        "peak_gib": peak_gib(device),
        "gpu_util": util.mean,
    }


def unet_inputs(pipeline, rows: int, resolution: int, device) -> tuple[Any, Any]:
    import torch

    unet = pipeline.unet
    scale = getattr(pipeline, "vae_scale_factor", 8)
    side = resolution // scale
    hidden = int(pipeline.text_encoder.config.hidden_size)
    length = int(pipeline.tokenizer.model_max_length)
    latents = torch.randn(rows, unet.config.in_channels, side, side, device=device, dtype=unet.dtype)
    states = torch.randn(rows, length, hidden, device=device, dtype=unet.dtype)
    return latents, states


def unet_flops(pipeline, rows: int, resolution: int, device) -> float:
    """FLOPs of one UNet forward at `rows` (torch's FlopCounterMode: matmuls, convolutions, SDPA)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    latents, states = unet_inputs(pipeline, rows, resolution, device)
    t = torch.tensor(500, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        pipeline.unet(latents, t, encoder_hidden_states=states)
    return float(counter.get_total_flops())


def time_unet(pipeline, cfg: BenchConfig, resolution: int, device) -> dict[str, Any]:
    """The UNet forward calls of the same jobs alone: synthgen's batches, `steps` calls each, CFG-doubled."""
    import torch

    cfg_factor = 2 if cfg.guidance > 1 else 1
    batches = [min(cfg.batch, cfg.images - s) for s in range(0, cfg.images, cfg.batch)]
    scheduler = type(pipeline.scheduler).from_config(pipeline.scheduler.config)
    scheduler.set_timesteps(cfg.steps)
    timesteps = [t.to(device) for t in scheduler.timesteps]
    inputs = {b: unet_inputs(pipeline, cfg_factor * b, resolution, device) for b in set(batches)}
    unet = pipeline.unet
    with torch.inference_mode():
        for b in sorted(inputs):  # warm-up every batch shape (cuDNN / SDPA algorithm choice per shape)
            for t in timesteps[:2]:
                unet(inputs[b][0], t, encoder_hidden_states=inputs[b][1])
        reset_peak(device)
        per_batch: list[float] = []
        with UtilSampler(device) as util:
            for b in batches:
                latents, states = inputs[b]
                sync(device)
                began = time.perf_counter()
                for t in timesteps:
                    unet(latents, t, encoder_hidden_states=states)
                sync(device)
                per_batch.append(time.perf_counter() - began)
    return {
        "seconds": sum(per_batch),
        "images": cfg.images,
        "calls": len(batches) * len(timesteps),
        "image_calls": sum(batches) * cfg_factor * len(timesteps),
        "median_batch_s": statistics.median(per_batch),
        "peak_gib": peak_gib(device),
        "gpu_util": util.mean,
    }


def timed_process(command: list[str], env: dict[str, str], what: str) -> float:
    """Wall seconds of `command` run whole in a fresh process; its last output lines in the error if it fails."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"{what} exited {done.returncode}: " + " | ".join(tail))
    return seconds


def run_build(recipe_data: dict[str, Any], work: Path) -> dict[str, Any]:
    """`python -m synthgen.cli build` in a fresh process (whole: imports, load, hash, generate, write).

    The child inherits the environment, SYNTHGEN_THREADS / OMP_NUM_THREADS included, so it uses the same
    number of CPU threads as the in-process paths.
    """
    import yaml

    recipe_path = work / "bench-recipe.yaml"
    out_dir = work / "build-out"
    recipe_path.write_text(yaml.safe_dump(recipe_data, sort_keys=False))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "SYNTHGEN_CACHE": str(work / "cache"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [sys.executable, "-m", "synthgen.cli", "build", str(recipe_path), "--out", str(out_dir), "--overwrite"]
    seconds = timed_process(command, env, "synthgen build")
    return {
        "seconds": seconds,
        "images": sum(class_counts_from(recipe_data).values()),
        "parquet_files": sum(1 for _ in out_dir.rglob("*.parquet")),
        "dtype": "synthgen's own choice (bf16 on CUDA, fp32 on CPU)",
    }


def run_stock_process(model_path: Path, cfg: BenchConfig, resolution: int, work: Path) -> dict[str, Any]:
    """`stock_script.py` in a fresh process (CPU): import, load, the per-class loop, PNGs; timed whole."""
    out = work / "stock-process-png"
    command = [
        sys.executable, str(Path(__file__).resolve().parent / "stock_script.py"), str(model_path), str(out),
        "--images", str(cfg.images), "--batch", str(cfg.batch), "--steps", str(cfg.steps),
        "--guidance", str(cfg.guidance), "--resolution", str(resolution),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    seconds = timed_process(command, env, "stock script")
    images = sum(1 for _ in out.glob("*.png"))
    return {"seconds": seconds, "images": images, "images_per_s": images / seconds}
