"""Batched classifier-free-guidance sampling of plan jobs with any diffusers text-to-image pipeline.

Each sample's initial noise comes from its own CPU generator seeded with the job's seed, so an image depends
only on (model, prompt, seed, sampler settings), not on batch size, batch neighbours or the device type.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from synthgen import __version__
from synthgen.errors import SynthgenError
from synthgen.models.loading import LoadedModel
from synthgen.plan import Job, derive_seed
from synthgen.recipe import SamplingConfig
from synthgen.runtime import use_cpu_threads
from synthgen.sample import Sample

SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "dpm-solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
}


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


def image_mode(pipeline) -> str:
    """PIL mode of the samples: "L" when the pipeline's VAE decodes one channel (a grayscale MSDM), else "RGB"."""
    config = getattr(getattr(pipeline, "vae", None), "config", None)
    return "L" if getattr(config, "out_channels", 3) == 1 else "RGB"


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
        use_cpu_threads()
        self.model = model
        self.sampling = sampling
        self.resolution = sampling.resolution or model.default_resolution
        self.provenance = provenance
        pipeline = model.pipeline
        self._accepts = set(inspect.signature(pipeline.__call__).parameters)
        self.mode = image_mode(pipeline)
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
        image = image.convert(self.mode)  # diffusers returns "L" for a one-channel VAE; the rest stays RGB
        return Sample(key=job.key, image=image, text=job.prompt, label=job.label, metadata=metadata)
