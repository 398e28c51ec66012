"""Generation speed, side by side in one run on one model: synthgen vs a stock diffusers loop vs the UNet alone.

    python bench/bench_generation.py --preset tiny --resolution 64 --images 32          # quick, CPU
    python bench/bench_generation.py --device cuda --preset base --resolution 256 --dtype bf16 --batch 32 --build
    python bench/bench_generation.py --model path/to/pipeline --images 64 --batch 8      # an existing pipeline

Paths timed on the same model, same jobs (classes x prompts), steps, guidance, batch and resolution:

- synthgen: `synthgen.generate.Generator.generate` on the plan's jobs (what `synthgen build` runs per shard;
  PIL images plus provenance, no files), and with `--build` the whole `synthgen build` CLI in a fresh process
  (import, model load and hash, generation, Parquet + WebDataset shards with PNGs, manifest, card; audit off);
- stock: a per-class loop of `StableDiffusionPipeline` calls (DDIM) saving each image as a PNG, like a user
  script (also reported without the PNG saving);
- UNet alone: the UNet forward calls of the same jobs (steps x batches, batch doubled for CFG), nothing else.

Without `--model` an untrained MSDM of `--preset` is built in-process with synthgen's builders and saved with
save_pretrained (speed does not depend on the weights); `--preset sd15` builds an SD-1.5-sized pipeline
(SD-1.5 UNet and VAE configs, a 12-layer 768-wide BERT in place of CLIP's text model).

Prints a table and the ratios synthgen / stock (images/s) and synthgen wall / pure UNet time. On CUDA also
peak memory per path, GPU utilisation, and in bf16 the UNet's achieved TFLOP/s (FLOPs counted with
FlopCounterMode on one call) and its share of a bf16 matmul peak measured in the same run.
`run_benchmark(BenchConfig(...))` returns the same numbers as a dict (bench/gpu_check.py calls it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: synthgen from this checkout
    sys.path.insert(0, str(REPO))

CLASSES = {
    "polyp": "colonoscopy image showing a small polyp in the upper left",
    "ulcer": "colonoscopy image showing a large ulcer in the centre",
    "normal": "colonoscopy image showing normal mucosa",
}
DEFAULT_RESOLUTION = {"tiny": 64, "small": 128, "base": 256, "sd15": 512}
MATMUL_N = 8192


def first_import(*candidates: tuple[str, str]) -> Any:
    """The first (module, name) that imports: synthgen is being reorganised, old and new homes both work."""
    errors = []
    for module, name in candidates:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as error:
            errors.append(f"{module}.{name}: {error}")
    raise ImportError("; ".join(errors))


@dataclass
class BenchConfig:
    device: str = "auto"
    preset: str = "tiny"  # tiny | small | base (synthgen's MSDM presets) | sd15 (SD-1.5-sized)
    resolution: int | None = None  # default: the preset's (tiny 64, small 128, base 256, sd15 512) or the model's
    model: str | None = None  # an existing diffusers pipeline folder instead of a built one
    images: int = 48
    steps: int = 25
    guidance: float = 3.5
    batch: int = 16
    dtype: str | None = None  # fp32 | bf16; default bf16 on CUDA, fp32 elsewhere
    build: bool = False  # also time the whole `synthgen build` CLI in a fresh process
    repeats: int = 1  # each path runs this many times; the median is reported
    save_dtype: str = "fp32"  # weights dtype of a built model on disk
    matmul_peak: bool = True  # on CUDA: time an 8192^3 bf16 matmul for the share of peak
    work_dir: str | None = None  # where the model, PNGs and build output go (default: a temporary folder)


# ----------------------------------------------------------------------------------------------- helpers


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


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


# ------------------------------------------------------------------------------------------ the model


def build_model(preset: str, resolution: int, out_dir: Path, device: str = "cpu", save_dtype: str = "fp32") -> Path:
    """An untrained pipeline saved with save_pretrained: synthgen's MSDM preset, or `sd15` (SD-1.5 sizes).

    Modules are initialised on `device` (fast on a GPU), then moved to the CPU and saved in `save_dtype`.
    """
    import torch

    msdm = importlib.import_module("synthgen.models.msdm")
    prompts = list(CLASSES.values())
    if preset == "sd15":
        from diffusers import AutoencoderKL, UNet2DConditionModel

        spec = dataclasses.replace(msdm.PRESETS["base"], text_layers=12, text_heads=12, text_hidden=768)
        tokenizer = msdm.train_tokenizer(prompts, spec)
        with torch.device(device):
            vae = AutoencoderKL(
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512),
                layers_per_block=2,
                latent_channels=4,
                sample_size=resolution,
            )
            unet = UNet2DConditionModel(sample_size=resolution // 8, cross_attention_dim=768)  # SD-1.5's config
            text = msdm.build_text_encoder(spec, len(tokenizer))
    else:
        spec = msdm.PRESETS[preset]
        tokenizer = msdm.train_tokenizer(prompts, spec)
        with torch.device(device):
            vae = msdm.build_vae(spec, resolution)
            text = msdm.build_text_encoder(spec, len(tokenizer))
            unet = msdm.build_unet(spec, resolution, vae=vae, cross_attention_dim=spec.text_hidden)
    dtype = torch_dtype(save_dtype)
    parts = [module.to("cpu") for module in (vae, text, unet)]
    if dtype != torch.float32:
        parts = [module.to(dtype) for module in parts]
    pipeline = msdm.assemble_pipeline(parts[0], parts[1], tokenizer, parts[2])
    pipeline.save_pretrained(out_dir)
    return Path(out_dir)


def load_pipeline(path: Path, device, dtype):
    """Load a pipeline folder the way a user script does, every part in eval mode, no progress bars."""
    from diffusers import DiffusionPipeline

    with contextlib.suppress(ImportError):
        first_import(("synthgen.runtime", "quiet_libraries"), ("synthgen.models", "quiet_libraries"))()
    try:
        dtype_kwarg = first_import(("synthgen.runtime", "dtype_kwarg"), ("synthgen.generate", "_dtype_kwarg"))
        kwargs = dtype_kwarg(dtype)
    except ImportError:
        kwargs = {"torch_dtype": dtype}
    pipeline = DiffusionPipeline.from_pretrained(path, **kwargs, local_files_only=True).to(device)
    for component in pipeline.components.values():
        if hasattr(component, "eval"):
            component.eval()
    if getattr(pipeline, "safety_checker", None) is not None:
        pipeline.safety_checker = None
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def class_counts(images: int) -> dict[str, int]:
    labels = list(CLASSES)
    return {label: images // len(labels) + (i < images % len(labels)) for i, label in enumerate(labels)}


def recipe_dict(cfg: BenchConfig, model_path: Path, device, resolution: int, out_dir: Path) -> dict[str, Any]:
    return {
        "name": "bench-generation",
        "model": {"pretrained": str(model_path)},
        "classes": {label: {"count": n, "prompts": [CLASSES[label]]} for label, n in class_counts(cfg.images).items()},
        "sampling": {
            "scheduler": "ddim",
            "steps": cfg.steps,
            "guidance_scale": cfg.guidance,
            "resolution": resolution,
            "batch_size": cfg.batch,
            "seed": 0,
            "device": device.type,
        },
        "audit": {"enabled": False},
        "output": {"dir": str(out_dir), "formats": ["parquet", "webdataset"], "image_format": "png"},
    }


# --------------------------------------------------------------------------------------------- the paths


def time_synthgen(pipeline, model_path: Path, recipe, device) -> dict[str, Any]:
    """synthgen's Generator.generate over the plan's jobs (the build's generation path)."""
    generator_class = first_import(("synthgen.generate", "Generator"))
    loaded_model = first_import(("synthgen.models.loading", "LoadedModel"), ("synthgen.generate", "LoadedModel"))
    make_plan = first_import(("synthgen.plan", "make_plan"))

    jobs = list(make_plan(recipe).jobs)
    loaded = loaded_model(pipeline, "bench", "0" * 64, Path(model_path), {})
    provenance = {"recipe_name": recipe.name, "recipe_sha256": "0" * 64, "model_id": "bench", "model_sha256": "0" * 64}
    generator = generator_class(loaded, recipe.sampling, provenance)
    generator.generate(jobs[: recipe.sampling.batch_size])  # warm-up: kernels, allocator, caches
    marks: list[float] = []

    def progress(*_: object) -> None:  # (done, total) today; (stage, done, total) after the reorganisation
        sync(device)
        marks.append(time.perf_counter())

    reset_peak(device)
    with UtilSampler(device) as util:
        sync(device)
        started = time.perf_counter()
        samples = generator.generate(jobs, progress)
        sync(device)
        seconds = time.perf_counter() - started
    assert len(samples) == len(jobs)
    batches = [b - a for a, b in zip([started, *marks], marks, strict=False)]
    return {
        "seconds": seconds,
        "images": len(jobs),
        "median_batch_s": statistics.median(batches) if batches else None,
        "peak_gib": peak_gib(device),
        "gpu_util": util.mean,
    }


def time_stock(pipeline, cfg: BenchConfig, resolution: int, device, png_dir: Path) -> dict[str, Any]:
    """A per-class loop of plain StableDiffusionPipeline calls (DDIM), each image saved as a PNG."""
    import torch
    from diffusers import DDIMScheduler

    pipeline.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    call = {"num_inference_steps": cfg.steps, "guidance_scale": cfg.guidance, "height": resolution, "width": resolution}
    first = next(iter(CLASSES.values()))
    pipeline(prompt=[first] * min(cfg.batch, cfg.images), **call)  # warm-up
    png_dir.mkdir(parents=True, exist_ok=True)
    counts = class_counts(cfg.images)
    batch_times: list[float] = []
    save_seconds, made = 0.0, 0
    reset_peak(device)
    with UtilSampler(device) as util:
        sync(device)
        started = time.perf_counter()
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
        sync(device)
        seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "images": made,
        "png_seconds": save_seconds,
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


def run_build(recipe_data: dict[str, Any], work: Path, device) -> dict[str, Any]:
    """`python -m synthgen.cli build` in a fresh process (whole: imports, load, hash, generate, write)."""
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
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-15:]
        raise RuntimeError(f"synthgen build exited {done.returncode}: " + " | ".join(tail))
    written = sum(1 for _ in out_dir.rglob("*.parquet"))
    return {
        "seconds": seconds,
        "images": sum(class_counts_from(recipe_data).values()),
        "parquet_files": written,
        "dtype": "synthgen's own choice (bf16 on CUDA, fp32 on CPU)",
    }


def class_counts_from(recipe_data: dict[str, Any]) -> dict[str, int]:
    return {label: spec["count"] for label, spec in recipe_data["classes"].items()}


# --------------------------------------------------------------------------------------------- the run


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median wall time (its other figures stay consistent with it), plus every time."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["all_seconds"] = [round(r["seconds"], 4) for r in runs]
    chosen["images_per_s"] = chosen["images"] / chosen["seconds"]
    return chosen


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build or load the model, time every path, return the figures (see the module docstring)."""
    import torch

    pick_device = first_import(("synthgen.runtime", "pick_device"), ("synthgen.generate", "pick_device"))
    parse_recipe = first_import(("synthgen.recipe", "parse_recipe"))
    device = pick_device(cfg.device)
    dtype_name = cfg.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch_dtype(dtype_name)
    warnings.filterwarnings("ignore", message=".*invalid value encountered in cast.*")  # untrained VAE outputs

    with contextlib.ExitStack() as stack:
        work = Path(cfg.work_dir) if cfg.work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        began = time.perf_counter()
        if cfg.model:
            model_path = Path(cfg.model).resolve()
        else:
            resolution = cfg.resolution or DEFAULT_RESOLUTION[cfg.preset]
            try:  # initialising on the GPU is fast; the CPU always works
                model_path = build_model(cfg.preset, resolution, work / "model", device.type, cfg.save_dtype)
            except Exception as error:  # noqa: BLE001 - retry where it cannot fail for the device's sake
                if device.type == "cpu":
                    raise
                log(f"building on {device.type} failed ({type(error).__name__}: {error}); building on the CPU")
                model_path = build_model(cfg.preset, resolution, work / "model", "cpu", cfg.save_dtype)
        build_seconds = time.perf_counter() - began
        began = time.perf_counter()
        pipeline = load_pipeline(model_path, device, dtype)
        load_seconds = time.perf_counter() - began
        resolution = cfg.resolution or (
            DEFAULT_RESOLUTION[cfg.preset]
            if not cfg.model
            else first_import(("synthgen.models.loading", "LoadedModel"), ("synthgen.generate", "LoadedModel"))(
                pipeline, "", "", model_path, {}
            ).default_resolution
        )
        params = {
            name: sum(p.numel() for p in getattr(pipeline, name).parameters())
            for name in ("unet", "vae", "text_encoder")
            if getattr(pipeline, name, None) is not None
        }
        data = recipe_dict(cfg, model_path, device, resolution, work / "build-out")
        recipe = parse_recipe(data, "bench recipe")
        result: dict[str, Any] = {
            "config": {**dataclasses.asdict(cfg), "resolution": resolution, "dtype": dtype_name},
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "threads": torch.get_num_threads(),
            "model": str(model_path) if cfg.model else f"untrained {cfg.preset} ({cfg.save_dtype} on disk)",
            "parameters_m": {k: round(v / 1e6, 2) for k, v in params.items()},
            "model_build_s": round(build_seconds, 2),
            "model_load_s": round(load_seconds, 2),
        }
        log(
            f"model {result['model']} at {resolution} px, {dtype_name} on {device} ({result['device_name']}), "
            f"params (M) {result['parameters_m']}, built {build_seconds:.1f}s, loaded {load_seconds:.1f}s"
        )
        runs: dict[str, list[dict[str, Any]]] = {"synthgen": [], "stock": [], "unet": []}
        for repeat in range(cfg.repeats):
            log(f"repeat {repeat + 1}/{cfg.repeats}: synthgen Generator.generate")
            runs["synthgen"].append(time_synthgen(pipeline, model_path, recipe, device))
            log(f"repeat {repeat + 1}/{cfg.repeats}: stock per-class StableDiffusionPipeline loop (PNGs)")
            runs["stock"].append(time_stock(pipeline, cfg, resolution, device, work / f"stock-png-{repeat}"))
            log(f"repeat {repeat + 1}/{cfg.repeats}: UNet alone")
            runs["unet"].append(time_unet(pipeline, cfg, resolution, device))
        paths = {name: _median_of(values) for name, values in runs.items()}
        stock = paths["stock"]
        paths["stock_no_png"] = {
            "seconds": stock["seconds"] - stock["png_seconds"],
            "images": stock["images"],
            "images_per_s": stock["images"] / (stock["seconds"] - stock["png_seconds"]),
        }
        if cfg.build:
            log("synthgen build (whole process, audit off)")
            try:
                built = run_build(data, work, device)
                built["images_per_s"] = built["images"] / built["seconds"]
                paths["build"] = built
            except Exception as error:  # noqa: BLE001 - the other figures still count
                paths["build"] = {"error": f"{type(error).__name__}: {error}"[:2000]}
        result["paths"] = paths

        unet = paths["unet"]
        ratios = {
            "synthgen_over_stock_images_per_s": paths["synthgen"]["images_per_s"] / stock["images_per_s"],
            "synthgen_wall_over_unet": paths["synthgen"]["seconds"] / unet["seconds"],
            "stock_wall_over_unet": stock["seconds"] / unet["seconds"],
        }
        if "seconds" in paths.get("build", {}):
            ratios["build_over_stock_images_per_s"] = paths["build"]["images_per_s"] / stock["images_per_s"]
            ratios["build_wall_over_unet"] = paths["build"]["seconds"] / unet["seconds"]
        result["ratios"] = ratios

        cfg_factor = 2 if cfg.guidance > 1 else 1
        flops_call = unet_flops(pipeline, cfg_factor * cfg.batch, resolution, device)
        per_image_call = flops_call / (cfg_factor * cfg.batch)
        total = per_image_call * unet["image_calls"]
        compute = {
            "unet_gflop_per_call": flops_call / 1e9,
            "unet_call_batch": cfg_factor * cfg.batch,
            "unet_tflops_achieved": total / unet["seconds"] / 1e12,
            "unet_tflops_within_synthgen_wall": total / paths["synthgen"]["seconds"] / 1e12,
        }
        if device.type == "cuda" and cfg.matmul_peak:
            peak = matmul_peak_tflops(device)
            compute["bf16_matmul_peak_tflops"] = peak
            compute["unet_share_of_bf16_peak"] = compute["unet_tflops_achieved"] / peak
            compute["synthgen_share_of_bf16_peak"] = compute["unet_tflops_within_synthgen_wall"] / peak
        result["compute"] = compute
        del pipeline
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def format_report(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"{result['model']}: {cfg['images']} images at {cfg['resolution']} px, {cfg['steps']} DDIM steps, "
        f"guidance {cfg['guidance']}, batch {cfg['batch']}, {cfg['dtype']} on {result['device_name']}",
        f"{'path':<44}{'seconds':>9}{'images/s':>10}{'vs stock':>10}{'peak GiB':>10}{'GPU util':>10}",
    ]
    stock = result["paths"]["stock"]["images_per_s"]
    names = {
        "synthgen": "synthgen Generator.generate",
        "build": "synthgen build (whole process, audit off)",
        "stock": "stock per-class diffusers loop + PNGs",
        "stock_no_png": "  same, without the PNG saving",
        "unet": "UNet alone (same jobs, CFG batch)",
    }
    for key, label in names.items():
        row = result["paths"].get(key)
        if row is None:
            continue
        if "error" in row:
            lines.append(f"{label:<44}  failed: {row['error'][:300]}")
            continue
        peak = f"{row['peak_gib']:.2f}" if row.get("peak_gib") is not None else "-"
        util = f"{row['gpu_util']:.0f}%" if row.get("gpu_util") is not None else "-"
        lines.append(
            f"{label:<44}{row['seconds']:>9.2f}{row['images_per_s']:>10.2f}"
            f"{row['images_per_s'] / stock:>9.2f}x{peak:>10}{util:>10}"
        )
    r = result["ratios"]
    lines.append(
        f"synthgen / stock images/s = {r['synthgen_over_stock_images_per_s']:.2f}x; "
        f"synthgen wall / pure UNet = {r['synthgen_wall_over_unet']:.2f}x; "
        f"stock wall / pure UNet = {r['stock_wall_over_unet']:.2f}x"
    )
    if "build_over_stock_images_per_s" in r:
        lines.append(
            f"build / stock images/s = {r['build_over_stock_images_per_s']:.2f}x; "
            f"build wall / pure UNet = {r['build_wall_over_unet']:.2f}x"
        )
    c = result["compute"]
    text = (
        f"UNet: {c['unet_gflop_per_call']:.1f} GFLOP per call (batch {c['unet_call_batch']}), "
        f"{c['unet_tflops_achieved']:.2f} TFLOP/s alone, {c['unet_tflops_within_synthgen_wall']:.2f} within synthgen"
    )
    if "bf16_matmul_peak_tflops" in c:
        text += (
            f"; bf16 matmul peak {c['bf16_matmul_peak_tflops']:.0f} TFLOP/s: UNet alone "
            f"{100 * c['unet_share_of_bf16_peak']:.1f}% of it, synthgen {100 * c['synthgen_share_of_bf16_peak']:.1f}%"
        )
    lines.append(text)
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base", "sd15"])
    parser.add_argument("--resolution", type=int, default=None, help="default: the preset's or the model's")
    parser.add_argument("--model", default=None, help="an existing diffusers pipeline folder (no model is built)")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on CUDA, else fp32")
    parser.add_argument("--build", action="store_true", help="also time the whole `synthgen build` process")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each path; the median is reported")
    parser.add_argument("--save-dtype", choices=["fp32", "bf16"], default="fp32", help="weights of a built model")
    parser.add_argument("--work-dir", default=None, help="keep the model, PNGs and build output here")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    cfg = BenchConfig(
        device=args.device,
        preset=args.preset,
        resolution=args.resolution,
        model=args.model,
        images=args.images,
        steps=args.steps,
        guidance=args.guidance,
        batch=args.batch,
        dtype=args.dtype,
        build=args.build,
        repeats=args.repeats,
        save_dtype=args.save_dtype,
        work_dir=args.work_dir,
    )
    return cfg, args.json


def main(argv: list[str] | None = None) -> None:
    cfg, json_path = parse_args(argv)
    result = run_benchmark(cfg, log=lambda message: print(message, file=sys.stderr, flush=True))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2, default=str))
    print(format_report(result))


if __name__ == "__main__":
    main()
