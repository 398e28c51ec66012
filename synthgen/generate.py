"""Batched classifier-free-guidance sampling of plan jobs with any diffusers text-to-image pipeline.

Each sample's initial noise comes from its own CPU generator seeded with the job's seed, so an image depends
only on (model, prompt, seed, sampler settings), not on batch size, batch neighbours or the device type.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen import __version__
from synthgen.errors import SynthgenError
from synthgen.plan import Job, derive_seed
from synthgen.recipe import SamplingConfig
from synthgen.sample import Sample

SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "dpm-solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
}


def pick_device(requested: str = "auto"):
    """`auto` prefers CUDA, then Apple MPS, then CPU; an explicit device that is missing is an error."""
    import torch

    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "cpu": True,
    }
    if requested == "auto":
        requested = next(name for name in ("cuda", "mps", "cpu") if available[name])
    if not available[requested]:
        raise SynthgenError(f"sampling.device: '{requested}' is not available on this machine")
    return torch.device(requested)


def pick_dtype(device):
    """Half precision on accelerators (bf16 where supported: no fp16 VAE overflow), fp32 on CPU."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


@dataclass
class LoadedModel:
    """A pipeline ready to sample, plus what provenance needs to know about it."""

    pipeline: Any
    model_id: str
    model_sha256: str
    path: Path
    info: dict[str, Any]

    @property
    def dp(self) -> dict[str, Any] | None:
        """The privacy record of a DP-trained model (`privacy.json` beside the weights), if any."""
        return self.info.get("dp")

    @property
    def default_resolution(self) -> int:
        """The side the pipeline makes by default: its own `height` default, else sample size x VAE scale factor."""
        pipe = self.pipeline
        height = inspect.signature(pipe.__call__).parameters.get("height")
        if height is not None and isinstance(height.default, int):  # Kandinsky: fixed 512 default
            return height.default
        sample_size = getattr(pipe, "default_sample_size", None)
        denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
        if not isinstance(sample_size, int) and denoiser is not None:
            sample_size = getattr(denoiser.config, "sample_size", None)
        scale = getattr(pipe, "vae_scale_factor", None)
        if isinstance(sample_size, int) and isinstance(scale, int):
            return sample_size * scale
        return 512


def _dtype_kwarg(dtype) -> dict[str, Any]:
    """diffusers renamed `torch_dtype` to `dtype` (2026, PR 14205); pass whichever this version understands."""
    from diffusers.utils import deprecation_utils

    renamed = hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
    return {"dtype" if renamed else "torch_dtype": dtype}


def load_model(path: Path, model_id: str, model_sha256: str, device) -> LoadedModel:
    """Load a diffusers pipeline folder with every component in eval mode on `device`."""
    from diffusers import DiffusionPipeline

    from synthgen.models import quiet_libraries

    quiet_libraries()
    dtype = pick_dtype(device)
    try:
        pipeline = DiffusionPipeline.from_pretrained(path, **_dtype_kwarg(dtype), local_files_only=True)
    except (OSError, ValueError, ImportError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SynthgenError(f"model {model_id}: cannot load diffusers pipeline from {path}: {first}") from None
    pipeline = pipeline.to(device)
    for component in pipeline.components.values():
        if hasattr(component, "eval"):
            component.eval()
    if hasattr(pipeline, "safety_checker") and getattr(pipeline, "safety_checker", None) is not None:
        pipeline.safety_checker = None  # medical images trip NSFW filters; outputs are audited instead
    pipeline.set_progress_bar_config(disable=True)
    if "prompt" not in inspect.signature(pipeline.__call__).parameters:
        raise SynthgenError(
            f"model {model_id}: {type(pipeline).__name__} does not take a text prompt (a decoder or prior alone?); "
            "save the text-to-image pipeline, e.g. AutoPipelineForText2Image.from_pretrained(...).save_pretrained()"
        )
    return LoadedModel(pipeline, model_id, model_sha256, Path(path), read_model_info(path))


def read_model_info(path: Path) -> dict[str, Any]:
    """synthgen's notes beside the weights: training provenance and, for DP models, the privacy record."""
    info: dict[str, Any] = {}
    if (Path(path) / "synthgen_model.json").exists():
        info = json.loads((Path(path) / "synthgen_model.json").read_text())
    if (Path(path) / "privacy.json").exists():
        info["dp"] = json.loads((Path(path) / "privacy.json").read_text())
    return info


def is_flow_matching(pipeline) -> bool:
    """FLUX / SD3-style models integrate a velocity field; DDPM-family samplers do not apply to them."""
    return type(pipeline.scheduler).__name__.startswith("FlowMatch")


def _allowed_schedulers(pipeline) -> tuple[str, ...]:
    if is_flow_matching(pipeline):
        return ("euler",)  # the flow-matching Euler sampler; FLUX passes custom sigmas that others refuse
    if hasattr(pipeline, "decoder_pipe") or "movq" in pipeline.components:
        return ("ddim", "ddpm", "dpm-solver++")  # Kandinsky's decoder never calls scale_model_input (Euler needs it)
    return tuple(SCHEDULERS)


def set_scheduler(pipeline, name: str, explicit: bool = True) -> str:
    """Install sampler `name` (built from the pipeline's own scheduler config); returns the name used.

    A flow-matching pipeline keeps its own flow-matching Euler sampler when the recipe did not choose one
    (`explicit` False), since the recipe default `ddim` is a noise-prediction sampler.
    """
    import diffusers

    allowed = _allowed_schedulers(pipeline)
    if name not in allowed and not explicit:
        name = allowed[0]
    if name not in allowed:
        kind = "a flow-matching model" if is_flow_matching(pipeline) else "this pipeline"
        raise SynthgenError(
            f"sampling.scheduler: '{name}' does not work with {type(pipeline).__name__} ({kind}); "
            f"use {' or '.join(allowed)}"
        )
    config = dict(pipeline.scheduler.config)
    if is_flow_matching(pipeline):
        scheduler = type(pipeline.scheduler).from_config(config)
    else:
        class_name, extra = SCHEDULERS[name]
        config["steps_offset"] = 1
        scheduler = getattr(diffusers, class_name).from_config(config, **extra)
    pipeline.scheduler = scheduler
    if hasattr(pipeline, "decoder_pipe"):  # combined (prior + decoder) pipelines call their decoder's scheduler
        pipeline.decoder_pipe.scheduler = scheduler
    return name


def size_multiple(pipeline) -> int:
    """The side every output must be a multiple of: FLUX packs 2x2 latents, Kandinsky's MoVQ rounds to sf^2."""
    decoder = getattr(pipeline, "decoder_pipe", pipeline)
    if hasattr(decoder, "movq_scale_factor"):
        return decoder.movq_scale_factor**2
    scale = getattr(pipeline, "vae_scale_factor", 8)
    return scale * 2 if getattr(pipeline, "transformer", None) is not None and is_flow_matching(pipeline) else scale


class Generator:
    """Turns jobs into samples with provenance; one instance per (model, sampling settings)."""

    def __init__(self, model: LoadedModel, sampling: SamplingConfig, provenance: dict[str, Any]):
        import torch

        torch.set_num_threads(max(1, os.cpu_count() or 1))
        self.model = model
        self.sampling = sampling
        self.resolution = sampling.resolution or model.default_resolution
        self.provenance = provenance
        pipeline = model.pipeline
        self._accepts = set(inspect.signature(pipeline.__call__).parameters)
        explicit = "scheduler" in sampling.model_fields_set
        self.scheduler = set_scheduler(pipeline, sampling.scheduler, explicit)
        multiple = size_multiple(pipeline)
        if self.resolution % multiple:
            raise SynthgenError(
                f"sampling.resolution: {type(pipeline).__name__} makes sides that are multiples of {multiple}; "
                f"{self.resolution} is not"
            )
        if sampling.negative_prompt and "true_cfg_scale" in self._accepts:
            raise SynthgenError(
                f"sampling.negative_prompt: {type(pipeline).__name__} is guidance-distilled (guidance_scale is an "
                "input of the model, there is no unconditional pass to steer away from); remove the negative prompt"
            )
        if sampling.negative_prompt and "negative_prompt" not in self._accepts:
            raise SynthgenError(f"sampling.negative_prompt: {type(pipeline).__name__} takes no negative prompt")

    def _call_kwargs(self, jobs: list[Job]) -> dict[str, Any]:
        import torch

        kwargs: dict[str, Any] = {
            "prompt": [job.prompt for job in jobs],
            "num_inference_steps": self.sampling.steps,
            "guidance_scale": self.sampling.guidance_scale,
            "generator": [torch.Generator("cpu").manual_seed(job.seed) for job in jobs],
            "height": self.resolution,
            "width": self.resolution,
            "output_type": "pil",
            # Two-stage (Kandinsky): the prior that maps text to an image embedding gets the same settings.
            "prior_num_inference_steps": self.sampling.steps,
            "prior_guidance_scale": self.sampling.guidance_scale,
        }
        if self.sampling.negative_prompt:
            kwargs["negative_prompt"] = [self.sampling.negative_prompt] * len(jobs)
        return {k: v for k, v in kwargs.items() if k in self._accepts}

    def generate(self, jobs: list[Job], progress: Callable[[int, int], None] | None = None) -> list[Sample]:
        """Sample `jobs` in batches of `sampling.batch_size`; returns samples in job order.

        `progress(done, total)` is called after each batch.
        """
        import torch

        samples: list[Sample] = []
        size = self.sampling.batch_size
        for start in range(0, len(jobs), size):
            batch = jobs[start : start + size]
            kwargs = self._call_kwargs(batch)
            with torch.inference_mode():
                if "negative_prompt" in kwargs and hasattr(self.model.pipeline, "prior_pipe"):
                    images = self._prior_then_decoder(batch, kwargs)
                else:
                    images = self.model.pipeline(**kwargs).images
            samples.extend(self._sample(job, image) for job, image in zip(batch, images, strict=True))
            if progress:
                progress(len(samples), len(jobs))
        return samples

    def _prior_then_decoder(self, jobs: list[Job], kwargs: dict[str, Any]) -> list[Any]:
        """Kandinsky with a negative prompt: its prior runs prompts and negatives as one doubled batch, so it
        needs a generator per negative too (seeded from the job) while the decoder keeps one per image."""
        import torch

        pipeline, generators = self.model.pipeline, kwargs["generator"]
        negatives = [torch.Generator("cpu").manual_seed(derive_seed(job.seed, "negative")) for job in jobs]
        image_embeds, negative_embeds = pipeline.prior_pipe(
            prompt=kwargs["prompt"],
            negative_prompt=kwargs["negative_prompt"],
            num_inference_steps=kwargs["prior_num_inference_steps"],
            guidance_scale=kwargs["prior_guidance_scale"],
            generator=generators + negatives,
            output_type="pt",
            return_dict=False,
        )
        return pipeline.decoder_pipe(
            image_embeds=image_embeds,
            negative_image_embeds=negative_embeds,
            height=self.resolution,
            width=self.resolution,
            num_inference_steps=self.sampling.steps,
            guidance_scale=self.sampling.guidance_scale,
            generator=generators,
            output_type="pil",
        ).images

    def _sample(self, job: Job, image) -> Sample:
        metadata = {
            **self.provenance,
            "label": job.label,
            "prompt": job.prompt,
            "seed": job.seed,
            "scheduler": self.scheduler,
            "steps": self.sampling.steps,
            "guidance_scale": self.sampling.guidance_scale,
            "width": image.width,
            "height": image.height,
            "audit_attempt": job.attempt,
            "synthgen_version": __version__,
        }
        return Sample(key=job.key, image=image.convert("RGB"), text=job.prompt, label=job.label, metadata=metadata)
