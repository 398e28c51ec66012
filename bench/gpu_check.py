"""Every GPU check of issue 10 in one run (one device call): training, generation, retrieval, memory, device.

    python bench/gpu_check.py [--out DIR] [--budget-s 330]     # on the GPU machine (see bench/gpu_check.md)
    python bench/gpu_check.py --smoke                          # everything tiny, on CPU: proves the script runs

Checks, in order (each one wrapped: a failure is recorded and the next one runs; a check that would not fit
in what is left of `--budget-s` is skipped and recorded so):

- device: name, torch / CUDA versions, memory, multiprocessors, bf16 matmul TFLOP/s (8192^3, random data);
- train: MSDM `base` at 256 px, bf16 autocast, with synthgen's builders and training pieces (the UNet phase's
  own draw and loss, `training.loop._optimizer_step`: AdamW, clipping; EMA update): steps/s, images/s,
  TFLOP/s (FlopCounterMode on one step) and peak memory at each batch size; the VAE's encode (as
  `encode_latents`, fp32, and under bf16 autocast) and a VAE training step; one fp32 UNet step for contrast;
- generate: bench_generation on MSDM `base` at 256 px in bf16: synthgen Generator, the whole `synthgen build`,
  a stock per-class diffusers loop, the UNet alone; images/s, ratios, share of the bf16 peak, peak memory;
- faiss: exact and IVF search of 100k x 512 float32 on the CPU (faiss), on the GPU (faiss-gpu where it has
  GPU support, else why not) and, for comparison, an exact search in torch on the GPU;
- generate_sd15: the same generation benchmark for an SD-1.5-sized pipeline at 512 px in bf16.

Writes `gpu_check.json` (every figure, errors with their traceback tail) to `--out` (default `$OUT`) after
each check, and prints a short table last. torch (and faiss) use synthgen's CPU thread count
(`runtime.use_cpu_threads`: SYNTHGEN_THREADS, OMP_NUM_THREADS or the affinity mask).

Beside this script: `gpu_context.py` (sizes, the run's context, the per-check wrapper), `gpu_train_check.py`
(train), `gpu_search_check.py` (faiss), `bench_generation.py` with `gen_model.py` and `gen_paths.py`
(generate, generate_sd15), `gpu_timing.py` (sync, peak memory, utilisation, the bf16 matmul peak).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _path in (str(REPO), str(HERE)):  # run as a script from anywhere: synthgen from this checkout, the siblings
    if _path not in sys.path:
        sys.path.insert(0, _path)

import bench_generation as bg  # noqa: E402 - after the path set-up above
from gpu_context import SMOKE, Check, Context, Sizes, log, run_check  # noqa: E402
from gpu_search_check import check_faiss  # noqa: E402
from gpu_timing import matmul_peak_tflops  # noqa: E402
from gpu_train_check import check_train  # noqa: E402

PACKAGES = ("diffusers", "transformers", "tokenizers", "pydantic", "webdataset", "faiss-cpu", "faiss-gpu",
            "numpy", "pyarrow", "typer", "huggingface-hub", "safetensors", "typing-extensions")  # fmt: skip


# --------------------------------------------------------------------------------------------- device


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def check_device(ctx: Context) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "packages": package_versions(),
    }
    if ctx.device.type != "cuda":
        info["name"] = "cpu"
        info["headline"] = f"CPU ({os.cpu_count()} cores, {ctx.threads} threads), torch {torch.__version__}"
        return info
    props = torch.cuda.get_device_properties(ctx.device)
    info.update(
        name=props.name,
        capability=f"{props.major}.{props.minor}",
        multiprocessors=props.multi_processor_count,
        memory_gib=round(props.total_memory / 2**30, 1),
        bf16_supported=torch.cuda.is_bf16_supported(),
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        cudnn=torch.backends.cudnn.version(),
        sdpa_flash=torch.backends.cuda.flash_sdp_enabled(),
    )
    ctx.peak_tflops = matmul_peak_tflops(ctx.device, ctx.sizes.matmul_n)
    info["bf16_matmul_tflops"] = round(ctx.peak_tflops, 1)
    info["headline"] = f"{props.name}, torch {torch.__version__}, bf16 matmul {ctx.peak_tflops:.0f} TFLOP/s"
    return info


# ------------------------------------------------------------------------------------------- generate


def _generation_headline(result: dict[str, Any]) -> str:
    paths, ratios, compute = result["paths"], result["ratios"], result["compute"]
    headline = (
        f"synthgen {paths['synthgen']['images_per_s']:.1f} img/s, stock {paths['stock']['images_per_s']:.1f}, "
        f"x{ratios['synthgen_over_stock_images_per_s']:.2f}; wall/UNet {ratios['synthgen_wall_over_unet']:.2f}"
    )
    if "images_per_s" in paths.get("build", {}):
        headline += f"; build {paths['build']['images_per_s']:.1f} img/s"
    elif "error" in paths.get("build", {}):
        headline += "; build FAILED"
    if "unet_share_of_bf16_peak" in compute:
        headline += f"; UNet {100 * compute['unet_share_of_bf16_peak']:.0f}% of peak"
    return headline


def generation_check(
    preset: str, resolution: int, images: int, batch: int, build: bool, repeats: int, save_dtype: str
) -> Check:
    """A check running bench_generation at these sizes; the share of peak uses the device check's bf16 peak."""

    def check(ctx: Context) -> dict[str, Any]:
        cfg = bg.BenchConfig(
            device=ctx.device.type,
            preset=preset,
            resolution=resolution,
            images=images,
            steps=ctx.sizes.gen_steps,
            guidance=3.5,
            batch=batch,
            dtype="bf16" if ctx.device.type == "cuda" or ctx.smoke else "fp32",
            build=build,
            repeats=repeats,
            save_dtype=save_dtype,
            matmul_peak=False,
        )
        result = bg.run_benchmark(cfg, log=log)
        if ctx.peak_tflops:
            bg.add_peak_share(result["compute"], ctx.peak_tflops)
        result["report"] = bg.format_report(result)
        print(result["report"], flush=True)
        result["headline"] = _generation_headline(result)
        return result

    return check


# ------------------------------------------------------------------------------------------------ main


def print_table(ctx: Context) -> None:
    print()
    print(f"{'check':<16}{'status':<9}{'seconds':>8}{'peak GiB':>10}  headline")
    for name, record in ctx.report["checks"].items():
        peak = f"{record['peak_gib']:.1f}" if record.get("peak_gib") is not None else "-"
        seconds = f"{record['seconds']:.0f}" if "seconds" in record else "-"
        text = record.get("headline") or record.get("error") or record.get("reason") or ""
        print(f"{name:<16}{record['status']:<9}{seconds:>8}{peak:>10}  {text[:200]}")
    where = ctx.out / "gpu_check.json" if ctx.out else "(no --out)"
    print(f"total {time.perf_counter() - ctx.started:.0f}s; json: {where}")


def checks(s: Sizes) -> list[tuple[str, float, Check]]:
    """(name, estimated seconds on the GPU, check), in the order they run."""
    base = generation_check(s.preset, s.resolution, s.gen_images, s.gen_batch, s.gen_build, s.gen_repeats, "fp32")
    sd15 = generation_check(s.sd15_preset, s.sd15_resolution, s.sd15_images, s.sd15_batch, False, 1, "bf16")
    return [
        ("device", 5, check_device),
        ("train", 40, check_train),
        ("generate", 90, base),
        ("faiss", 25, check_faiss),
        ("generate_sd15", 60, sd15),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="everything tiny, on the CPU")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json (default: $OUT)")
    parser.add_argument("--budget-s", type=float, default=None, help="skip checks that would not fit (default 330)")
    parser.add_argument("--only", default=None, help="comma-separated check names to run (default: all)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sizes = SMOKE if args.smoke else Sizes()
    budget = args.budget_s if args.budget_s is not None else (1800 if args.smoke else 330)
    ctx = Context(sizes, budget, Path(args.out) if args.out else None, args.smoke)
    mode = "smoke" if args.smoke else "full"
    log(f"gpu_check on {ctx.device} ({mode}), {ctx.threads} CPU threads, budget {budget:.0f}s")
    wanted = set(args.only.split(",")) if args.only else None
    for name, estimate, check in checks(sizes):
        if wanted is None or name in wanted or name == "device":
            run_check(ctx, name, estimate, check)
    print_table(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
