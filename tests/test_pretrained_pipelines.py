"""`model.pretrained` with each pipeline family (tiny in-process SD 1.5, SD 2.1-v, SDXL, FLUX, Kandinsky 2.2).

Every family builds end to end through `synthgen build` and gives the same image for a seed whatever the
batch it is sampled in; family-specific sampler, guidance and negative-prompt rules are checked too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from pipeline_factories import FACTORIES, save_pipeline

from synthgen.errors import SynthgenError
from synthgen.recipe import SamplingConfig, load_recipe

pytestmark = pytest.mark.slow

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
EXPECTED_SCHEDULER = {"flux-dev": "euler", "flux-schnell": "euler"}  # flow matching: the recipe default ddim maps


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory):
    """family -> saved tiny pipeline folder, built on first use."""
    root = tmp_path_factory.mktemp("pipelines")
    saved: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in saved:
            saved[family] = save_pipeline(family, root / family)
        return saved[family]

    return get


def load(folder: Path):
    from synthgen.models.loading import load_model
    from synthgen.runtime import pick_device

    return load_model(folder, folder.name, "0" * 64, pick_device("cpu"))


def jobs(n: int = 3):
    from synthgen.plan import Job

    return [Job(f"k-{i}", "polyp", "colonoscopy polyp", 1000 + i) for i in range(n)]


def images(model, **sampling) -> list[np.ndarray]:
    from synthgen.generate import Generator

    config = SamplingConfig(**{"steps": 2, "resolution": 32, **sampling})
    return [np.asarray(s.image, dtype=int) for s in Generator(model, config, {}).generate(jobs())]


@pytest.mark.parametrize("family", list(FACTORIES))
def test_build_with_each_pipeline_family(family: str, pipelines, tmp_path: Path) -> None:
    from synthgen.build import build
    from synthgen.generate import Generator
    from synthgen.plan import make_plan

    recipe = {
        "name": f"pretrained-{family}",
        "model": {"pretrained": str(pipelines(family))},
        "classes": {
            "polyp": {"count": 2, "prompts": ["colonoscopy polyp"]},
            "normal": {"count": 1, "prompts": ["colonoscopy normal mucosa"]},
        },  # fmt: skip
        "sampling": {"steps": 2, "batch_size": 3, "resolution": 32, "seed": 5},
        "audit": {"enabled": False},
        "output": {"dir": "out", "formats": ["parquet"]},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    loaded = load_recipe(tmp_path / "recipe.yaml")
    result = build(loaded)
    rows = {row["key"]: row for row in pq.read_table(result.out_dir / "data").to_pylist()}
    assert len(rows) == 3 and result.model_id == str(pipelines(family))
    assert {row["scheduler"] for row in rows.values()} == {EXPECTED_SCHEDULER.get(family, "ddim")}
    # The same jobs one at a time give the same pixels: each image depends only on its own seed.
    one_by_one = loaded.recipe.sampling.model_copy(update={"batch_size": 1})
    from io import BytesIO

    from PIL import Image

    for sample in Generator(load(pipelines(family)), one_by_one, {}).generate(make_plan(loaded.recipe).jobs):
        built = np.asarray(Image.open(BytesIO(rows[sample.key]["image"]["bytes"])), dtype=int)
        assert built.shape == (32, 32, 3)
        assert np.abs(built - np.asarray(sample.image, dtype=int)).max() <= 2


@pytest.mark.parametrize("family", list(FACTORIES))
def test_seeds_differ_and_repeat(family: str, pipelines) -> None:
    model = load(pipelines(family))
    first, again = images(model), images(model)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert np.abs(first[0] - first[1]).mean() > 0.5


def test_default_resolution_follows_the_pipeline(pipelines) -> None:
    assert load(pipelines("sd15")).default_resolution == 32  # UNet sample size 16 x VAE scale 2
    assert load(pipelines("sdxl")).default_resolution == 32
    assert load(pipelines("flux-dev")).default_resolution == 256  # FLUX: fixed 128 latent side x scale 2
    assert load(pipelines("kandinsky22")).default_resolution == 512  # its own `height` default


def test_flow_matching_keeps_its_sampler_and_refuses_ddpm_family_ones(pipelines) -> None:
    from synthgen.generate import Generator

    model = load(pipelines("flux-dev"))
    assert Generator(model, SamplingConfig(resolution=32), {}).scheduler == "euler"  # recipe left the default
    assert type(model.pipeline.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    for name in ("ddim", "ddpm", "dpm-solver++"):
        with pytest.raises(SynthgenError, match=r"flow-matching model\); use euler"):
            Generator(model, SamplingConfig(scheduler=name, resolution=32), {})


def test_flux_dev_guidance_is_an_input_and_schnell_ignores_it(pipelines) -> None:
    dev, schnell = load(pipelines("flux-dev")), load(pipelines("flux-schnell"))
    assert not np.array_equal(images(dev, guidance_scale=1.0)[0], images(dev, guidance_scale=6.0)[0])
    assert np.array_equal(images(schnell, guidance_scale=1.0)[0], images(schnell, guidance_scale=6.0)[0])
    with pytest.raises(SynthgenError, match="guidance-distilled"):
        images(dev, negative_prompt="blurry")


def test_negative_prompt_steers_cfg_pipelines(pipelines) -> None:
    for family in ("sd15", "sdxl", "kandinsky22"):
        model = load(pipelines(family))
        negative = images(model, negative_prompt="blurry", batch_size=3)
        assert not np.array_equal(images(model)[0], negative[0]), family
        alone = images(model, negative_prompt="blurry", batch_size=1)  # Kandinsky's prior doubles its batch
        assert all(np.abs(a - b).max() <= 2 for a, b in zip(negative, alone, strict=True)), family


def test_v_prediction_survives_the_scheduler_swap(pipelines) -> None:
    model = load(pipelines("sd21-v"))
    for name in ("ddim", "dpm-solver++", "euler", "ddpm"):
        images(model, scheduler=name)
        assert model.pipeline.scheduler.config.prediction_type == "v_prediction", name


def test_kandinsky_samplers(pipelines) -> None:
    from synthgen.generate import Generator

    model = load(pipelines("kandinsky22"))
    generator = Generator(model, SamplingConfig(scheduler="dpm-solver++", resolution=32), {})
    assert model.pipeline.decoder_pipe.scheduler is model.pipeline.scheduler  # the decoder really uses it
    assert generator.scheduler == "dpm-solver++"
    with pytest.raises(SynthgenError, match="use ddim or ddpm or dpm-solver"):
        Generator(model, SamplingConfig(scheduler="euler", resolution=32), {})


def test_decoder_without_text_prompt_is_refused(tmp_path: Path) -> None:
    decoder = FACTORIES["kandinsky22"]().decoder_pipe
    decoder.save_pretrained(tmp_path / "decoder")
    with pytest.raises(SynthgenError, match="does not take a text prompt"):
        load(tmp_path / "decoder")


def test_output_side_must_suit_the_pipeline(pipelines) -> None:
    from synthgen.generate import size_multiple

    model = load(pipelines("sd15"))
    assert size_multiple(model.pipeline) == 2
    assert size_multiple(load(pipelines("flux-dev")).pipeline) == 4  # 2x2 latent patches x VAE scale 2
    assert size_multiple(load(pipelines("kandinsky22")).pipeline) == 4  # MoVQ scale factor squared
    flux = load(pipelines("flux-dev"))
    flux.pipeline.vae_scale_factor = 8  # as in the real FLUX.1: sides are multiples of 16
    with pytest.raises(SynthgenError, match="multiples of 16; 40 is not"):
        images(flux, resolution=40)


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_recipe_parses(path: Path) -> None:
    loaded = load_recipe(path)
    assert loaded.recipe.name and loaded.recipe.classes
