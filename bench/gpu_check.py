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
each check, and prints a short table last.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import importlib
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for path in (str(REPO), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)

import bench_generation as bg  # noqa: E402 - after the path set-up above

PROMPTS = list(bg.CLASSES.values())


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
    def __init__(self, sizes: Sizes, budget_s: float, out: Path | None, smoke: bool) -> None:
        import torch

        self.sizes, self.out, self.smoke = sizes, out, smoke
        self.started = time.perf_counter()
        self.deadline = self.started + budget_s
        self.device = torch.device(sizes.device if sizes.device != "cuda" or torch.cuda.is_available() else "cpu")
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


def run_check(ctx: Context, name: str, estimate_s: float, check: Callable[[Context], dict[str, Any]]) -> None:
    """Run one check with its own peak-memory window; record its result, its error, or that it was skipped."""
    import torch

    record: dict[str, Any]
    if ctx.left() < estimate_s:
        record = {"status": "skipped", "reason": f"{ctx.left():.0f}s left of the budget, needs ~{estimate_s:.0f}s"}
        log(f"{name}: skipped ({record['reason']})")
    else:
        log(f"{name}: start ({ctx.left():.0f}s of budget left)")
        cuda = ctx.device.type == "cuda"
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
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
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
        log(f"{name}: {record['status']} in {record['seconds']}s")
    ctx.report["checks"][name] = record
    ctx.save()


# --------------------------------------------------------------------------------------------- device


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
    if ctx.device.type == "cuda":
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
        ctx.peak_tflops = bg.matmul_peak_tflops(ctx.device, ctx.sizes.matmul_n)
        info["bf16_matmul_tflops"] = round(ctx.peak_tflops, 1)
        info["headline"] = f"{props.name}, torch {torch.__version__}, bf16 matmul {ctx.peak_tflops:.0f} TFLOP/s"
    else:
        info["name"] = "cpu"
        info["headline"] = f"CPU ({os.cpu_count()} cores), torch {torch.__version__}"
    return info


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in ("diffusers", "transformers", "tokenizers", "pydantic", "webdataset", "faiss-cpu", "faiss-gpu",
                 "numpy", "pyarrow", "typer", "huggingface-hub", "safetensors", "typing-extensions"):  # fmt: skip
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# ---------------------------------------------------------------------------------------------- train


def training_pieces() -> tuple[dict[str, Any], str]:
    """synthgen's own training pieces where they import (names before and after the reorganisation)."""
    pieces: dict[str, Any] = {}
    first = bg.first_import
    try:
        pieces["TextEncoder"] = first(("synthgen.models.text_encoders", "TextEncoder"))
        pieces["Denoiser"] = first(
            ("synthgen.training.msdm_phases", "Denoiser"), ("synthgen.training.msdm", "Denoiser")
        )
        pieces["Latents"] = first(("synthgen.training.msdm_phases", "Latents"), ("synthgen.training.msdm", "Latents"))
        pieces["unet_phase"] = first(
            ("synthgen.training.msdm_phases", "unet_phase"), ("synthgen.training.msdm", "unet_phase")
        )
        pieces["Autoencoding"] = first(
            ("synthgen.training.msdm_phases", "Autoencoding"), ("synthgen.training.msdm", "Autoencoding")
        )
        pieces["LoopSettings"] = first(("synthgen.training.loop", "LoopSettings"))
        pieces["optimizer_step"] = first(("synthgen.training.loop", "_optimizer_step"))
        pieces["EMA"] = first(("synthgen.training.ema", "EMA"))
        return pieces, "synthgen training pieces (unet_phase draw+loss, loop._optimizer_step, EMA)"
    except ImportError as error:
        return {}, f"local fallback (synthgen pieces did not import: {str(error)[:300]})"


def _median_step(step: Callable[[], Any], device, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    bg.sync(device)
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        step()
        bg.sync(device)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def check_train(ctx: Context) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    msdm = importlib.import_module("synthgen.models.msdm")
    s, device = ctx.sizes, ctx.device
    preset = msdm.PRESETS[s.preset]
    pieces, used = training_pieces()
    result: dict[str, Any] = {"preset": s.preset, "resolution": s.resolution, "pieces": used, "autocast": "bf16"}
    torch.manual_seed(0)
    tokenizer = msdm.train_tokenizer(PROMPTS, preset)
    with torch.device(device.type):
        vae = msdm.build_vae(preset, s.resolution)
        text_model = msdm.build_text_encoder(preset, len(tokenizer))
        unet = msdm.build_unet(preset, s.resolution, vae=vae, cross_attention_dim=preset.text_hidden)
    vae, text_model, unet = vae.to(device), text_model.to(device), unet.to(device)
    result["parameters_m"] = {
        name: round(sum(p.numel() for p in m.parameters()) / 1e6, 1)
        for name, m in (("vae", vae), ("unet", unet), ("text", text_model))
    }
    channels, down = msdm.vae_geometry(vae)
    side = s.resolution // down

    result.update(_vae_encode(vae, ctx))
    result["vae_train"] = _vae_train(vae, pieces, ctx, channels, side)
    vae.requires_grad_(False).eval()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # The UNet phase: random latents in place of encoded ones (speed does not depend on them). synthgen's own
    # pieces first; if they fail (their API moved), the error is recorded and the local twin runs instead.
    denoiser = phase = None
    if pieces:
        try:
            denoiser, phase = _real_unet_phase(pieces, unet, text_model, tokenizer, s, channels, side, device)
            probe = [p for p in denoiser.parameters() if p.requires_grad]
            _one_step(pieces, phase, denoiser, torch.optim.AdamW(probe, lr=1e-4), probe, 2, torch.bfloat16, device)
        except Exception as error:  # noqa: BLE001 - fall back, say so
            result["pieces_error"] = f"{type(error).__name__}: {error}"[:1000]
            result["pieces"] = "local fallback (synthgen's pieces failed: see pieces_error)"
            pieces = {}
            unet.zero_grad(set_to_none=True)
            text_model.zero_grad(set_to_none=True)
    if not pieces:
        denoiser, phase = _fallback_unet_phase(unet, text_model, tokenizer, s, channels, side, device)
    params = [p for p in denoiser.parameters() if p.requires_grad]
    result["trainable_m"] = round(sum(p.numel() for p in params) / 1e6, 1)
    runs = []
    for batch in s.train_batches:
        run = {"batch": batch}
        try:
            runs.append(run)
            run.update(_unet_steps(ctx, pieces, phase, denoiser, params, batch, torch.bfloat16))
        except torch.OutOfMemoryError as error:
            run["error"] = f"out of memory: {str(error)[:200]}"
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["unet_bf16"] = runs
    try:  # one fp32 figure (no autocast) at the first batch size, for contrast
        fp32 = {"batch": s.train_batches[0]}
        fp32.update(
            _unet_steps(
                ctx, pieces, phase, denoiser, params, s.train_batches[0], None, steps=max(2, s.train_steps // 3)
            )
        )
        result["unet_fp32"] = fp32
    except torch.OutOfMemoryError as error:
        result["unet_fp32"] = {"error": f"out of memory: {str(error)[:200]}"}

    # FLOPs of one bf16 training step (forward + backward) at the first batch size.
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    with FlopCounterMode(display=False) as counter:
        _one_step(pieces, phase, denoiser, optimizer, params, s.train_batches[0], torch.bfloat16, device)
    step_flops = float(counter.get_total_flops())
    result["train_step_gflop_per_image"] = round(step_flops / s.train_batches[0] / 1e9, 2)
    for run in runs:
        if "step_s" in run:
            run["tflops"] = round(step_flops / s.train_batches[0] * run["batch"] / run["step_s"] / 1e12, 2)
            if ctx.peak_tflops:
                run["share_of_bf16_peak"] = round(run["tflops"] / ctx.peak_tflops, 3)
    ok = [r for r in runs if "step_s" in r]
    if ok:
        best = max(ok, key=lambda r: r["images_per_s"])
        share = f" ({100 * best['share_of_bf16_peak']:.0f}% of peak)" if "share_of_bf16_peak" in best else ""
        result["headline"] = (
            f"UNet bf16 b{best['batch']}: {best['steps_per_s']:.2f} steps/s, {best['images_per_s']:.0f} img/s, "
            f"{best.get('tflops', 0):.0f} TFLOP/s{share}; "
            f"VAE encode {result['vae_encode_bf16_autocast_images_per_s']:.0f} img/s (bf16)"
        )
    return result


def _vae_encode(vae: Any, ctx: Context) -> dict[str, Any]:
    """VAE encode as `encode_latents` does it (fp32, no grad, chunks of 32), and under bf16 autocast."""
    import torch

    s, device = ctx.sizes, ctx.device
    vae.eval()
    pixels = torch.rand(32 if not ctx.smoke else 2, 3, s.resolution, s.resolution, device=device) * 2 - 1
    result = {}
    for name, autocast in (("fp32", False), ("bf16_autocast", True)):

        def encode(autocast: bool = autocast) -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                vae.encode(pixels).latent_dist.mean  # noqa: B018 - the work is the point

        seconds = _median_step(encode, device, 1, 3)
        result[f"vae_encode_{name}_images_per_s"] = round(len(pixels) / seconds, 1)
    return result


def _vae_train(vae: Any, pieces: dict[str, Any], ctx: Context, channels: int, side: int) -> dict[str, Any]:
    """A VAE-phase training step (reconstruction MSE + tiny KL), bf16 autocast, AdamW."""
    import torch

    s, device = ctx.sizes, ctx.device
    vae.train()
    autoencoding = pieces["Autoencoding"](vae) if pieces else _Autoencoding(vae)
    optimizer = torch.optim.AdamW(autoencoding.parameters(), lr=1e-4)
    images = torch.rand(s.vae_batch, 3, s.resolution, s.resolution, device=device) * 2 - 1
    eps = torch.randn(s.vae_batch, channels, side, side, device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            reconstruction, kl = autoencoding(images, eps)
            loss = (reconstruction.float() - images).pow(2).flatten(1).mean(1) + 1e-6 * kl
        loss.sum().div(len(images)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    try:
        seconds = _median_step(step, device, 1, s.vae_steps)
    except torch.OutOfMemoryError as error:
        return {"batch": s.vae_batch, "error": f"out of memory: {str(error)[:200]}"}
    finally:
        vae.zero_grad(set_to_none=True)
    return {"batch": s.vae_batch, "step_s": round(seconds, 4), "images_per_s": round(s.vae_batch / seconds, 1)}


def _real_unet_phase(pieces, unet, text_model, tokenizer, s: Sizes, channels: int, side: int, device):
    """synthgen's Denoiser and UNet phase (its draw and loss) over random latents and the bench prompts."""
    import torch

    text = pieces["TextEncoder"](text_model, tokenizer, "built-in BERT", None, True, "captions")
    denoiser = pieces["Denoiser"](unet, text).to(device)
    shape = (s.latent_items, 2, channels, side, side)
    latents = pieces["Latents"](torch.randn(shape), torch.full(shape, 0.1))
    tokens = text.tokenize([PROMPTS[i % len(PROMPTS)] for i in range(s.latent_items)])
    config = SimpleNamespace(
        prompt_dropout=0.1, seed=0, unet_steps=1000, learning_rate=1e-4, ema_decay=0.999, micro_batch_size=lambda: 1
    )
    return denoiser, pieces["unet_phase"](denoiser, (latents, tokens), None, config, device)


def _one_step(pieces, phase, denoiser, optimizer, params, batch, autocast, device) -> None:
    import torch

    generator = torch.Generator().manual_seed(1)
    indices = torch.randint(0, phase.dataset_size, (batch,), generator=generator)
    if pieces:
        settings = pieces["LoopSettings"](
            batch_size=batch, micro_batch_size=batch, checkpoint_every=10**9, seed=0, device=device,
            autocast_dtype=autocast,
        )  # fmt: skip
        pieces["optimizer_step"](phase, settings, denoiser, optimizer, params, None, None, indices, generator)
    else:
        data = phase.draw(indices, generator)
        with torch.autocast(device.type, dtype=autocast) if autocast else contextlib.nullcontext():
            loss = phase.loss(denoiser, data).float().sum() / batch
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def _unet_steps(ctx, pieces, phase, denoiser, params, batch, autocast, steps=None) -> dict[str, Any]:
    import torch

    s, device = ctx.sizes, ctx.device
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    ema = pieces["EMA"](denoiser, 0.999) if pieces else _EMA(denoiser, 0.999)
    denoiser.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        _one_step(pieces, phase, denoiser, optimizer, params, batch, autocast, device)
        ema.update(denoiser)

    seconds = _median_step(step, device, s.train_warmup, steps or s.train_steps)
    run = {"step_s": round(seconds, 4), "steps_per_s": round(1 / seconds, 3), "images_per_s": round(batch / seconds, 1)}
    if device.type == "cuda":
        run["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return run


class _Autoencoding:  # fallback twin of synthgen's Autoencoding
    def __init__(self, vae: Any) -> None:
        self.vae = vae

    def parameters(self):
        return self.vae.parameters()

    def __call__(self, images, eps):
        posterior = self.vae.encode(images).latent_dist
        return self.vae.decode(posterior.mean + posterior.std * eps).sample, posterior.kl()


class _EMA:  # fallback twin of synthgen's EMA
    def __init__(self, module: Any, decay: float) -> None:
        import torch

        self.decay = decay
        with torch.no_grad():
            self.shadow = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    def update(self, module: Any) -> None:
        import torch

        params = dict(module.named_parameters())
        with torch.no_grad():
            for name, shadow in self.shadow.items():
                shadow.lerp_(params[name].detach(), 1 - self.decay)


def _fallback_unet_phase(unet, text_model, tokenizer, s: Sizes, channels: int, side: int, device):
    """The UNet phase's draw and loss, re-stated (used only if synthgen's pieces do not import)."""
    import torch

    msdm = importlib.import_module("synthgen.models.msdm")
    scheduler = msdm.training_scheduler()

    class Denoiser(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet, self.text = unet, text_model

        def forward(self, noisy, t, ids):
            positions = torch.arange(ids.shape[1], device=ids.device).expand(ids.shape[0], -1)
            return self.unet(noisy, t, encoder_hidden_states=self.text(ids, position_ids=positions)[0]).sample

    tokens = tokenizer(
        [PROMPTS[i % len(PROMPTS)] for i in range(s.latent_items)],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    mean = torch.randn(s.latent_items, 2, channels, side, side)

    def draw(indices, generator):
        n = len(indices)
        flip = (torch.rand(n, generator=generator) < 0.5).long()
        x0 = mean[indices, flip] + 0.1 * torch.randn(mean[indices, flip].shape, generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, 1000, (n,), generator=generator)
        noisy = scheduler.add_noise(x0, noise, t)
        return {
            "noisy": noisy.to(device),
            "t": t.to(device),
            "ids": tokens[indices].to(device),
            "noise": noise.to(device),
        }

    def loss(model, batch):
        prediction = model(batch["noisy"], batch["t"], batch["ids"])
        return (prediction.float() - batch["noise"].float()).pow(2).flatten(1).mean(1)

    return Denoiser().to(device), SimpleNamespace(dataset_size=s.latent_items, draw=draw, loss=loss)


# ------------------------------------------------------------------------------------------- generate


def generation_check(preset: str, resolution: int, images: int, batch: int, build: bool, repeats: int, save_dtype: str):
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
        compute = result["compute"]
        if ctx.peak_tflops:
            compute["bf16_matmul_peak_tflops"] = ctx.peak_tflops
            compute["unet_share_of_bf16_peak"] = compute["unet_tflops_achieved"] / ctx.peak_tflops
            compute["synthgen_share_of_bf16_peak"] = compute["unet_tflops_within_synthgen_wall"] / ctx.peak_tflops
        text = bg.format_report(result)
        print(text, flush=True)
        result["report"] = text
        paths, ratios = result["paths"], result["ratios"]
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
        result["headline"] = headline
        return result

    return check


# ---------------------------------------------------------------------------------------------- faiss


def check_faiss(ctx: Context) -> dict[str, Any]:
    import numpy as np
    import torch

    s, device, k = ctx.sizes, ctx.device, 10
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((s.faiss_n, s.faiss_d), dtype=np.float32)
    xq = rng.standard_normal((s.faiss_queries, s.faiss_d), dtype=np.float32)
    result: dict[str, Any] = {"n": s.faiss_n, "d": s.faiss_d, "queries": s.faiss_queries, "k": k}

    def timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, Any]:
        out, times = None, []
        for _ in range(repeats):
            began = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - began)
        return statistics.median(times), out

    exact_ids = None
    try:
        import faiss
    except ImportError as error:
        result["faiss"] = f"not importable: {error}"
        faiss = None
    if faiss is not None:
        result["faiss_version"] = getattr(faiss, "__version__", None)
        result["faiss_threads"] = faiss.omp_get_max_threads()
        flat = faiss.IndexFlatL2(s.faiss_d)
        flat.add(xb)
        flat.search(xq[:10], k)
        seconds, (_, exact_ids) = timed(lambda: flat.search(xq, k))
        result["cpu_exact_s"] = round(seconds, 4)
        result["cpu_exact_qps"] = round(s.faiss_queries / seconds)
        quantizer = faiss.IndexFlatL2(s.faiss_d)
        ivf = faiss.IndexIVFFlat(quantizer, s.faiss_d, s.faiss_nlist)
        began = time.perf_counter()
        ivf.train(xb)
        ivf.add(xb)
        result["cpu_ivf_build_s"] = round(time.perf_counter() - began, 2)
        ivf.nprobe = s.faiss_nprobe
        seconds, (_, ivf_ids) = timed(lambda: ivf.search(xq, k))
        result["cpu_ivf_s"] = round(seconds, 4)
        result["cpu_ivf_qps"] = round(s.faiss_queries / seconds)
        result["ivf_recall_at_1"] = round(float((ivf_ids[:, 0] == exact_ids[:, 0]).mean()), 4)
        result["ivf"] = f"IVFFlat nlist {s.faiss_nlist} nprobe {s.faiss_nprobe}"
        gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
        result["faiss_gpus"] = gpus
        if gpus > 0 and device.type == "cuda":
            resources = faiss.StandardGpuResources()
            gpu_flat = faiss.index_cpu_to_gpu(resources, 0, flat)
            gpu_flat.search(xq[:10], k)
            seconds, _ = timed(lambda: gpu_flat.search(xq, k))
            result["gpu_exact_s"] = round(seconds, 4)
            gpu_ivf = faiss.index_cpu_to_gpu(resources, 0, ivf)
            gpu_ivf.nprobe = s.faiss_nprobe
            gpu_ivf.search(xq[:10], k)
            seconds, _ = timed(lambda: gpu_ivf.search(xq, k))
            result["gpu_ivf_s"] = round(seconds, 4)
        else:
            result["faiss_gpu"] = (
                "not available: this faiss has no GPU support (the faiss-cpu wheel travelled; faiss-gpu wheels "
                "need CUDA 12 cuBLAS/cudart wheels, hundreds of MB, over what a call can carry, and the "
                "machine has CUDA 13 libraries only)"
                if gpus == 0
                else "faiss sees a GPU but the check ran without CUDA"
            )
    # The same exact search in torch on the device (what a GPU could do without faiss-gpu).
    base, queries = torch.from_numpy(xb).to(device), torch.from_numpy(xq).to(device)
    norms = (base * base).sum(1)

    def torch_exact() -> Any:
        ids = []
        for start in range(0, len(queries), 4096):
            q = queries[start : start + 4096]
            distances = norms[None, :] - 2 * q @ base.T  # + |q|^2, constant per row
            ids.append(distances.topk(k, dim=1, largest=False).indices)
        result_ids = torch.cat(ids)
        bg.sync(device)
        return result_ids

    torch_exact()
    seconds, torch_ids = timed(torch_exact)
    result[f"torch_{device.type}_exact_s"] = round(seconds, 4)
    result[f"torch_{device.type}_exact_qps"] = round(s.faiss_queries / seconds)
    if exact_ids is not None:
        result["torch_recall_at_1_vs_faiss"] = round(
            float((torch_ids[:, 0].cpu().numpy() == exact_ids[:, 0]).mean()), 4
        )
    parts = []
    if "cpu_exact_qps" in result:
        parts.append(f"faiss CPU exact {result['cpu_exact_qps']} q/s, IVF {result['cpu_ivf_qps']} q/s")
    if "gpu_exact_s" in result:
        parts.append(f"faiss GPU exact {s.faiss_queries / result['gpu_exact_s']:.0f} q/s")
    elif "faiss_gpu" in result or "faiss" in result:
        parts.append("faiss-gpu: not available")
    parts.append(f"torch {device.type} exact {result[f'torch_{device.type}_exact_qps']} q/s")
    result["headline"] = "; ".join(parts)
    return result


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
    log(f"gpu_check on {ctx.device} ({'smoke' if args.smoke else 'full'}), budget {budget:.0f}s")
    s = sizes
    base = generation_check(s.preset, s.resolution, s.gen_images, s.gen_batch, s.gen_build, s.gen_repeats, "fp32")
    sd15 = generation_check(s.sd15_preset, s.sd15_resolution, s.sd15_images, s.sd15_batch, False, 1, "bf16")
    checks: list[tuple[str, float, Callable[[Context], dict[str, Any]]]] = [
        ("device", 5, check_device),
        ("train", 40, check_train),
        ("generate", 90, base),
        ("faiss", 25, check_faiss),
        ("generate_sd15", 60, sd15),
    ]
    wanted = set(args.only.split(",")) if args.only else None
    for name, estimate, check in checks:
        if wanted is None or name in wanted or name == "device":
            run_check(ctx, name, estimate, check)
    print_table(ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
