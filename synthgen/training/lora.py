"""LoRA fine-tuning (peft) of a pretrained Stable Diffusion 1.x/2.x or SDXL pipeline's UNet on a recipe's data.

Only the low-rank adapters train; the VAE, the text encoder(s) and the UNet's own weights stay frozen (in half
precision on a GPU). Training runs through the generic loop (`loop.run_phase`: AdamW, accumulation, mixed
precision, EMA, validation loss, resumable checkpoints of the adapters only). DIR ends with:

- a complete diffusers pipeline with the LoRA fused into the UNet (`DiffusionPipeline.from_pretrained(DIR)`,
  no synthgen or peft needed);
- `lora/pytorch_lora_weights.safetensors`: the adapter alone, for `pipe.load_lora_weights` on the base;
- `synthgen_model.json` (base id and sha256, data sha256, settings, losses), `training_log.jsonl`,
  `loss.png`, `samples/step-N.png` and `.checkpoints/` (the last checkpoint, to extend the run).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synthgen import __version__
from synthgen.errors import SynthgenError
from synthgen.plan import derive_seed
from synthgen.recipe import LoadedRecipe, LoRAConfig
from synthgen.sources.base import Source
from synthgen.training.data import TrainingData
from synthgen.training.loop import Phase

Progress = Callable[[str, int, int], None]
SUPPORTED = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
PHASE = "lora"
LORA_DIR = "lora"
SETTINGS_FORMAT = 1  # bump when a code change makes old checkpoints unfit to resume
GRID_SEEDS, GRID_STEPS, GRID_ROWS = (0, 1, 2, 3), 20, 8
ENCODE_CHUNK = 16


def lora_key(config: LoRAConfig, data_fingerprint: str, base_sha256: str) -> str:
    """Cache key of a fine-tuned model: settings, training data, base weights and synthgen version."""
    settings = config.model_dump(mode="json", exclude={"data"})
    blob = {"settings": settings, "data": data_fingerprint, "base": base_sha256, "version": __version__}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def pipeline_class(base: Path) -> str:
    """The pipeline class a base folder declares, refused unless LoRA training supports it."""
    try:
        name = json.loads((Path(base) / "model_index.json").read_text())["_class_name"]
    except (OSError, ValueError, KeyError):
        raise SynthgenError(f"model.pretrained: {base} is not a diffusers pipeline folder") from None
    if name not in SUPPORTED:
        raise SynthgenError(
            f"model.lora: LoRA fine-tuning supports Stable Diffusion 1.x/2.x and SDXL UNets "
            f"({', '.join(SUPPORTED)}), not {name}; use the model as is (drop `lora`) or pick an SD base"
        )
    return name


def _refuse_privacy(loaded: LoadedRecipe) -> None:
    if loaded.recipe.privacy is not None:
        raise SynthgenError(
            "privacy: differentially private LoRA fine-tuning is not supported yet; "
            "train an MSDM with privacy (model.train) or drop `privacy`"
        )


def check_lora(loaded: LoadedRecipe, local_base: Path | None) -> str:
    """What `synthgen validate` can say about a LoRA recipe without loading weights: base kind, data readable."""
    from synthgen.sources import open_readable

    _refuse_privacy(loaded)
    model = loaded.recipe.model
    index: str | Path | None = local_base / "model_index.json" if local_base is not None else None
    if index is None:
        from huggingface_hub import try_to_load_from_cache

        index = try_to_load_from_cache(model.pretrained, "model_index.json", revision=model.revision)
    if isinstance(index, (str, Path)):
        pipeline_class(Path(index).parent)
    config = model.lora
    source = open_readable(config.data, loaded.base_dir, "model.lora.data")
    return f"LoRA rank {config.rank}, {config.steps} steps on {source.description}"


@dataclass
class Encoded:
    """Latent posteriors (mean, std; unscaled, CPU float16) of training images, with their captions."""

    mean: torch.Tensor
    std: torch.Tensor
    captions: list[str]


class Adapters(torch.nn.Module):
    """The UNet seen through its LoRA adapters: what the loop trains, averages (EMA) and checkpoints.

    `state_dict` holds the adapter weights only, so checkpoints are megabytes, not the whole UNet.
    """

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        added = {"text_embeds": batch["text_embeds"], "time_ids": batch["time_ids"]} if "time_ids" in batch else None
        return self.unet(noisy, timesteps, encoder_hidden_states=batch["hidden"], added_cond_kwargs=added).sample

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        from peft.utils import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.unet).items()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        from peft.utils import set_peft_model_state_dict

        return set_peft_model_state_dict(self.unet, state)


class LoRAModel:
    """A frozen SD/SDXL pipeline whose UNet carries trainable LoRA adapters (fp32 even over a half UNet)."""

    def __init__(self, base: Path, config: LoRAConfig, device: Any, frozen_dtype: Any = None) -> None:
        from diffusers import DDPMScheduler, DiffusionPipeline
        from peft import LoraConfig

        from synthgen.generate import _dtype_kwarg

        self.kind = pipeline_class(base)
        self.config, self.device = config, device
        extra = {"safety_checker": None} if self.kind == "StableDiffusionPipeline" else {}
        self.pipeline = DiffusionPipeline.from_pretrained(
            base, **_dtype_kwarg(torch.float32), local_files_only=True, **extra
        )
        self.pipeline.set_progress_bar_config(disable=True)
        self.unet, self.vae = self.pipeline.unet, self.pipeline.vae
        self.resolution = config.resolution or self.unet.config.sample_size * self.pipeline.vae_scale_factor
        self.noise_scheduler = DDPMScheduler.from_config(self.pipeline.scheduler.config)
        for name, module in self.pipeline.components.items():
            if isinstance(module, torch.nn.Module):
                module.requires_grad_(False)
                half = frozen_dtype is not None and name != "vae"  # fp16 VAEs overflow; the VAE stays fp32
                module.to(device, dtype=frozen_dtype) if half else module.to(device)
        alpha = config.alpha or config.rank
        adapter = LoraConfig(
            r=config.rank, lora_alpha=alpha, target_modules=list(config.target_modules), init_lora_weights="gaussian"
        )
        try:
            self.unet.add_adapter(adapter)
        except ValueError as error:  # peft: "Target modules {...} not found in the base model"
            raise SynthgenError(f"model.lora.target_modules: {str(error).splitlines()[0]}") from None
        for param in self.unet.parameters():
            if param.requires_grad:
                param.data = param.data.float()
        self.module = Adapters(self.unet)

    def conditioning(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """The UNet's text inputs, computed exactly as the pipeline computes them at inference."""
        with torch.no_grad():
            encoded = self.pipeline.encode_prompt(
                prompt=captions, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
        if self.kind == "StableDiffusionPipeline":
            return {"hidden": encoded[0]}
        side = self.resolution  # SDXL's micro-conditioning: original size, crop corner, target size
        time_ids = torch.tensor([[side, side, 0, 0, side, side]], device=self.device).repeat(len(captions), 1)
        return {"hidden": encoded[0], "text_embeds": encoded[2], "time_ids": time_ids.to(encoded[2].dtype)}

    def encode(self, data: TrainingData) -> Encoded:
        """Every image's latent posterior, once: the frozen VAE encoder costs more than a UNet step at 512 px.
        Kept on the CPU in float16 (64 KiB per 512 px image)."""
        means, stds = [], []
        with torch.no_grad():
            for start in range(0, len(data), ENCODE_CHUNK):
                indices = range(start, min(start + ENCODE_CHUNK, len(data)))
                posterior = self.vae.encode(torch.from_numpy(data.floats(list(indices))).to(self.device)).latent_dist
                means.append(posterior.mean.half().cpu())
                stds.append(posterior.std.half().cpu())
        return Encoded(torch.cat(means), torch.cat(stds), data.captions)

    def draw(self, data: Encoded, indices: Any, generator: torch.Generator) -> dict[str, Any]:
        """A batch of noised latents, targets and text inputs; every random choice comes from `generator`."""
        indices = [int(i) for i in indices]
        n, chunk = len(indices), self.config.micro_batch_size()
        dropped = (torch.rand(n, generator=generator) < self.config.prompt_dropout).tolist()
        captions = ["" if drop else data.captions[i] for i, drop in zip(indices, dropped, strict=True)]
        mean, std = data.mean[indices].float(), data.std[indices].float()
        latents = (mean + std * torch.randn(mean.shape, generator=generator)) * self.vae.config.scaling_factor
        latents = latents.to(self.device)
        parts = [self.conditioning(captions[start : start + chunk]) for start in range(0, n, chunk)]
        batch = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        steps = self.noise_scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, steps, (n,), generator=generator).to(self.device)
        batch["noisy"] = self.noise_scheduler.add_noise(latents, noise, timesteps)
        batch["t"] = timesteps
        prediction_type = self.noise_scheduler.config.prediction_type
        if prediction_type == "epsilon":
            batch["target"] = noise
        elif prediction_type == "v_prediction":
            batch["target"] = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            batch["target"] = latents
        return batch

    @staticmethod
    def loss(module: Adapters, batch: dict[str, Any]) -> torch.Tensor:
        """Per-item MSE between the UNet's prediction and the scheduler's target (epsilon, v or sample)."""
        prediction = module(batch["noisy"], batch["t"], batch)
        return (prediction.float() - batch["target"].float()).pow(2).flatten(1).mean(1)

    def validation(self, data: Encoded) -> Callable[[Any], float]:
        """Mean loss on held-out images with the same noise, timesteps and captions at every checkpoint."""

        def validate(module: Any) -> float:
            generator = torch.Generator().manual_seed(derive_seed(self.config.seed, "lora", "validation"))
            batch = self.draw(data, range(len(data.captions)), generator)
            size = self.config.micro_batch_size()
            losses = [
                self.loss(module, {k: v[i : i + size] for k, v in batch.items()})
                for i in range(0, len(data.captions), size)
            ]
            return float(torch.cat(losses).mean())

        return validate

    def phase(self, train: TrainingData, val: TrainingData, on_checkpoint: Any = None) -> Phase:
        """The loop's view of LoRA training: images are encoded once here, batches drawn from their latents."""
        config = self.config
        encoded, held_out = self.encode(train), self.encode(val) if len(val) else None
        return Phase(
            name=PHASE,
            steps=config.steps,
            module=self.module,
            dataset_size=len(train),
            draw=lambda indices, generator: self.draw(encoded, indices.tolist(), generator),
            loss=self.loss,
            learning_rate=config.learning_rate,
            weight_decay=1e-2,
            warmup_steps=max(1, config.steps // 20),
            clip_grad_norm=1.0,
            ema_decay=config.ema_decay,
            validate=self.validation(held_out) if held_out is not None else None,
            on_checkpoint=on_checkpoint,
            progress_label="training LoRA",
        )

    def sample_grid(self, out_dir: Path, rows: list[tuple[str, str]], autocast: Any) -> Callable[[int], None]:
        """A checkpoint hook: the rows' prompts at fixed seeds with the current adapters -> samples/step-N.png."""
        from synthgen.training.report import SAMPLES_DIR, write_sample_grid

        def write(step: int) -> None:
            prompts = [prompt for _, prompt in rows for _ in GRID_SEEDS]
            generators = [torch.Generator().manual_seed(seed) for _ in rows for seed in GRID_SEEDS]
            with torch.autocast(self.device.type, dtype=autocast, enabled=autocast is not None):
                images = self.pipeline(
                    prompts, height=self.resolution, width=self.resolution, num_inference_steps=GRID_STEPS,
                    generator=generators,
                ).images  # fmt: skip
            size = len(GRID_SEEDS)
            grid = [(label, images[i * size : (i + 1) * size]) for i, (label, _) in enumerate(rows)]
            write_sample_grid(out_dir / SAMPLES_DIR / f"step-{step}.png", grid)

        return write

    def save_lora(self, folder: Path) -> None:
        """The adapters in the diffusers LoRA format, with their peft config (rank, alpha) as metadata."""
        import diffusers
        from diffusers.utils import convert_state_dict_to_diffusers

        layers = convert_state_dict_to_diffusers(self.module.state_dict())
        metadata = self.unet.peft_config["default"].to_dict()
        getattr(diffusers, self.kind).save_lora_weights(
            save_directory=folder, unet_lora_layers=layers, safe_serialization=True, unet_lora_adapter_metadata=metadata
        )


def merged_pipeline(base: Path, lora_dir: Path) -> Any:
    """The base pipeline with the saved LoRA fused into its UNet and peft removed: plain diffusers weights."""
    from diffusers import DiffusionPipeline

    from synthgen.generate import _dtype_kwarg

    pipeline = DiffusionPipeline.from_pretrained(base, **_dtype_kwarg(torch.float32), local_files_only=True)
    pipeline.load_lora_weights(lora_dir)
    pipeline.fuse_lora(components=["unet"])
    pipeline.unload_lora_weights()
    return pipeline


def _grid_rows(data: TrainingData, prompts: dict[str, list[str]] | None) -> list[tuple[str, str]]:
    """The recipe's first prompt per class, else the first caption of each label."""
    if prompts:
        return [(label, texts[0]) for label, texts in prompts.items() if texts][:GRID_ROWS]
    first: dict[str, str] = {}
    for caption, label in zip(data.captions, data.labels, strict=True):
        first.setdefault(label, caption)
    return sorted(first.items())[:GRID_ROWS]


def train_lora(
    recipe: LoadedRecipe | LoRAConfig,
    source: Source | None,
    out_dir: Path,
    progress: Progress | None = None,
    device: str = "auto",
    *,
    base: Path | None = None,
    base_id: str | None = None,
    base_sha256: str | None = None,
    overwrite: bool = False,
    prompts: dict[str, list[str]] | None = None,
) -> Path:
    """Fine-tune `model.pretrained` with `model.lora` on `source` into `out_dir` (resumes a stopped run there).

    With a `LoadedRecipe`, the base and the data come from the recipe (source may be None); with a bare
    `LoRAConfig`, pass `base` (a pipeline folder) and `source`. `base_sha256` saves hashing the base twice.
    """
    from synthgen.generate import pick_device
    from synthgen.models import quiet_libraries
    from synthgen.provenance import sha256_tree
    from synthgen.sources import open_source
    from synthgen.training.card import library_versions, write_model_info
    from synthgen.training.checkpoints import CheckpointStore, seed_everything
    from synthgen.training.data import drop_cache, load_training_data, split_indices
    from synthgen.training.folder import TrainingFolder
    from synthgen.training.loop import LoopSettings, resolve_precision, run_phase
    from synthgen.training.report import LOG_FILE, PLOT_FILE, TrainingLog, plot_log

    if isinstance(recipe, LoadedRecipe):
        _refuse_privacy(recipe)
        config = recipe.recipe.model.lora
        if config is None:
            raise SynthgenError("model.lora: this recipe has no LoRA fine-tuning to run")
        if base is None:
            from synthgen.models.resolve import pretrained_path

            base = pretrained_path(recipe)
        base_id = base_id or recipe.recipe.model.pretrained
        source = source or open_source(config.data, recipe.base_dir)
        if prompts is None:  # the grids show what the build will ask for: each class's first prompt
            from synthgen.plan import expand_prompts

            prompts = {label: [expand_prompts(c)[0][0]] for label, c in recipe.recipe.classes.items()}
    else:
        config = recipe
    if base is None or source is None:
        raise SynthgenError("train_lora: a LoRAConfig needs `base` (pipeline folder) and `source`")
    quiet_libraries()
    target = pick_device(device)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    started = time.time()
    base, fingerprint = Path(base), source.fingerprint()
    base_sha256 = base_sha256 or sha256_tree(base)
    folder = TrainingFolder(Path(out_dir))
    settings_record = {
        "training": config.model_dump(mode="json", exclude={"data", "checkpoint_every", "steps"}),
        "data_sha256": fingerprint,
        "base_sha256": base_sha256,
        "format": SETTINGS_FORMAT,
    }
    folder.claim(settings_record, overwrite)
    store = CheckpointStore(folder.work)
    log = TrainingLog(folder.path / LOG_FILE, (PHASE,))
    point = store.latest(PHASE)
    log.truncate_after(PHASE if point else None, point.step if point else 0)
    log.event("resume", PHASE, point.step) if point else log.event("start", None, 0, device=target.type)

    autocast, scaler = resolve_precision(config.mixed_precision, target)
    seed_everything(derive_seed(config.seed, "build", PHASE))
    model = LoRAModel(base, config, target, frozen_dtype=autocast)
    data = load_training_data(source, model.resolution, folder.work / "data")
    train_idx, val_idx = split_indices(len(data), config.validation_split, config.seed)
    train, val = data.subset(train_idx), data.subset(val_idx)
    loop = LoopSettings(config.batch_size, config.micro_batch_size(), config.checkpoint_every, config.seed, target)
    loop.autocast_dtype, loop.grad_scaler = autocast, scaler
    grid = model.sample_grid(folder.path, _grid_rows(data, prompts), autocast)
    hook = lambda step: (grid(step), plot_log(log, folder.path / PLOT_FILE))  # noqa: E731
    result = run_phase(model.phase(train, val, hook), loop, store, log, progress)

    staging = folder.staging()
    model.save_lora(staging / LORA_DIR)
    del model
    merged_pipeline(base, staging / LORA_DIR).save_pretrained(staging, safe_serialization=True)
    losses = {r["step"]: r.get("loss") for r in log.steps(PHASE)}
    validation = {r["step"]: r["val_loss"] for r in log.steps(PHASE) if r.get("val_loss") is not None}
    write_model_info(
        staging,
        {
            "architecture": "lora",
            "base_model": {"id": base_id or str(base), "sha256": base_sha256, "pipeline": pipeline_class(base)},
            "training": config.model_dump(mode="json", exclude={"data"}),
            "resolution": data.images.shape[-1],
            "training_data": dict(
                description=source.description,
                sha256=fingerprint,
                images=len(train),
                validation_images=len(val),
                skipped=data.skipped,
                labels=train.label_counts(),
            ),  # fmt: skip
            "recipe_sha256": recipe.sha256 if isinstance(recipe, LoadedRecipe) else None,
            "losses": {"train": [losses[s] for s in sorted(losses)], "validation": validation},
            "final_loss": result.loss,
            "validation_loss": result.val_loss,
            "dp": None,
            "seconds": round(time.time() - started, 1),
            "versions": library_versions(),
        },
    )
    folder.install(staging)
    plot_log(log, folder.path / PLOT_FILE)
    drop_cache(folder.work / "data")
    log.event("done", PHASE, config.steps, seconds=round(time.time() - started, 1))
    return folder.path
