"""The LoRA model: a pretrained Stable Diffusion 1.x/2.x or SDXL pipeline whose UNet carries trainable peft adapters.

Only the low-rank adapters train; the VAE, the text encoder(s) and the UNet's own weights stay frozen (in half
precision on a GPU). `LoRAModel.phase` is what the generic loop (`loop.run_phase`) trains: batches drawn from
latents encoded once, the scheduler's target (epsilon, v or sample), checkpoints of the adapters only.
`save_lora` writes the adapters in the diffusers LoRA format; `merged_pipeline` fuses them into the base UNet.
The run around it (folder, log, model info) is `lora_run`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synthgen.errors import SynthgenError
from synthgen.models.safe_weights import check_pipeline_folder, safe_kwargs
from synthgen.plan import derive_seed
from synthgen.recipe import LoRAConfig
from synthgen.runtime import dtype_kwarg, first_line
from synthgen.training.data import TrainingData
from synthgen.training.loop import Phase
from synthgen.training.training_log import SAMPLES_DIR, write_sample_grid

SUPPORTED = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
PHASE = "lora"
GRID_SEEDS, GRID_STEPS = (0, 1, 2, 3), 20
ENCODE_CHUNK = 16


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

    def __init__(
        self, base: Path, config: LoRAConfig, device: Any, frozen_dtype: Any = None, allow_pickle: bool = False
    ) -> None:
        from diffusers import DDPMScheduler, DiffusionPipeline
        from peft import LoraConfig

        self.kind = pipeline_class(base)
        self.config, self.device = config, device
        extra = {"safety_checker": None} if self.kind == "StableDiffusionPipeline" else {}
        check_pipeline_folder(base, "model.pretrained", allow_pickle)
        self.pipeline = DiffusionPipeline.from_pretrained(
            base, **dtype_kwarg(torch.float32), local_files_only=True, **extra, **safe_kwargs(allow_pickle)
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
            raise SynthgenError(f"model.lora.target_modules: {first_line(error)}") from None
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


def merged_pipeline(base: Path, lora_dir: Path, allow_pickle: bool = False) -> Any:
    """The base pipeline with the saved LoRA fused into its UNet and peft removed: plain diffusers weights."""
    from diffusers import DiffusionPipeline

    check_pipeline_folder(base, "model.pretrained", allow_pickle)
    pipeline = DiffusionPipeline.from_pretrained(
        base, **dtype_kwarg(torch.float32), local_files_only=True, **safe_kwargs(allow_pickle)
    )
    pipeline.load_lora_weights(lora_dir, use_safetensors=True)  # synthgen wrote it: always safetensors
    pipeline.fuse_lora(components=["unet"])
    pipeline.unload_lora_weights()
    return pipeline
