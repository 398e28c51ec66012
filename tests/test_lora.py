"""LoRA fine-tuning of tiny in-process SD pipelines on the demo phantoms at 32 px (a few steps, CPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from pipeline_factories import save_pipeline

from synthgen.errors import SynthgenError
from synthgen.recipe import LoRAConfig, load_recipe

pytestmark = pytest.mark.slow

DATA = {"type": "demo", "per_class": 4, "resolution": 32}
PROMPT = "colonoscopy phantom showing a small polyp in the centre"


def lora_config(**overrides) -> LoRAConfig:
    settings = {"data": DATA, "steps": 3, "batch_size": 4, "rank": 4, "alpha": 8, "checkpoint_every": 100}
    return LoRAConfig(**{**settings, "validation_split": 0.25, **overrides})


def sample(pipeline, seed: int = 0) -> np.ndarray:
    import torch

    pipeline.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    return pipeline(PROMPT, num_inference_steps=2, generator=generator, output_type="np").images[0]


@pytest.fixture(scope="module", autouse=True)
def _small_sample_grids():
    """Checkpoint sample grids at 1 step and 1 seed: their look is not under test, their writing is."""
    from synthgen.training import lora_model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(lora_model, "GRID_STEPS", 1)
        patch.setattr(lora_model, "GRID_SEEDS", (0,))
        yield


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pipeline("sd15", tmp_path_factory.mktemp("base") / "sd15")


@pytest.fixture(scope="module")
def trained(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from synthgen.sources import open_source
    from synthgen.train import train_lora

    config = lora_config()
    out = tmp_path_factory.mktemp("lora") / "model"
    return train_lora(config, open_source(config.data, base.parent), out, device="cpu", base=base, base_id="tiny/sd15")


def test_only_the_adapters_train(base: Path, tmp_path: Path) -> None:
    import torch

    from synthgen.sources import open_source
    from synthgen.training.checkpoints import CheckpointStore
    from synthgen.training.data import load_training_data
    from synthgen.training.loop import LoopSettings, run_phase
    from synthgen.training.lora_model import LoRAModel
    from synthgen.training.training_log import TrainingLog

    config = lora_config(ema_decay=0.0, validation_split=0.0)
    model = LoRAModel(base, config, torch.device("cpu"))
    before = {k: v.detach().clone() for k, v in model.unet.named_parameters()}
    trainable = {k for k, p in model.unet.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in k for k in trainable)
    assert not any(p.requires_grad for p in [*model.vae.parameters(), *model.pipeline.text_encoder.parameters()])
    data = load_training_data(open_source(config.data, tmp_path), model.resolution)
    settings = LoopSettings(4, 4, 100, 0, torch.device("cpu"))
    result = run_phase(model.phase(data, data.subset(np.arange(0))), settings, CheckpointStore(tmp_path / "ck"),
                       TrainingLog(tmp_path / "log.jsonl", ["lora"]))  # fmt: skip
    assert result.loss is not None and np.isfinite(result.loss)
    after = dict(model.unet.named_parameters())
    changed = {k for k in before if not torch.equal(before[k], after[k].detach())}
    assert changed and changed <= trainable  # base weights identical; adapters moved
    assert len(model.module.state_dict()) == len(trainable)  # checkpoints hold the adapters only


def test_merged_folder_generates_and_matches_the_adapter_on_the_base(base: Path, trained: Path) -> None:
    from diffusers import DiffusionPipeline
    from safetensors import safe_open

    merged = DiffusionPipeline.from_pretrained(trained)
    with safe_open(trained / "unet" / "diffusion_pytorch_model.safetensors", "pt") as weights:
        assert not any("lora" in key for key in weights.keys())  # noqa: SIM118 - safe_open has no __iter__
    assert (trained / "lora" / "pytorch_lora_weights.safetensors").is_file()
    on_base = DiffusionPipeline.from_pretrained(base)
    plain = sample(on_base)
    on_base.load_lora_weights(trained / "lora")  # alpha (8 != rank 4) travels as metadata
    np.testing.assert_allclose(sample(merged), sample(on_base), atol=1e-4)
    assert np.abs(sample(merged) - plain).max() > 1e-4  # the fine-tune changed something


def test_merged_folder_needs_neither_synthgen_nor_peft(trained: Path) -> None:
    code = (
        "import sys; sys.modules['peft'] = None; sys.modules['synthgen'] = None\n"
        "import torch; from diffusers import DiffusionPipeline\n"
        f"p = DiffusionPipeline.from_pretrained({str(trained)!r}); p.set_progress_bar_config(disable=True)\n"
        "print(p('x', num_inference_steps=1, generator=torch.Generator().manual_seed(0)).images[0].size)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(32, 32)" in done.stdout


def test_model_info_records_base_data_and_losses(base: Path, trained: Path) -> None:
    from synthgen.provenance import sha256_tree
    from synthgen.sources import open_source

    info = json.loads((trained / "synthgen_model.json").read_text())
    assert info["architecture"] == "lora" and info["dp"] is None
    assert info["base_model"] == {"id": "tiny/sd15", "sha256": sha256_tree(base), "pipeline": "StableDiffusionPipeline"}
    assert info["training_data"]["sha256"] == open_source(lora_config().data, base).fingerprint()
    assert info["training_data"]["images"] + info["training_data"]["validation_images"] == 12
    assert info["training"]["rank"] == 4 and info["training"]["steps"] == 3 and info["resolution"] == 32
    assert len(info["losses"]["train"]) == 3 and all(np.isfinite(info["losses"]["train"]))
    assert np.isfinite(info["validation_loss"])
    assert (trained / "loss.png").is_file() and (trained / "samples" / "step-3.png").is_file()
    assert not (trained / ".checkpoints" / "data").exists()  # no training images left in the model folder


@pytest.mark.parametrize("family", ["sd21-v", "sdxl"])
def test_v_prediction_and_sdxl_bases_fine_tune(family: str, tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline

    from synthgen.sources import open_source
    from synthgen.train import train_lora

    base = save_pipeline(family, tmp_path / family)
    config = lora_config(steps=1, validation_split=0.0)
    out = train_lora(config, open_source(config.data, tmp_path), tmp_path / "out", device="cpu", base=base)
    pipeline = DiffusionPipeline.from_pretrained(out)
    assert type(pipeline).__name__ == json.loads((base / "model_index.json").read_text())["_class_name"]
    assert np.isfinite(sample(pipeline)).all()


def test_settings_are_validated(base: Path, tmp_path: Path) -> None:
    import pydantic

    from synthgen.recipe import parse_recipe
    from synthgen.sources import open_source
    from synthgen.train import train_lora

    for bad in ({"rank": 0}, {"target_modules": []}, {"learning_rate": 0}, {"resolution": 40}):
        with pytest.raises(pydantic.ValidationError):
            lora_config(**bad)
    recipe = {"name": "r", "model": {"lora": {"data": "demo"}, "train": {"data": "demo"}}, "classes": {"a": {
        "count": 1, "prompts": ["x"]}}}  # fmt: skip
    with pytest.raises(SynthgenError, match="lora"):
        parse_recipe(recipe)
    config = lora_config(target_modules=["no_such_module"])
    with pytest.raises(SynthgenError, match="target_modules"):
        train_lora(config, open_source(config.data, tmp_path), tmp_path / "a", device="cpu", base=base)
    flux = save_pipeline("flux-schnell", tmp_path / "flux")
    with pytest.raises(SynthgenError, match="supports Stable Diffusion"):
        train_lora(config, open_source(config.data, tmp_path), tmp_path / "b", device="cpu", base=flux)


def write_recipe(folder: Path, base: Path, **extra) -> Path:
    recipe = {
        "name": "lora-build",
        "model": {"pretrained": str(base), "lora": {**lora_config().model_dump(mode="json"), "data": DATA}},
        "classes": {
            "polyp": {"count": 2, "prompts": [PROMPT]},
            "normal": {"count": 2, "prompts": ["colonoscopy phantom showing normal mucosa"]},
        },  # fmt: skip
        "sampling": {"steps": 2, "batch_size": 4, "resolution": 32},
        "audit": {"embedder": "pixel", "threshold": 0.99},
        "output": {"dir": "out", "formats": ["parquet"]},
        **extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder / "recipe.yaml"


def test_build_fine_tunes_once_then_reuses_the_cached_model(
    base: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synthgen.build import build
    from synthgen.resolve import resolve_model
    from synthgen.validate import validate_recipe

    monkeypatch.setenv("SYNTHGEN_CACHE", str(tmp_path / "cache"))
    loaded = load_recipe(write_recipe(tmp_path / "r", base))
    assert any("LoRA rank 4" in line for line in validate_recipe(loaded))
    result = build(loaded)
    assert result.model_id.startswith("synthgen://lora-") and sum(result.class_counts.values()) == 4
    again = resolve_model(loaded)
    assert not again.trained_now and again.model_id == result.model_id
    info = json.loads((again.path / "synthgen_model.json").read_text())
    assert info["architecture"] == "lora" and info["base_model"]["id"] == str(base)


def test_lora_with_privacy_is_refused(base: Path, tmp_path: Path) -> None:
    from synthgen.validate import validate_recipe

    loaded = load_recipe(write_recipe(tmp_path, base, privacy={"target_epsilon": 8}))
    with pytest.raises(SynthgenError, match="privacy"):
        validate_recipe(loaded)


def test_extended_run_resumes_from_its_checkpoint_exactly(base: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from synthgen.sources import open_source
    from synthgen.train import train_lora

    config = lora_config(steps=4, checkpoint_every=2, validation_split=0.0)
    source = open_source(config.data, tmp_path)
    straight = train_lora(config, source, tmp_path / "straight", device="cpu", base=base)
    train_lora(
        lora_config(steps=2, checkpoint_every=2, validation_split=0.0),
        source,
        tmp_path / "two",
        device="cpu",
        base=base,
    )
    extended = train_lora(config, source, tmp_path / "two", device="cpu", base=base)  # 2 more steps from step 2
    a, b = (load_file(folder / "lora" / "pytorch_lora_weights.safetensors") for folder in (straight, extended))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    assert '"event": "resume"' in (extended / "training_log.jsonl").read_text()
