"""Training of an MSDM from a recipe's `model.train` block: VAE first, then UNet + text encoder on its latents.

The result is a diffusers `StableDiffusionPipeline` folder plus `synthgen_model.json` (training provenance).
Models are cached under a key made of the training settings and the training data's fingerprint, so a second
build with the same recipe reuses the model instead of training again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthgen import __version__
from synthgen.atomic import write_json
from synthgen.errors import SynthgenError
from synthgen.recipe import TrainingConfig
from synthgen.sources.base import Source

Progress = Callable[[str, int, int], None]
MODEL_INFO_FILE = "synthgen_model.json"


@dataclass
class TrainingData:
    images: np.ndarray  # (n, 3, H, W) float32 in [-1, 1]
    captions: list[str]
    labels: list[str]
    skipped: int


def cache_root() -> Path:
    """Where trained models are cached: $SYNTHGEN_CACHE, else ~/.cache/synthgen."""
    return Path(os.environ.get("SYNTHGEN_CACHE", Path.home() / ".cache" / "synthgen"))


def training_key(config: TrainingConfig, data_fingerprint: str) -> str:
    settings = config.model_dump(mode="json", exclude={"data"})
    blob = json.dumps({"settings": settings, "data": data_fingerprint, "version": __version__}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_training_data(source: Source, resolution: int) -> TrainingData:
    """Decode every training image to a square `resolution` tensor (centre crop); skipped images are counted."""
    from PIL import Image, ImageOps

    arrays, captions, labels = [], [], []
    for sample in source:
        image = ImageOps.fit(sample.image.convert("RGB"), (resolution, resolution), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0)
        captions.append(sample.text or sample.label)
        labels.append(sample.label)
    if not arrays:
        raise SynthgenError(f"{source.description}: no readable training images")
    return TrainingData(np.stack(arrays), captions, labels, len(source.skipped))


def _train_vae(vae, data: TrainingData, config: TrainingConfig, progress: Progress | None, device):
    import torch

    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.learning_rate)
    generator = np.random.default_rng(config.seed)
    images = torch.from_numpy(data.images)
    vae.train()
    for step in range(config.vae_steps):
        batch = images[generator.integers(0, len(images), config.batch_size)].to(device)
        batch = torch.where(torch.rand(len(batch), 1, 1, 1, device=device) < 0.5, batch, batch.flip(-1))
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = torch.nn.functional.mse_loss(reconstruction, batch) + 1e-6 * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress:
            progress("vae", step + 1, config.vae_steps)
    vae.eval()
    return float(loss.detach()) if config.vae_steps else None


@dataclass
class _Latents:
    mean: object  # torch tensors
    std: object


def _encode(vae, data: TrainingData, device) -> _Latents:
    import torch

    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(data.images), 64):
            batch = torch.from_numpy(data.images[start : start + 64]).to(device)
            for flipped in (batch, batch.flip(-1)):
                dist = vae.encode(flipped).latent_dist
                means.append(dist.mean)
                stds.append(dist.std)
    return _Latents(torch.cat(means), torch.cat(stds))


def _train_unet(unet, text_encoder, tokenizer, latents: _Latents, captions: list[str], config, progress, device):
    import torch

    from synthgen.models.msdm import training_scheduler

    scheduler = training_scheduler()
    # Captions repeat for the flipped copies made in _encode (batch-wise: 64 originals then 64 flipped).
    paired = []
    for start in range(0, len(captions), 64):
        chunk = captions[start : start + 64]
        paired += chunk + chunk
    tokens = tokenizer(
        paired, padding="max_length", truncation=True, max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids.to(device)
    empty = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    empty = empty.input_ids.to(device)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=1e-2)
    warmup = max(1, config.unet_steps // 20)
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    rng = np.random.default_rng(config.seed + 1)
    unet.train()
    text_encoder.train()
    losses = []
    for step in range(config.unet_steps):
        index = torch.from_numpy(rng.integers(0, len(latents.mean), config.batch_size)).to(device)
        x0 = latents.mean[index] + latents.std[index] * torch.randn_like(latents.mean[index])
        ids = tokens[index].clone()
        dropped = torch.from_numpy(rng.random(len(ids)) < config.prompt_dropout).to(device)
        ids[dropped] = empty
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x0),), device=device)
        noisy = scheduler.add_noise(x0, noise, t)
        prediction = unet(noisy, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = torch.nn.functional.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr_schedule.step()
        losses.append(float(loss.detach()))
        if progress:
            progress("unet", step + 1, config.unet_steps)
    unet.eval()
    text_encoder.eval()
    return float(np.mean(losses[-50:]))


def train_msdm(
    config: TrainingConfig, source: Source, out_dir: Path, progress: Progress | None = None, device: str = "auto"
) -> Path:
    """Train an MSDM on `source` (on the GPU when there is one) and save it as a pipeline folder, atomically."""
    import torch

    from synthgen.generate import pick_device
    from synthgen.models import quiet_libraries
    from synthgen.models.msdm import (
        PRESETS,
        assemble_pipeline,
        build_text_encoder,
        build_unet,
        build_vae,
        train_tokenizer,
    )

    quiet_libraries()
    target = pick_device(device)
    torch.manual_seed(config.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    started = time.time()
    preset = PRESETS[config.preset]
    data = load_training_data(source, config.resolution)
    tokenizer = train_tokenizer(data.captions, preset)
    vae = build_vae(preset, config.resolution).to(target)
    vae_loss = _train_vae(vae, data, config, progress, target)
    latents = _encode(vae, data, target)
    vae.register_to_config(scaling_factor=float(1.0 / latents.mean.std()))
    scaled = _Latents(latents.mean * vae.config.scaling_factor, latents.std * vae.config.scaling_factor)
    unet = build_unet(preset, config.resolution).to(target)
    text_encoder = build_text_encoder(preset, len(tokenizer)).to(target)
    unet_loss = _train_unet(unet, text_encoder, tokenizer, scaled, data.captions, config, progress, target)
    pipeline = assemble_pipeline(vae.cpu(), text_encoder.cpu(), tokenizer, unet.cpu())

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        pipeline.save_pretrained(staging, safe_serialization=True)
        write_json(
            staging / MODEL_INFO_FILE,
            {
                "architecture": "MSDM",
                "preset": config.preset,
                "training": config.model_dump(mode="json", exclude={"data"}),
                "training_data": {
                    "description": source.description,
                    "sha256": source.fingerprint(),
                    "images": len(data.captions),
                    "skipped": data.skipped,
                    "labels": dict(sorted({lb: data.labels.count(lb) for lb in set(data.labels)}.items())),
                },
                "final_loss": {"vae": vae_loss, "unet": unet_loss},
                "dp": None,
                "seconds": round(time.time() - started, 1),
                "synthgen_version": __version__,
            },
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
