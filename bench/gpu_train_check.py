"""The `train` check of bench/gpu_check.py: MSDM training speed with synthgen's own builders and training pieces.

MSDM `--preset` at `--resolution`, built with `synthgen.models.msdm`. The VAE: encode as `encode_latents` does
it (fp32, no grad) and under bf16 autocast, and a VAE-phase training step (`msdm_phases.Autoencoding`, bf16
autocast, AdamW). The UNet phase: `msdm_phases.unet_phase`'s own draw and loss over random latents (speed does
not depend on them), each step `training.loop._optimizer_step` (AdamW, clipping 1.0, bf16 autocast) and the
`training.ema.EMA` update, at each batch size: steps/s, images/s, TFLOP/s (FlopCounterMode on one step),
share of the bf16 peak, peak memory; one fp32 step for contrast.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from gen_model import CLASSES
from gpu_context import Context, Sizes
from gpu_timing import empty_cache, median_step

PROMPTS = list(CLASSES.values())
PIECES = "synthgen: msdm_phases.unet_phase draw+loss, Autoencoding; loop._optimizer_step; ema.EMA"


def _oom(error: BaseException) -> str:
    return f"out of memory: {str(error)[:200]}"


def _build_models(s: Sizes, device) -> SimpleNamespace:
    """Untrained VAE, BERT text model (with its tokenizer) and UNet of the preset, on `device`."""
    import torch

    from synthgen.models import msdm

    preset = msdm.PRESETS[s.preset]
    torch.manual_seed(0)
    tokenizer = msdm.train_tokenizer(PROMPTS, preset)
    with torch.device(device.type):
        vae = msdm.build_vae(preset, s.resolution)
        text_model = msdm.build_text_encoder(preset, len(tokenizer))
        unet = msdm.build_unet(preset, s.resolution, vae=vae, cross_attention_dim=preset.text_hidden)
    channels, down = msdm.vae_geometry(vae)
    return SimpleNamespace(
        vae=vae.to(device),
        text_model=text_model.to(device),
        unet=unet.to(device),
        tokenizer=tokenizer,
        channels=channels,
        side=s.resolution // down,
    )


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

        seconds = median_step(encode, device, 1, 3)
        result[f"vae_encode_{name}_images_per_s"] = round(len(pixels) / seconds, 1)
    return result


def _vae_train(vae: Any, ctx: Context, channels: int, side: int) -> dict[str, Any]:
    """A VAE-phase training step (synthgen's Autoencoding; reconstruction MSE + tiny KL), bf16 autocast, AdamW."""
    import torch

    from synthgen.training.msdm_phases import Autoencoding

    s, device = ctx.sizes, ctx.device
    vae.train()
    autoencoding = Autoencoding(vae)
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
        seconds = median_step(step, device, 1, s.vae_steps)
    except torch.OutOfMemoryError as error:
        return {"batch": s.vae_batch, "error": _oom(error)}
    finally:
        vae.zero_grad(set_to_none=True)
    return {"batch": s.vae_batch, "step_s": round(seconds, 4), "images_per_s": round(s.vae_batch / seconds, 1)}


def _unet_phase(models: SimpleNamespace, s: Sizes, device) -> tuple[Any, Any]:
    """synthgen's Denoiser and UNet phase (its draw and loss) over random latents and the bench prompts."""
    import torch

    from synthgen.models.text_encoders import TextEncoder
    from synthgen.training.msdm_phases import Denoiser, Latents, unet_phase

    text = TextEncoder(models.text_model, models.tokenizer, "built-in BERT", None, True, "captions")
    denoiser = Denoiser(models.unet, text).to(device)
    shape = (s.latent_items, 2, models.channels, models.side, models.side)
    latents = Latents(torch.randn(shape), torch.full(shape, 0.1))
    tokens = text.tokenize([PROMPTS[i % len(PROMPTS)] for i in range(s.latent_items)])
    config = SimpleNamespace(
        prompt_dropout=0.1, seed=0, unet_steps=1000, learning_rate=1e-4, ema_decay=0.999, micro_batch_size=lambda: 1
    )
    return denoiser, unet_phase(denoiser, (latents, tokens), None, config, device)


def _one_step(phase, denoiser, optimizer, params, batch: int, autocast, device) -> None:
    """One optimizer step of the phase as synthgen's loop takes it (draw, loss, backward, clip, AdamW)."""
    import torch

    from synthgen.training.loop import LoopSettings, _optimizer_step

    generator = torch.Generator().manual_seed(1)
    indices = torch.randint(0, phase.dataset_size, (batch,), generator=generator)
    settings = LoopSettings(
        batch_size=batch, micro_batch_size=batch, checkpoint_every=10**9, seed=0, device=device, autocast_dtype=autocast
    )
    _optimizer_step(phase, settings, denoiser, optimizer, params, None, None, indices, generator)


def _unet_steps(ctx: Context, phase, denoiser, params, batch: int, autocast, steps: int | None = None):
    """Median seconds of a UNet-phase step plus the EMA update at `batch`; peak memory on CUDA."""
    import torch

    from synthgen.training.ema import EMA

    device = ctx.device
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    ema = EMA(denoiser, 0.999)
    denoiser.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        _one_step(phase, denoiser, optimizer, params, batch, autocast, device)
        ema.update(denoiser)

    seconds = median_step(step, device, ctx.sizes.train_warmup, steps or ctx.sizes.train_steps)
    run = {"step_s": round(seconds, 4), "steps_per_s": round(1 / seconds, 3), "images_per_s": round(batch / seconds, 1)}
    if device.type == "cuda":
        run["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return run


def _unet_runs(ctx: Context, phase, denoiser, params) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """bf16-autocast runs at every batch size, and one fp32 run (no autocast) at the first, for contrast."""
    import torch

    s = ctx.sizes
    runs = []
    for batch in s.train_batches:
        run: dict[str, Any] = {"batch": batch}
        runs.append(run)
        try:
            run.update(_unet_steps(ctx, phase, denoiser, params, batch, torch.bfloat16))
        except torch.OutOfMemoryError as error:
            run["error"] = _oom(error)
        empty_cache(ctx.device)
    fp32: dict[str, Any] = {"batch": s.train_batches[0]}
    try:
        fp32.update(_unet_steps(ctx, phase, denoiser, params, s.train_batches[0], None, max(2, s.train_steps // 3)))
    except torch.OutOfMemoryError as error:
        fp32 = {"error": _oom(error)}
    return runs, fp32


def _add_tflops(ctx: Context, phase, denoiser, params, runs: list[dict[str, Any]]) -> float:
    """FLOPs of one bf16 training step (forward + backward) at the first batch size, per image, in GFLOP;
    each timed run gets its TFLOP/s and share of the bf16 peak."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batch = ctx.sizes.train_batches[0]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    with FlopCounterMode(display=False) as counter:
        _one_step(phase, denoiser, optimizer, params, batch, torch.bfloat16, ctx.device)
    per_image = float(counter.get_total_flops()) / batch
    for run in runs:
        if "step_s" in run:
            run["tflops"] = round(per_image * run["batch"] / run["step_s"] / 1e12, 2)
            if ctx.peak_tflops:
                run["share_of_bf16_peak"] = round(run["tflops"] / ctx.peak_tflops, 3)
    return round(per_image / 1e9, 2)


def _headline(result: dict[str, Any]) -> str | None:
    ok = [r for r in result["unet_bf16"] if "step_s" in r]
    if not ok:
        return None
    best = max(ok, key=lambda r: r["images_per_s"])
    share = f" ({100 * best['share_of_bf16_peak']:.0f}% of peak)" if "share_of_bf16_peak" in best else ""
    return (
        f"UNet bf16 b{best['batch']}: {best['steps_per_s']:.2f} steps/s, {best['images_per_s']:.0f} img/s, "
        f"{best.get('tflops', 0):.0f} TFLOP/s{share}; "
        f"VAE encode {result['vae_encode_bf16_autocast_images_per_s']:.0f} img/s (bf16)"
    )


def check_train(ctx: Context) -> dict[str, Any]:
    s, device = ctx.sizes, ctx.device
    result: dict[str, Any] = {"preset": s.preset, "resolution": s.resolution, "pieces": PIECES, "autocast": "bf16"}
    models = _build_models(s, device)
    result["parameters_m"] = {
        name: round(sum(p.numel() for p in getattr(models, part).parameters()) / 1e6, 1)
        for name, part in (("vae", "vae"), ("unet", "unet"), ("text", "text_model"))
    }
    result.update(_vae_encode(models.vae, ctx))
    result["vae_train"] = _vae_train(models.vae, ctx, models.channels, models.side)
    models.vae.requires_grad_(False).eval()
    empty_cache(device)

    denoiser, phase = _unet_phase(models, s, device)
    params = [p for p in denoiser.parameters() if p.requires_grad]
    result["trainable_m"] = round(sum(p.numel() for p in params) / 1e6, 1)
    result["unet_bf16"], result["unet_fp32"] = _unet_runs(ctx, phase, denoiser, params)
    result["train_step_gflop_per_image"] = _add_tflops(ctx, phase, denoiser, params, result["unet_bf16"])
    headline = _headline(result)
    if headline:
        result["headline"] = headline
    return result
