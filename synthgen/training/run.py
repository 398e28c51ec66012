"""One MSDM training run into a folder DIR: claim or resume DIR, run the phases, install the pipeline.

DIR ends as a plain diffusers `StableDiffusionPipeline` folder (loads with no synthgen import) plus
`synthgen_model.json`, README.md (model card), `training_log.jsonl`, `loss.png`, `samples/step-N.png`,
`privacy.json` under DP, and `.checkpoints/` holding the final checkpoint of each phase (to extend the run).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthgen import __version__
from synthgen.errors import SynthgenError
from synthgen.plan import derive_seed
from synthgen.recipe import PrivacyConfig, TrainingConfig
from synthgen.sources.base import Source

Progress = Callable[[str, int, int], None]
Notify = Callable[[str], None]
PHASES = ("vae", "unet")
SETTINGS_FORMAT = 1  # bump when a code change makes old checkpoints unfit to resume


@dataclass
class MSDMRequest:
    """Everything one MSDM training run needs; `prompts` are the recipe's class prompts (public text)."""

    config: TrainingConfig
    source: Source
    out_dir: Path
    base_dir: Path | None = None
    privacy: PrivacyConfig | None = None
    prompts: dict[str, list[str]] = field(default_factory=dict)
    recipe: Any = None
    recipe_sha256: str | None = None
    overwrite: bool = False
    device: str = "auto"


def cache_root() -> Path:
    """Where trained models are cached: $SYNTHGEN_CACHE, else ~/.cache/synthgen."""
    return Path(os.environ.get("SYNTHGEN_CACHE", Path.home() / ".cache" / "synthgen"))


def training_key(
    config: TrainingConfig,
    data_fingerprint: str,
    privacy: PrivacyConfig | None = None,
    prompts: dict[str, list[str]] | None = None,
) -> str:
    """Cache key of a trained model: settings, data, privacy block, tokenizer prompts, synthgen version."""
    blob: dict[str, Any] = {
        "settings": config.model_dump(mode="json", exclude={"data"}),
        "data": data_fingerprint,
        "version": __version__,
    }
    if privacy is not None:
        blob["privacy"] = privacy.model_dump(mode="json")
    if prompts:
        blob["prompts"] = prompts
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def run_settings(request: MSDMRequest, data_fingerprint: str) -> dict[str, Any]:
    """What a resumed run must share with the interrupted one (not checkpoint_every; not unet_steps without DP,
    so a finished run can be extended with more steps; under DP the steps fix the noise, so they count)."""
    from synthgen.models.text_encoders import tokenizer_corpus

    config = request.config
    exclude = {"data", "checkpoint_every"} | ({"unet_steps"} if request.privacy is None else set())
    settings: dict[str, Any] = {
        "training": config.model_dump(mode="json", exclude=exclude),
        "data_sha256": data_fingerprint,
        "privacy": request.privacy.model_dump(mode="json") if request.privacy else None,
        "format": SETTINGS_FORMAT,
    }
    if (
        config.text_encoder.pretrained is None
        and tokenizer_corpus(config.text_encoder, bool(request.privacy)) == "prompts"
    ):
        settings["tokenizer_prompts"] = sorted({p for prompts in request.prompts.values() for p in prompts})
    return settings


def _load_vae(name: str, base_dir: Path | None) -> Any:
    from diffusers import AutoencoderKL

    path = Path(name).expanduser()
    path = base_dir / path if base_dir is not None else path  # relative to the recipe; absolute stays itself
    sub = {"subfolder": "vae"} if (path / "vae" / "config.json").is_file() else {}
    try:
        return AutoencoderKL.from_pretrained(path, local_files_only=True, **sub)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SynthgenError(f"model.train.vae: cannot load an AutoencoderKL from {path}: {reason}") from None


def train_msdm(request: MSDMRequest, progress: Progress | None = None, notify: Notify | None = None) -> Path:
    """Train (or resume, or extend) the MSDM `request` describes into `request.out_dir`; returns the folder."""
    import torch

    from synthgen.generate import pick_device
    from synthgen.models import quiet_libraries
    from synthgen.models.msdm import PRESETS, assemble_pipeline, build_unet, build_vae
    from synthgen.training import msdm
    from synthgen.training.checkpoints import CheckpointStore, seed_everything
    from synthgen.training.data import drop_cache, load_training_data, split_indices
    from synthgen.training.folder import TrainingFolder
    from synthgen.training.loop import LoopSettings, resolve_precision, run_phase
    from synthgen.training.report import LOG_FILE, PLOT_FILE, TrainingLog, plot_log

    quiet_libraries()
    notify = notify or (lambda message: None)
    config, privacy = request.config, request.privacy
    device = pick_device(request.device)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    started = time.time()
    fingerprint = request.source.fingerprint()
    folder = TrainingFolder(request.out_dir)
    resumed = folder.claim(run_settings(request, fingerprint), request.overwrite)
    store = CheckpointStore(folder.work)
    log = TrainingLog(folder.path / LOG_FILE, PHASES)
    _check_resume_point(folder, store, config, resumed)
    point = next((c for c in (store.latest(p) for p in reversed(PHASES)) if c is not None), None)
    log.truncate_after(point.phase if point else None, point.step if point else 0)
    if point is not None:
        log.event("resume", point.phase, point.step, checkpoint=point.path.name)
        notify(f"resuming from {point.path.name} ({point.phase} step {point.step})")
    else:
        log.event("start", None, 0, preset=config.preset, device=device.type)

    preset = PRESETS[config.preset]
    data = load_training_data(request.source, config.resolution, folder.work / "data")
    validation_split = 0.0 if privacy is not None else config.validation_split  # see dp.py: no non-private stats
    train_idx, val_idx = split_indices(len(data), validation_split, config.seed)
    train, val = data.subset(train_idx), data.subset(val_idx)
    autocast, scaler = resolve_precision(config.mixed_precision, device)
    settings = LoopSettings(config.batch_size, config.micro_batch_size(), config.checkpoint_every, config.seed, device)
    settings.autocast_dtype, settings.grad_scaler = autocast, scaler
    settings.plot_path = folder.path / PLOT_FILE
    private = _private_training(request, fingerprint, len(train)) if privacy is not None else None

    results: dict[str, Any] = {}
    seed_everything(derive_seed(config.seed, "build", "vae"))
    if config.vae:
        vae = _load_vae(config.vae, request.base_dir).to(device)
        vae_source = f"pretrained ({config.vae}), frozen"
    else:
        vae = build_vae(preset, config.resolution).to(device)
        vae_source = f"{config.vae_steps} steps" + (" (DP-SGD)" if private else "")
        if config.vae_steps:
            results["vae"] = run_phase(
                msdm.vae_phase(vae, train, val, config, device), settings, store, log, progress, private
            )
    vae.requires_grad_(False).eval()

    latents = msdm.encode_latents(vae, train, device)
    if not config.vae:
        scale = msdm.latent_scale(latents, private is not None)
        vae.register_to_config(scaling_factor=scale)
    scale = float(vae.config.scaling_factor)
    latents = msdm.Latents(latents.mean * scale, latents.std * scale)
    val_latents = msdm.encode_latents(vae, val, device) if len(val) else None
    if val_latents is not None:
        val_latents = msdm.Latents(val_latents.mean * scale, val_latents.std * scale)

    seed_everything(derive_seed(config.seed, "build", "unet"))
    text = _text_encoder(request, preset, train, folder.work / "tokenizer")
    text.model.to(device)
    unet = build_unet(preset, config.resolution, vae=vae, cross_attention_dim=text.hidden_size).to(device)
    denoiser = msdm.Denoiser(unet, text)
    grid = msdm.sample_grid_writer(
        folder.path,
        {"vae": vae, "text": text, "unet": unet},
        msdm.grid_prompts(request, data),
        config.resolution,
        device,
    )
    phase = msdm.unet_phase(
        denoiser,
        (latents, text.tokenize(train.captions)),
        (val_latents, text.tokenize(val.captions)) if val_latents is not None else None,
        config,
        device,
        on_checkpoint=grid,
    )
    results["unet"] = run_phase(phase, settings, store, log, progress, private)

    pipeline = assemble_pipeline(vae.cpu(), text.model.cpu(), text.tokenizer, unet.cpu())
    staging = folder.staging()
    pipeline.save_pretrained(staging, safe_serialization=True)
    from synthgen.training.card import write_model_card, write_model_info

    dp_report = private.report() if private is not None else None
    info = _model_info(request, fingerprint, data, train, val, results, vae, unet, text, vae_source, dp_report, started)
    write_model_info(staging, info)
    write_model_card(staging, info)
    if private is not None:
        private.write(staging)
    folder.install(staging)
    plot_log(log, folder.path / PLOT_FILE)
    drop_cache(folder.work / "data")
    log.event("done", "unet", config.unet_steps, seconds=round(time.time() - started, 1))
    return folder.path


def _check_resume_point(folder: Any, store: Any, config: TrainingConfig, resumed: bool) -> None:
    """A finished run is only rerun to extend it (more unet_steps); a checkpoint past the target is refused."""
    last = store.latest("unet")
    if resumed and folder.finished and (last is None or last.step >= config.unet_steps):
        steps = last.step if last is not None else config.unet_steps
        raise SynthgenError(
            f"{folder.path} already holds this model trained for {steps} UNet steps; pass --overwrite to train it "
            "again, or raise unet_steps to train it further"
        )
    if last is not None and last.step > config.unet_steps:
        raise SynthgenError(
            f"{folder.path}: its checkpoint is at UNet step {last.step}, beyond unet_steps {config.unet_steps}; "
            "raise unet_steps, or pass --overwrite to start over"
        )


def _text_encoder(request: MSDMRequest, preset: Any, train: Any, tokenizer_dir: Path) -> Any:
    """The run's text encoder; a built-in tokenizer is learnt once and reused on resume (ids must not move)."""
    from transformers import AutoTokenizer

    from synthgen.models.text_encoders import make_text_encoder

    saved = AutoTokenizer.from_pretrained(tokenizer_dir) if (tokenizer_dir / "tokenizer.json").is_file() else None
    text = make_text_encoder(
        request.config.text_encoder,
        preset,
        captions=train.captions,
        prompts=[p for prompts in request.prompts.values() for p in prompts],
        private=request.privacy is not None,
        base_dir=request.base_dir,
        tokenizer=saved,
    )
    if saved is None and request.config.text_encoder.pretrained is None:
        text.tokenizer.save_pretrained(tokenizer_dir)
    return text


def _private_training(request: MSDMRequest, fingerprint: str, dataset_size: int) -> Any:
    """The DP plan over the phases this run trains (the VAE phase only when it trains a VAE)."""
    from synthgen.training.dp import DPTraining

    config = request.config
    phases = {"unet": config.unet_steps}
    if not config.vae and config.vae_steps:
        phases = {"vae": config.vae_steps, **phases}
    covers = {"vae": ("vae",), "unet": ("unet", "text_encoder") if config.text_encoder.train else ("unet",)}
    return DPTraining(
        request.privacy,
        request.recipe,
        fingerprint,
        request.base_dir,
        dataset_size,
        config.batch_size,
        phases,
        covers,
    )


def _model_info(request, fingerprint, data, train, val, results, vae, unet, text, vae_source, dp, started) -> dict:
    """synthgen_model.json: training provenance (never file names or captions of the training data)."""
    from synthgen.models.text_encoders import count_parameters
    from synthgen.training.card import library_versions

    config = request.config
    training_data = {
        "description": request.source.description,
        "sha256": fingerprint,
        "images": len(train),
        "validation_images": len(val),
        "skipped": data.skipped,
    }
    if dp is None:  # per-label counts are a non-private statistic of the data
        training_data["labels"] = train.label_counts()
    return {
        "architecture": "MSDM",
        "preset": config.preset,
        "training": config.model_dump(mode="json", exclude={"data"}),
        "training_data": training_data,
        "recipe_sha256": request.recipe_sha256,
        "parameters": {
            "vae": count_parameters(vae),
            "unet": count_parameters(unet),
            "text_encoder": count_parameters(text.model),
        },
        "text_encoder": {
            "kind": text.kind,
            "source": text.source,
            "trainable": text.trainable,
            "tokenizer_corpus": text.corpus,
            "hidden_size": text.hidden_size,
        },
        "vae_source": vae_source,
        "steps": {name: result.steps for name, result in results.items()},
        "final_loss": {name: result.loss for name, result in results.items()},
        "validation_loss": {name: result.val_loss for name, result in results.items()},
        "dp": dp,
        "seconds": round(time.time() - started, 1),
        "versions": library_versions(),
        "synthgen_version": __version__,
    }
