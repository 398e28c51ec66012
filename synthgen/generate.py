"""Batched classifier-free-guidance sampling of plan jobs with any diffusers text-to-image pipeline.

Each sample's initial noise comes from its own CPU generator seeded with the job's seed, so an image depends
only on (model, prompt, seed, sampler settings), not on batch size, batch neighbours or the device type.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from synthgen import __version__
from synthgen.errors import SynthgenError
from synthgen.generation.batching import auto_batch_size, numerics_record
from synthgen.generation.prompts import PromptEmbeddings, caches_prompts
from synthgen.generation.streams import Streams, WaitClock, Work, plan_streams, stop_callback, stream_copy
from synthgen.models.loading import LoadedModel
from synthgen.plan import Job, derive_seed
from synthgen.recipe import SamplingConfig
from synthgen.runtime import finishing_threads, ray_cpus, use_cpu_threads
from synthgen.sample import Sample

# Jobs to sample together, and what takes their samples (in job order) and may return a follow-up group.
Group = tuple[list[Job], Callable[[list[Sample]], "Group | None"]]

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


def _spare_cpu(device: Any, used: int) -> bool:
    """Whether a finishing thread would get hardware of its own: on CUDA, or a CPU beyond the `used` threads."""
    if getattr(device, "type", str(device)) == "cuda":
        return True
    given = ray_cpus()  # a Ray worker's allocation, else the affinity mask (a scheduler's or container's share)
    if given is None:
        given = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return given > used


class Generator:
    """Turns jobs into samples with provenance; one instance per (model, sampling settings).

    Speed without new numerics (docs/performance.md): each unique prompt is encoded once (SD-style pipelines);
    `streams` denoising threads (`sampling.streams`) sample their own batches while the calling thread decodes
    finished ones, makes their PIL images and runs the caller's `finish` step on them, in job order. With one
    stream, `overlap` None puts it on a thread of its own when a CPU is free beside it, or on CUDA.
    `wait` sums how long the denoiser waited on that finishing work over every `generate` call.
    """

    def __init__(
        self,
        model: LoadedModel,
        sampling: SamplingConfig,
        provenance: dict[str, Any],
        *,
        overlap: bool | None = None,
        prompt_cache: bool = True,
    ):
        cpu_threads = use_cpu_threads()
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
        sd_style = caches_prompts(pipeline, self._accepts)
        self.prompts = (
            PromptEmbeddings(pipeline, sampling.negative_prompt, sampling.guidance_scale > 1)
            if sd_style and prompt_cache
            else None
        )
        self._split_decode = sd_style  # latents from the pipeline, decoded where the batch is finished
        size = sampling.batch_size
        self.batch_size = auto_batch_size(pipeline, self.resolution, pipeline.device) if size == "auto" else size
        device = pipeline.device
        self.streams, self.threads = plan_streams(
            sampling.streams, pipeline, device, cpu_threads, self.batch_size, self.resolution, sd_style
        )
        used = self.streams * self.threads
        self.overlap = self.streams > 1 or (_spare_cpu(device, used) if overlap is None else overlap)
        self._pipelines = [pipeline] + [stream_copy(pipeline) for _ in range(self.streams - 1)]
        self.wait = WaitClock()

    def _call_kwargs(self, jobs: list[Job], stop: threading.Event | None = None) -> dict[str, Any]:
        import torch

        kwargs: dict[str, Any] = {
            "prompt": [job.prompt for job in jobs],
            "num_inference_steps": self.sampling.steps,
            "guidance_scale": self.sampling.guidance_scale,
            "generator": [torch.Generator("cpu").manual_seed(job.seed) for job in jobs],
            "height": self.resolution,
            "width": self.resolution,
            "output_type": "latent" if self._split_decode else "pil",
            # Two-stage (Kandinsky): the prior that maps text to an image embedding gets the same settings.
            "prior_num_inference_steps": self.sampling.steps,
            "prior_guidance_scale": self.sampling.guidance_scale,
        }
        if stop is not None and self.streams > 1:  # a failing stream stops the others at their next step
            kwargs["callback_on_step_end"] = stop_callback(stop)
        if self.sampling.negative_prompt:
            kwargs["negative_prompt"] = [self.sampling.negative_prompt] * len(jobs)
        if self.prompts is not None:
            del kwargs["prompt"]
            kwargs.pop("negative_prompt", None)
            kwargs.update(self.prompts.call_kwargs([job.prompt for job in jobs]))
        return {k: v for k, v in kwargs.items() if k in self._accepts}

    def generate(
        self,
        jobs: list[Job],
        progress: Callable[[int, int], None] | None = None,
        finish: Callable[[list[Sample]], None] | None = None,
        clock: WaitClock | None = None,
    ) -> list[Sample]:
        """Sample `jobs` in batches of `batch_size`; returns samples in job order.

        `progress(done, total)` is called after each finished batch. `finish(samples)` runs on each batch as soon
        as its images exist, on the calling thread, in job order (a build encodes and audits there), while the
        streams sample the next batches. `clock` (and `self.wait`) gets how long the denoiser waited on that.
        """
        made: list[Sample] = []
        self.generate_groups(iter([(jobs, made.extend)]), [job.prompt for job in jobs], progress, finish, clock)
        return made

    def generate_groups(
        self,
        groups: Iterator[Group],
        prompts: list[str],
        progress: Callable[[int, int], None] | None = None,
        finish: Callable[[list[Sample]], None] | None = None,
        clock: WaitClock | None = None,
    ) -> None:
        """Sample group after group (a build: shard after shard) with one set of streams, so no stream idles at
        a group's end while its last batches are finished.

        Each group's jobs are cut into batches of `batch_size` (the same batches as `generate(jobs)`: the same
        bytes). `finish` and `progress` as in `generate`; a group's `done(samples)` runs on the calling thread
        after its last batch, with its samples in job order, and may return a follow-up group (a shard's
        retries), which is sampled next, ahead of the groups still to come. `groups` is read lazily, a group at
        a time when the streams run out of work; `prompts`: every prompt any group may use (encoded up front).
        """
        import torch

        def work(jobs: list[Job], done: Callable[[list[Sample]], Group | None]) -> list[Work]:
            batches = [jobs[start : start + self.batch_size] for start in range(0, len(jobs), self.batch_size)]
            samples: list[Sample] = []

            def finished(batch: list[Job], images: Callable[[], list[Any]]) -> list[Work] | None:
                samples.extend(self._finish(batch, images, finish))
                if progress:
                    progress(len(samples), len(jobs))
                if len(samples) < len(jobs):
                    return None
                follow = done(samples)
                return work(*follow) if follow is not None and follow[0] else None

            return [(functools.partial(self._denoise, batch), functools.partial(finished, batch)) for batch in batches]

        def feed() -> list[Work]:
            for jobs, done in groups:
                if jobs:
                    return work(jobs, done)
                done([])
            return []

        # Everything here (prompt encoding, decoding, the caller's finish: the audit) runs with a stream's threads:
        # the same numerics whatever the number of streams, and no thread pool fanning out over the streams' cores.
        with finishing_threads(self.threads), torch.inference_mode():
            if self.prompts is not None:
                self.prompts.warm(prompts)  # streams only read the cached rows
            waited, total = Streams(self.streams, self.threads, self.overlap).run_feed(feed)
        for record in (self.wait, clock):
            if record is not None:
                record.add(waited, total, self.streams, self.threads)

    def _denoise(self, jobs: list[Job], stream: int = 0, stop: threading.Event | None = None) -> Callable[[], Any]:
        """Run the sampler on `jobs` with stream `stream`'s pipeline; returns what makes their PIL images
        (decoding latents, for SD-style)."""
        kwargs = self._call_kwargs(jobs, stop)
        pipeline = self._pipelines[stream]
        if "negative_prompt" in kwargs and hasattr(pipeline, "prior_pipe"):
            images = self._prior_then_decoder(jobs, kwargs)
        else:
            images = pipeline(**kwargs).images
        if self._split_decode:
            return functools.partial(self._decode, images, kwargs["generator"])
        return lambda: images

    def _decode(self, latents: Any, generators: list[Any]) -> list[Any]:
        """StableDiffusionPipeline's own last steps (VAE decode, no safety checker, postprocess to PIL)."""
        pipe = self.model.pipeline
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generators)[0]
        return pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[True] * image.shape[0])

    def _finish(self, jobs: list[Job], images: Callable[[], list[Any]], finish) -> list[Sample]:
        made = images()
        numerics = numerics_record(self.model.pipeline, len(jobs), self.prompts is not None, self.threads)
        samples = [self._sample(job, image, numerics) for job, image in zip(jobs, made, strict=True)]
        if finish is not None:
            finish(samples)
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

    def _sample(self, job: Job, image, numerics: str | None = None) -> Sample:
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
            "sampling_numerics": numerics,
        }
        image = image.convert(self.mode)  # diffusers returns "L" for a one-channel VAE; the rest stays RGB
        return Sample(key=job.key, image=image, text=job.prompt, label=job.label, metadata=metadata)
