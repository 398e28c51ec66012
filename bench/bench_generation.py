"""Generation speed, side by side in one run on one model: synthgen vs a stock diffusers loop vs the UNet alone.

    python bench/bench_generation.py --preset tiny --resolution 64 --images 32          # quick, CPU
    python bench/bench_generation.py --device cuda --preset base --resolution 256 --dtype bf16 --batch 32 --build
    python bench/bench_generation.py --model path/to/pipeline --images 64 --batch 8      # an existing pipeline

Paths timed on the same model, same jobs (classes x prompts), steps, guidance and resolution; the stock loop and
the UNet alone run at `--batch` (16), synthgen at its own `sampling.batch_size` (`--synthgen-batch`, default
`auto`: synthgen's choice, the point being that its denoiser must beat the stock configuration's):

- synthgen: `synthgen.generate.Generator.generate` on the plan's jobs (what `synthgen build` runs per shard;
  PIL images, PNG bytes and provenance, no files), and with `--build` the whole `synthgen build` CLI in a fresh
  process (import, model load and hash, generation, Parquet + WebDataset shards with PNGs, manifest, card; audit
  off, every sampling setting at its default: `streams: auto` included); with `--ablate` also synthgen with one
  lever off each (one denoising stream, stock batch, no finishing thread, no prompt cache);
- stock: a per-class loop of `StableDiffusionPipeline` calls (DDIM) saving each image as a PNG, like a user
  script (also reported without the PNG saving), and with `--build` on a CPU the same loop as a whole script in
  a fresh process (`stock_script.py`: interpreter start, imports, loading, loop), the process-against-process
  comparison the build's figure needs (the issue's "whole processes");
- UNet alone: the UNet forward calls of the same jobs (steps x batches, batch doubled for CFG), nothing else.

Without `--model` an untrained MSDM of `--preset` is built in-process with synthgen's builders and saved with
save_pretrained (speed does not depend on the weights); `--preset sd15` builds an SD-1.5-sized pipeline
(SD-1.5 UNet and VAE configs, a 12-layer 768-wide BERT in place of CLIP's text model).

Prints a table and the ratios synthgen / stock (images/s) and synthgen wall / pure UNet time. On CUDA also
peak memory per path, GPU utilisation, and in bf16 the UNet's achieved TFLOP/s (FLOPs counted with
FlopCounterMode on one call) and its share of a bf16 matmul peak measured in the same run.
`run_benchmark(BenchConfig(...))` returns the same numbers as a dict (bench/gpu_check.py calls it).

Beside this script: `gen_model.py` (BenchConfig, building and loading the model, the recipe), `gen_paths.py`
(the timed paths), `gpu_timing.py` (sync, peak memory, utilisation sampler, bf16 matmul peak).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _path in (str(REPO), str(HERE)):  # run as a script from anywhere: synthgen from this checkout, the siblings
    if _path not in sys.path:
        sys.path.insert(0, _path)

from gen_model import (  # noqa: E402 - after the path set-up above
    CLASSES,
    DEFAULT_RESOLUTION,
    BenchConfig,
    build_model,
    load_pipeline,
    model_resolution,
    recipe_dict,
    torch_dtype,
)
from gen_paths import run_build, run_stock_process, time_stock, time_synthgen, time_unet, unet_flops  # noqa: E402
from gpu_timing import empty_cache, matmul_peak_tflops  # noqa: E402

__all__ = ["CLASSES", "BenchConfig", "format_report", "run_benchmark"]

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------- the run


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median wall time (its other figures stay consistent with it), plus every time."""
    ordered = sorted(runs, key=lambda r: r["seconds"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["all_seconds"] = [round(r["seconds"], 4) for r in runs]
    chosen["images_per_s"] = chosen["images"] / chosen["seconds"]
    return chosen


def _model_path(cfg: BenchConfig, device, work: Path, log: Log) -> Path:
    """`--model`, or an untrained model built into `work` (on the device where that works, else the CPU)."""
    if cfg.model:
        return Path(cfg.model).resolve()
    resolution = cfg.resolution or DEFAULT_RESOLUTION[cfg.preset]
    try:  # initialising on the GPU is fast; the CPU always works
        return build_model(cfg.preset, resolution, work / "model", device.type, cfg.save_dtype)
    except Exception as error:  # noqa: BLE001 - retry where it cannot fail for the device's sake
        if device.type == "cpu":
            raise
        log(f"building on {device.type} failed ({type(error).__name__}: {error}); building on the CPU")
        return build_model(cfg.preset, resolution, work / "model", "cpu", cfg.save_dtype)


def _prepare(cfg: BenchConfig, device, dtype_name: str, threads: int, work: Path, log: Log):
    """Build or find the model and load it: (model path, pipeline, the result's header with the resolution)."""
    import torch

    began = time.perf_counter()
    model_path = _model_path(cfg, device, work, log)
    build_seconds = time.perf_counter() - began
    began = time.perf_counter()
    pipeline = load_pipeline(model_path, device, torch_dtype(dtype_name))
    load_seconds = time.perf_counter() - began
    resolution = cfg.resolution or (
        model_resolution(pipeline, model_path) if cfg.model else DEFAULT_RESOLUTION[cfg.preset]
    )
    params = {
        name: sum(p.numel() for p in getattr(pipeline, name).parameters())
        for name in ("unet", "vae", "text_encoder")
        if getattr(pipeline, name, None) is not None
    }
    result: dict[str, Any] = {
        "config": {**dataclasses.asdict(cfg), "resolution": resolution, "dtype": dtype_name},
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": threads,
        "model": str(model_path) if cfg.model else f"untrained {cfg.preset} ({cfg.save_dtype} on disk)",
        "parameters_m": {k: round(v / 1e6, 2) for k, v in params.items()},
        "model_build_s": round(build_seconds, 2),
        "model_load_s": round(load_seconds, 2),
    }
    log(
        f"model {result['model']} at {resolution} px, {dtype_name} on {device} ({result['device_name']}), "
        f"{threads} CPU threads, params (M) {result['parameters_m']}, built {build_seconds:.1f}s, "
        f"loaded {load_seconds:.1f}s"
    )
    return model_path, pipeline, result


def _time_paths(cfg: BenchConfig, pipeline, model_path: Path, recipe, resolution: int, device, work: Path, log: Log):
    """Every in-process path `cfg.repeats` times, interleaved; the median run of each, plus stock without PNGs.

    Each repeat starts one path later than the one before (a rotation), so on a machine whose load drifts no
    path always runs first or last.
    """
    timers: dict[str, Callable[[int], dict[str, Any]]] = {
        "synthgen": lambda repeat: time_synthgen(pipeline, model_path, recipe, device),
    }
    for name, (variant, options) in _ablations(cfg, recipe).items():
        timers[name] = lambda repeat, v=variant, o=options: time_synthgen(pipeline, model_path, v, device, **o)
    timers["stock"] = lambda repeat: time_stock(pipeline, cfg, resolution, device, work / f"stock-png-{repeat}")
    timers["unet"] = lambda repeat: time_unet(pipeline, cfg, resolution, device)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in timers}
    names = list(timers)
    for repeat in range(cfg.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            log(f"repeat {repeat + 1}/{cfg.repeats}: {PATH_LABELS[name].strip()}")
            runs[name].append(timers[name](repeat))
    paths = {name: _median_of(values) for name, values in runs.items()}
    stock = paths["stock"]
    without_png = stock["seconds"] - stock["png_seconds"]
    paths["stock_no_png"] = {
        "seconds": without_png,
        "images": stock["images"],
        "images_per_s": stock["images"] / without_png,
    }
    return paths


def _ablations(cfg: BenchConfig, recipe) -> dict[str, tuple[Any, dict[str, Any]]]:
    """With `--ablate`: synthgen with one lever off each (one denoising stream of every thread; the stock batch;
    no finishing thread, with one stream; no prompt cache)."""
    if not cfg.ablate:
        return {}

    def sampling(**update: Any):
        return recipe.model_copy(update={"sampling": recipe.sampling.model_copy(update=update)})

    return {
        "synthgen_one_stream": (sampling(streams=1), {}),
        "synthgen_stock_batch": (sampling(batch_size=cfg.batch), {}),
        "synthgen_no_overlap": (sampling(streams=1), {"overlap": False}),
        "synthgen_no_prompt_cache": (recipe, {"prompt_cache": False}),
    }


def _time_build(recipe_data: dict[str, Any], work: Path, log: Log) -> dict[str, Any]:
    log("synthgen build (whole process, audit off)")
    try:
        built = run_build(recipe_data, work)
    except Exception as error:  # noqa: BLE001 - the other figures still count
        return {"error": f"{type(error).__name__}: {error}"[:2000]}
    built["images_per_s"] = built["images"] / built["seconds"]
    return built


def _ratios(paths: dict[str, dict[str, Any]]) -> dict[str, float]:
    synthgen, stock, unet = paths["synthgen"], paths["stock"], paths["unet"]
    ratios = {
        "synthgen_over_stock_images_per_s": synthgen["images_per_s"] / stock["images_per_s"],
        "synthgen_wall_over_unet": synthgen["seconds"] / unet["seconds"],
        "stock_wall_over_unet": stock["seconds"] / unet["seconds"],
    }
    if "seconds" in paths.get("build", {}):
        ratios["build_over_stock_images_per_s"] = paths["build"]["images_per_s"] / stock["images_per_s"]
        ratios["build_wall_over_unet"] = paths["build"]["seconds"] / unet["seconds"]
        if "seconds" in paths.get("stock_process", {}):  # whole process against whole process
            ratios["build_over_stock_process_images_per_s"] = (
                paths["build"]["images_per_s"] / paths["stock_process"]["images_per_s"]
            )
    return ratios


def _compute(cfg: BenchConfig, pipeline, paths: dict[str, dict[str, Any]], resolution: int, device) -> dict[str, Any]:
    """The UNet's FLOPs (one counted call) over the timed seconds; on CUDA also the share of the bf16 peak."""
    unet = paths["unet"]
    cfg_factor = 2 if cfg.guidance > 1 else 1
    flops_call = unet_flops(pipeline, cfg_factor * cfg.batch, resolution, device)
    total = flops_call / (cfg_factor * cfg.batch) * unet["image_calls"]
    compute = {
        "unet_gflop_per_call": flops_call / 1e9,
        "unet_call_batch": cfg_factor * cfg.batch,
        "unet_tflops_achieved": total / unet["seconds"] / 1e12,
        "unet_tflops_within_synthgen_wall": total / paths["synthgen"]["seconds"] / 1e12,
    }
    if device.type == "cuda" and cfg.matmul_peak:
        add_peak_share(compute, matmul_peak_tflops(device))
    return compute


def add_peak_share(compute: dict[str, Any], peak_tflops: float) -> None:
    """Put a measured bf16 matmul peak and the UNet's shares of it into `compute`."""
    compute["bf16_matmul_peak_tflops"] = peak_tflops
    compute["unet_share_of_bf16_peak"] = compute["unet_tflops_achieved"] / peak_tflops
    compute["synthgen_share_of_bf16_peak"] = compute["unet_tflops_within_synthgen_wall"] / peak_tflops


def run_benchmark(cfg: BenchConfig, log: Log = print) -> dict[str, Any]:
    """Build or load the model, time every path, return the figures (see the module docstring).

    torch gets synthgen's CPU thread count (`runtime.use_cpu_threads`: SYNTHGEN_THREADS, OMP_NUM_THREADS or the
    affinity mask) before anything is timed, the count the Generator and `synthgen build` use too.
    """
    from synthgen.recipe import parse_recipe
    from synthgen.runtime import pick_device, use_cpu_threads

    device = pick_device(cfg.device)
    threads = use_cpu_threads()
    dtype_name = cfg.dtype or ("bf16" if device.type == "cuda" else "fp32")
    warnings.filterwarnings("ignore", message=".*invalid value encountered in cast.*")  # untrained VAE outputs
    with contextlib.ExitStack() as stack:
        work = Path(cfg.work_dir) if cfg.work_dir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        work.mkdir(parents=True, exist_ok=True)
        model_path, pipeline, result = _prepare(cfg, device, dtype_name, threads, work, log)
        resolution = result["config"]["resolution"]
        data = recipe_dict(cfg, model_path, device, resolution, work / "build-out")
        recipe = parse_recipe(data, "bench recipe")
        paths = _time_paths(cfg, pipeline, model_path, recipe, resolution, device, work, log)
        if cfg.build:
            paths["build"] = _time_build(data, work, log)
            if device.type == "cpu" and not cfg.model:
                log("stock loop as a whole user script (fresh process)")
                try:
                    paths["stock_process"] = run_stock_process(model_path, cfg, resolution, work)
                except Exception as error:  # noqa: BLE001 - the other figures still count
                    paths["stock_process"] = {"error": f"{type(error).__name__}: {error}"[:2000]}
        result["paths"] = paths
        result["ratios"] = _ratios(paths)
        result["compute"] = _compute(cfg, pipeline, paths, resolution, device)
        del pipeline
        empty_cache(device)
    return result


# ------------------------------------------------------------------------------------------- the report

PATH_LABELS = {
    "synthgen": "synthgen Generator.generate (+ PNGs)",
    "synthgen_one_stream": "  same, one denoising stream (streams: 1)",
    "synthgen_stock_batch": "  same, at the stock batch size",
    "synthgen_no_overlap": "  same, one stream, no finishing thread",
    "synthgen_no_prompt_cache": "  same, no prompt cache",
    "build": "synthgen build (whole process, audit off)",
    "stock": "stock per-class diffusers loop + PNGs",
    "stock_no_png": "  same, without the PNG saving",
    "stock_process": "  same, as a whole script (fresh process)",
    "unet": "UNet alone (same jobs, CFG batch)",
}


def _path_rows(paths: dict[str, dict[str, Any]]) -> list[str]:
    stock = paths["stock"]["images_per_s"]
    lines = []
    for key, label in PATH_LABELS.items():
        row = paths.get(key)
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
    return lines


def _summary_lines(ratios: dict[str, float], c: dict[str, Any]) -> list[str]:
    lines = [
        f"synthgen / stock images/s = {ratios['synthgen_over_stock_images_per_s']:.2f}x; "
        f"synthgen wall / pure UNet = {ratios['synthgen_wall_over_unet']:.2f}x; "
        f"stock wall / pure UNet = {ratios['stock_wall_over_unet']:.2f}x"
    ]
    if "build_over_stock_images_per_s" in ratios:
        lines.append(
            f"build / stock images/s = {ratios['build_over_stock_images_per_s']:.2f}x; "
            f"build wall / pure UNet = {ratios['build_wall_over_unet']:.2f}x"
        )
    if "build_over_stock_process_images_per_s" in ratios:
        lines.append(
            "build / stock as a whole script, process against process: "
            f"{ratios['build_over_stock_process_images_per_s']:.2f}x images/s"
        )
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
    return lines


def _synthgen_batch(result: dict[str, Any]) -> str:
    run = result["paths"]["synthgen"]
    return (
        f"{run['batch']} ({result['config']['synthgen_batch']}), {run['streams']} streams of {run['threads']} "
        f"threads, overlap {run['overlap']}"
    )


def format_report(result: dict[str, Any]) -> str:
    cfg = result["config"]
    header = [
        f"{result['model']}: {cfg['images']} images at {cfg['resolution']} px, {cfg['steps']} DDIM steps, "
        f"guidance {cfg['guidance']}, batch {cfg['batch']} (synthgen: {_synthgen_batch(result)}), "
        f"{cfg['dtype']} on {result['device_name']}, {result['threads']} CPU threads",
        f"{'path':<44}{'seconds':>9}{'images/s':>10}{'vs stock':>10}{'peak GiB':>10}{'GPU util':>10}",
    ]
    lines = header + _path_rows(result["paths"]) + _summary_lines(result["ratios"], result["compute"])
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- the script


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, str | None]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "base", "sd15"])
    parser.add_argument("--resolution", type=int, default=None, help="default: the preset's or the model's")
    parser.add_argument("--model", default=None, help="an existing diffusers pipeline folder (no model is built)")
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.5)
    parser.add_argument("--batch", type=int, default=16, help="the stock loop's and the UNet-alone batch")
    parser.add_argument("--synthgen-batch", default="auto", help="synthgen's sampling.batch_size (default: auto)")
    parser.add_argument("--ablate", action="store_true", help="also time synthgen with each lever off")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on CUDA, else fp32")
    parser.add_argument("--build", action="store_true", help="also time the whole `synthgen build` process")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each path; the median is reported")
    parser.add_argument("--save-dtype", choices=["fp32", "bf16"], default="fp32", help="weights of a built model")
    parser.add_argument("--work-dir", default=None, help="keep the model, PNGs and build output here")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    json_path = args.json
    del args.json
    return BenchConfig(**vars(args)), json_path


def main(argv: list[str] | None = None) -> None:
    cfg, json_path = parse_args(argv)
    result = run_benchmark(cfg, log=lambda message: print(message, file=sys.stderr, flush=True))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2, default=str))
    print(format_report(result))


if __name__ == "__main__":
    main()
