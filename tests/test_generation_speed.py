"""Generation speed levers change no bytes: the prompt-embedding cache, decoding on a finishing thread, the
pre-encoded PNGs, and `batch_size: auto` (deterministic, recorded per sample). No timings here: bench/.

Every test builds tiny pipelines in-process (an SD 1.5 layout with CLIP, and an untrained MSDM with its BERT).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pipeline_factories import sd_pipeline

from synthgen.models.loading import LoadedModel
from synthgen.plan import Job
from synthgen.recipe import SamplingConfig

PROMPTS = ["colonoscopy polyp", "colonoscopy ulcer", "normal mucosa"]


@pytest.fixture(scope="module", params=["sd", "msdm"])
def model(request: pytest.FixtureRequest) -> LoadedModel:
    import torch

    torch.manual_seed(0)
    if request.param == "sd":
        pipeline = sd_pipeline()
    else:
        from synthgen.models import msdm

        spec = msdm.PRESETS["tiny"]
        tokenizer = msdm.train_tokenizer(PROMPTS, spec)
        vae = msdm.build_vae(spec, 32)
        text = msdm.build_text_encoder(spec, len(tokenizer))
        unet = msdm.build_unet(spec, 32, vae=vae, cross_attention_dim=spec.text_hidden)
        pipeline = msdm.assemble_pipeline(vae, text, tokenizer, unet)
    pipeline.set_progress_bar_config(disable=True)
    return LoadedModel(pipeline, request.param, "0" * 64, Path("."), {})


def jobs(n: int = 5) -> list[Job]:
    return [Job(f"k-{i}", "polyp", PROMPTS[i % len(PROMPTS)], 1000 + i) for i in range(n)]


def sampling(**extra) -> SamplingConfig:
    return SamplingConfig(**{"steps": 2, "resolution": 32, "batch_size": 5, **extra})


def generate(model: LoadedModel, config: SamplingConfig, provenance: dict | None = None, **options) -> list:
    from synthgen.generate import Generator

    return Generator(model, config, provenance or {}, **options).generate(jobs())


def pixels(samples) -> list[np.ndarray]:
    return [np.asarray(s.image) for s in samples]


def stock_images(model: LoadedModel, config: SamplingConfig) -> list[np.ndarray]:
    """What the Generator made before the levers: one plain pipeline call with prompts and PIL output."""
    import torch

    from synthgen.generate import Generator

    Generator(model, config, {})  # installs the recipe's sampler, as before
    batch = jobs()
    kwargs = {"negative_prompt": [config.negative_prompt] * len(batch)} if config.negative_prompt else {}
    with torch.inference_mode():
        images = model.pipeline(
            prompt=[job.prompt for job in batch],
            num_inference_steps=config.steps,
            guidance_scale=config.guidance_scale,
            generator=[torch.Generator("cpu").manual_seed(job.seed) for job in batch],
            height=config.resolution,
            width=config.resolution,
            output_type="pil",
            **kwargs,
        ).images
    return [np.asarray(image.convert("RGB")) for image in images]


@pytest.mark.parametrize("negative", ["", "blurry"])
def test_prompt_cache_and_split_decode_give_the_stock_bytes(model: LoadedModel, negative: str) -> None:
    config = sampling(negative_prompt=negative, streams=1)  # the stock call runs with every thread, as one stream does
    cached = pixels(generate(model, config, overlap=False))
    uncached = pixels(generate(model, config, overlap=False, prompt_cache=False))
    stock = stock_images(model, config)
    for a, b, c in zip(cached, uncached, stock, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_prompts_are_encoded_once_per_generator(model: LoadedModel) -> None:
    from synthgen.generate import Generator

    generator = Generator(model, sampling(batch_size=2), {}, overlap=False)
    calls: list[list[str]] = []
    encode = model.pipeline.encode_prompt

    def counting(prompt, *args, **kwargs):  # the pipeline's own call passes the embeddings through (prompt None)
        if prompt is not None:
            calls.append(list(prompt))
        return encode(prompt, *args, **kwargs)

    model.pipeline.encode_prompt = counting
    try:
        generator.generate(jobs(6))
    finally:
        del model.pipeline.encode_prompt
    assert sorted(text for call in calls for text in call) == sorted([*PROMPTS, ""])  # "" is the unconditional


def test_overlap_gives_the_sequential_bytes(model: LoadedModel) -> None:
    from synthgen.generate import Generator
    from synthgen.output.writers import encode_image, encoded_bytes, pre_encode

    config = sampling(batch_size=2)
    runs = {}
    for overlap in (False, True):
        finished: list[str] = []

        def finish(samples, finished=finished) -> None:
            for sample in samples:
                pre_encode(sample, "png")
                finished.append(sample.key)

        runs[overlap] = Generator(model, config, {}, overlap=overlap).generate(jobs(), finish=finish)
        assert finished == [job.key for job in jobs()]  # every batch finished once, in job order
    for a, b in zip(runs[False], runs[True], strict=True):
        assert a.key == b.key and a.metadata == b.metadata
        assert encoded_bytes(a, "png") == encoded_bytes(b, "png") == encode_image(b.image, "png")


def test_provenance_records_the_numerics(model: LoadedModel) -> None:
    from synthgen.output.writers import sample_provenance

    made_by = {"recipe_name": "r", "recipe_sha256": "0" * 64, "model_id": "m", "model_sha256": "0" * 64}
    samples = generate(model, sampling(batch_size=3), made_by, overlap=False)
    records = [json.loads(s.metadata["sampling_numerics"]) for s in samples]
    assert [r["batch"] for r in records] == [3, 3, 3, 2, 2]  # the batch each sample was sampled in
    assert {r["device"] for r in records} == {"cpu"} and {r["dtype"] for r in records} == {"float32"}
    assert {r["prompt_cache"] for r in records} == {True}
    assert {"attention", "torch", "diffusers"} <= set(records[0])
    assert sample_provenance(samples[0])["sampling_numerics"] == samples[0].metadata["sampling_numerics"]


def test_auto_batch_size_is_deterministic(model: LoadedModel) -> None:
    import torch

    from synthgen.generate import Generator
    from synthgen.generation.batching import auto_batch_size

    cpu = torch.device("cpu")
    pipeline = model.pipeline
    assert auto_batch_size(pipeline, 32, cpu) == auto_batch_size(pipeline, 32, cpu)
    assert auto_batch_size(pipeline, 512, cpu) < auto_batch_size(pipeline, 64, cpu)
    assert auto_batch_size(pipeline, 4096, cpu) >= 1 and auto_batch_size(pipeline, 8, cpu) <= 128
    assert SamplingConfig().batch_size == "auto"
    generator = Generator(model, sampling(batch_size="auto"), {}, overlap=False)
    assert generator.batch_size == auto_batch_size(pipeline, 32, cpu)
    first, again = (pixels(generator.generate(jobs())) for _ in range(2))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_pipelines_without_embeddings_keep_prompts() -> None:
    from synthgen.generation.prompts import caches_prompts

    class NotSD:
        def __call__(self, prompt, prompt_embeds=None, negative_prompt_embeds=None): ...

    assert not caches_prompts(NotSD(), {"prompt", "prompt_embeds", "negative_prompt_embeds"})
