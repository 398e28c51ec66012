"""The phases of MSDM training: a VAE phase, then a UNet (+ text encoder) phase on the VAE's latents; each resumable.

Both phases run through `loop.run_phase`, so checkpoints, EMA, validation, logging and DP-SGD behave the
same in each. Every per-item random choice (flip, reparameterisation noise, diffusion noise, timestep,
caption dropout) is drawn per item, so DP's per-sample clipping sees one training image per gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthgen.plan import derive_seed
from synthgen.recipe import TrainingConfig
from synthgen.training.data import TrainingData
from synthgen.training.loop import Phase
from synthgen.training.training_log import SAMPLES_DIR, write_sample_grid

GRID_SEEDS = (0, 1, 2, 3)
GRID_STEPS = 20
GRID_GUIDANCE = 3.5
MAX_GRID_ROWS = 8
PRIVATE_LATENT_SCALE = 1.0  # see latent_scale


class Autoencoding(torch.nn.Module):
    """The VAE as one forward (encode, reparameterise with given noise, decode) for the loop and Opacus."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(images).latent_dist
        latents = posterior.mean + posterior.std * eps
        return self.vae.decode(latents).sample, posterior.kl()


class Denoiser(torch.nn.Module):
    """UNet plus the text encoder when it trains: one optimizer, one EMA, one Opacus wrapper for both."""

    def __init__(self, unet: Any, text: Any) -> None:
        super().__init__()
        self.unet = unet
        if text.trainable:
            self.text = text.model  # registered: trained, checkpointed and EMA-averaged with the UNet
        self._text = text  # not a Module: a frozen encoder stays outside optimizer, EMA and Opacus

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return self.unet(noisy, timesteps, encoder_hidden_states=self._text(ids)).sample


def _per_item_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction.float() - target.float()).pow(2).flatten(1).mean(1)


def vae_phase(vae: Any, data: TrainingData, val: TrainingData, config: TrainingConfig, device: Any) -> Phase:
    """Reconstruction MSE + a tiny KL term on randomly flipped images; validation: MSE of the posterior mode."""
    from synthgen.models.msdm import vae_geometry

    module = Autoencoding(vae).to(device)
    images = torch.from_numpy(data.images)
    channels, down = vae_geometry(vae)
    side = config.resolution // down

    def draw(indices: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        n = len(indices)
        pixels = images[indices].float() / 127.5 - 1.0
        flip = torch.rand(n, generator=generator) < 0.5
        pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
        eps = torch.randn((n, channels, side, side), generator=generator)
        return {"images": pixels.to(device), "eps": eps.to(device)}

    def loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        reconstruction, kl = model(batch["images"], batch["eps"])
        return _per_item_mse(reconstruction, batch["images"]) + 1e-6 * kl

    def validate(model: Any) -> float:
        errors = []
        for start in range(0, len(val), config.micro_batch_size()):
            pixels = torch.from_numpy(val.floats(np.arange(start, min(start + config.micro_batch_size(), len(val)))))
            pixels = pixels.to(device)
            decoded = model.vae.decode(model.vae.encode(pixels).latent_dist.mode()).sample
            errors.append(_per_item_mse(decoded, pixels))
        return float(torch.cat(errors).mean())

    return Phase(
        name="vae",
        steps=config.vae_steps,
        module=module,
        dataset_size=len(data),
        draw=draw,
        loss=loss,
        learning_rate=config.learning_rate,
        validate=validate if len(val) else None,
        progress_label="training VAE",
    )


@dataclass
class Latents:
    """Posterior mean and std of every image and its mirror image: (n, 2, C, h, w) each, scaled."""

    mean: torch.Tensor
    std: torch.Tensor


def encode_latents(vae: Any, data: TrainingData, device: Any, chunk: int = 32) -> Latents:
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(data), chunk):
            pixels = torch.from_numpy(data.floats(np.arange(start, min(start + chunk, len(data))))).to(device)
            pair = [vae.encode(view).latent_dist for view in (pixels, pixels.flip(-1))]
            means.append(torch.stack([d.mean for d in pair], 1).cpu())
            stds.append(torch.stack([d.std for d in pair], 1).cpu())
    if not means:
        return Latents(torch.empty(0), torch.empty(0))
    return Latents(torch.cat(means), torch.cat(stds))


def unet_phase(
    denoiser: Denoiser,
    train: tuple[Latents, torch.Tensor],
    val: tuple[Latents, torch.Tensor] | None,
    config: TrainingConfig,
    device: Any,
    on_checkpoint: Any = None,
) -> Phase:
    """Noise-prediction loss on scaled latents with caption dropout (CFG); validation with fixed noise and t."""
    from synthgen.models.msdm import training_scheduler

    scheduler = training_scheduler()
    latents, tokens = train
    empty = denoiser._text.tokenize([""])[0]
    timesteps = scheduler.config.num_train_timesteps

    def noised(x0: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, timesteps, (len(x0),), generator=generator)
        return scheduler.add_noise(x0, noise, t), noise, t

    def draw(indices: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        n = len(indices)
        flip = (torch.rand(n, generator=generator) < 0.5).long()
        mean, std = latents.mean[indices, flip], latents.std[indices, flip]
        x0 = mean + std * torch.randn(mean.shape, generator=generator)
        noisy, noise, t = noised(x0, generator)
        ids = tokens[indices].clone()
        ids[torch.rand(n, generator=generator) < config.prompt_dropout] = empty
        return {"noisy": noisy.to(device), "t": t.to(device), "ids": ids.to(device), "noise": noise.to(device)}

    def loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return _per_item_mse(model(batch["noisy"], batch["t"], batch["ids"]), batch["noise"])

    def validate(model: Any) -> float:
        val_latents, val_tokens = val
        generator = torch.Generator().manual_seed(derive_seed(config.seed, "validation"))
        noisy, noise, t = noised(val_latents.mean[:, 0], generator)  # the same noise at every checkpoint
        errors = []
        for start in range(0, len(noise), config.micro_batch_size()):
            part = slice(start, start + config.micro_batch_size())
            prediction = model(noisy[part].to(device), t[part].to(device), val_tokens[part].to(device))
            errors.append(_per_item_mse(prediction, noise[part].to(device)))
        return float(torch.cat(errors).mean())

    return Phase(
        name="unet",
        steps=config.unet_steps,
        module=denoiser,
        dataset_size=len(tokens),
        draw=draw,
        loss=loss,
        learning_rate=config.learning_rate,
        weight_decay=1e-2,
        warmup_steps=max(1, config.unet_steps // 20),
        clip_grad_norm=1.0,
        ema_decay=config.ema_decay,
        validate=validate if val is not None and len(val[1]) else None,
        on_checkpoint=on_checkpoint,
        progress_label="training UNet",
    )


def grid_prompts(prompts: dict[str, list[str]], private: bool, data: TrainingData) -> list[tuple[str, str]]:
    """(label, prompt) rows of the sample grids: the recipe's first prompt per class, else a caption per label.

    Under DP (`private`) only public text is used (recipe prompts, else the label), never a private caption.
    """
    if prompts:
        rows = [(label, texts[0]) for label, texts in prompts.items() if texts]
    else:
        first: dict[str, str] = {}
        for caption, label in zip(data.captions, data.labels, strict=True):
            first.setdefault(label, label if private else caption)
        rows = sorted(first.items())
    return rows[:MAX_GRID_ROWS]


def sample_grid_writer(out_dir: Path, parts: dict[str, Any], rows: list[tuple[str, str]], resolution: int, device):
    """A checkpoint hook: sample the rows' prompts with fixed seeds (current weights) into samples/step-N.png."""
    from synthgen.models.msdm import assemble_pipeline

    def write(step: int) -> None:
        pipeline = assemble_pipeline(parts["vae"], parts["text"].model, parts["text"].tokenizer, parts["unet"])
        pipeline.set_progress_bar_config(disable=True)
        prompts = [prompt for _, prompt in rows for _ in GRID_SEEDS]
        generators = [torch.Generator().manual_seed(seed) for _ in rows for seed in GRID_SEEDS]
        images = pipeline(
            prompts,
            height=resolution,
            width=resolution,
            num_inference_steps=GRID_STEPS,
            guidance_scale=GRID_GUIDANCE,
            generator=generators,
        ).images
        per_row = len(GRID_SEEDS)
        grid = [(label, images[i * per_row : (i + 1) * per_row]) for i, (label, _) in enumerate(rows)]
        write_sample_grid(out_dir / SAMPLES_DIR / f"step-{step}.png", grid)

    return write


def latent_scale(latents: Latents, private: bool) -> float:
    """The VAE's scaling_factor: 1 / std of the training latents, so the UNet sees unit-variance data.

    Under DP that std would be a non-private statistic of the training images, so a fixed public value is
    used instead (see docs/models.md).
    """
    if private or not len(latents.mean):
        return PRIVATE_LATENT_SCALE
    return float(1.0 / latents.mean.std())
