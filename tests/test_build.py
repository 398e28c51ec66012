"""End-to-end: a tiny demo recipe through train → generate → audit → shards, via the API and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from synthgen.build import build
from synthgen.errors import SynthgenError
from synthgen.provenance import sha256_file
from synthgen.recipe import load_recipe

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("isolated_cache")]

TINY = {
    "name": "tiny",
    "model": {
        "train": {
            "data": {"type": "demo", "per_class": 4, "resolution": 32},
            "resolution": 32,
            "vae_steps": 4,
            "unet_steps": 4,
            "batch_size": 4,
        }
    },
    "classes": {
        "polyp": {
            "count": 3,
            "prompts": ["colonoscopy phantom showing a {size} polyp"],
            "variables": {"size": ["small", "large"]},
        },
        "ulcer": {"count": 3, "prompts": ["colonoscopy phantom showing a small ulcer"]},
        "normal": {"count": 2, "prompts": ["colonoscopy phantom showing normal mucosa"]},
    },
    "sampling": {"steps": 3, "batch_size": 4, "seed": 7},
    "audit": {"threshold": 0.99},
    "output": {"dir": "out", "shard_size": 4},
}


def write_recipe(folder: Path, **overrides) -> Path:
    recipe = json.loads(json.dumps(TINY))
    for dotted, value in overrides.items():
        target = recipe
        *parents, last = dotted.split(".")
        for key in parents:
            target = target[key]
        target[last] = value
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """One tiny build shared by the read-only tests below."""
    mp = pytest.MonkeyPatch()
    mp.setenv("SYNTHGEN_CACHE", str(model_cache))
    try:
        recipe = write_recipe(tmp_path_factory.mktemp("built"))
        result = build(load_recipe(recipe))
    finally:
        mp.undo()
    assert result.shards_written == 2 and result.shards_resumed == 0
    return result.out_dir


def test_build_writes_balanced_shards_with_provenance(built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["class_counts"] == {"normal": 2, "polyp": 3, "ulcer": 3}
    assert manifest["shortfall"] == {}
    for shard in manifest["shards"]:
        assert sha256_file(built / shard["path"]) == shard["sha256"]
    table = pq.read_table(sorted((built / "data").glob("*.parquet"))).to_pylist()
    assert len(table) == 8
    assert len({row["seed"] for row in table}) == 8
    assert len({row["key"] for row in table}) == 8
    recipe_sha = sha256_file(built / "recipe.yaml")
    for row in table:
        assert row["recipe_sha256"] == recipe_sha
        assert re.fullmatch(r"[0-9a-f]{64}", row["model_sha256"])
        assert row["audit_similarity"] is not None and row["audit_flagged"] is False
        assert row["dp_epsilon"] is None
        assert row["prompt"].startswith("colonoscopy phantom showing")
        assert row["image"]["bytes"][:8] == b"\x89PNG\r\n\x1a\n"
    assert (built / "audit" / "report.html").is_file()
    summary = json.loads((built / "audit" / "summary.json").read_text())
    assert summary["n_candidates"] == 8
    card = (built / "README.md").read_text()
    assert card.startswith("---\n") and "synthetic" in card and "(preview.png)" in card
    from PIL import Image

    assert Image.open(built / "preview.png").size == (8 * 96, 3 * 96)  # 3 classes; 8 columns


def test_shards_open_with_webdataset_and_datasets(built: Path) -> None:
    import datasets
    import webdataset as wds

    tars = sorted(str(p) for p in (built / "webdataset").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))
    assert len(samples) == 8 and all(s["png"].size == (32, 32) for s in samples)
    ds = datasets.load_dataset("parquet", data_files=str(built / "data" / "*.parquet"), split="train")
    assert ds[0]["image"].size == (32, 32)
    assert sorted(s["__key__"] for s in samples) == sorted(ds["key"])


def test_same_recipe_and_seed_give_same_images(built: Path, tmp_path: Path) -> None:
    again = build(load_recipe(write_recipe(tmp_path)))
    first = {r["key"]: r["image"]["bytes"] for r in pq.read_table(built / "data").to_pylist()}
    second = {r["key"]: r["image"]["bytes"] for r in pq.read_table(again.out_dir / "data").to_pylist()}
    assert first == second


def build_interrupted_after_first_shard(recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `build(recipe)` with a Ctrl-C as shard 1 is written (shard 0 is finished); leave `build` whole again."""
    from synthgen.output.shard_set import ShardSet

    with monkeypatch.context() as patch:
        original = ShardSet.write_shard

        def crash_on_second(self, index, samples):
            if index == 1:
                raise KeyboardInterrupt
            return original(self, index, samples)

        patch.setattr(ShardSet, "write_shard", crash_on_second)
        with pytest.raises(KeyboardInterrupt):
            build(recipe)


def test_interrupted_build_resumes_without_duplicates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = load_recipe(write_recipe(tmp_path))
    build_interrupted_after_first_shard(recipe, monkeypatch)
    first_shard = tmp_path / "out" / "data" / "shard-00000.parquet"
    stamp = first_shard.stat().st_mtime_ns
    assert not (tmp_path / "out" / "manifest.json").exists()
    result = build(recipe)
    assert (result.shards_written, result.shards_resumed) == (1, 1)
    assert first_shard.stat().st_mtime_ns == stamp
    keys = pq.read_table(tmp_path / "out" / "data", columns=["key"]).column("key").to_pylist()
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 8
    assert json.loads((tmp_path / "out" / "audit" / "summary.json").read_text())["n_candidates"] == 8


def test_drop_replaces_copies_and_reports_shortfall(tmp_path: Path) -> None:
    # threshold -1: every sample counts as a copy, so every slot is retried and finally left out.
    recipe = write_recipe(tmp_path, **{"audit.threshold": -0.99, "audit.action": "drop", "audit.max_retries": 1})
    result = build(load_recipe(recipe))
    assert result.shortfall == {"polyp": 3, "ulcer": 3, "normal": 2}
    rows = pq.read_table(result.out_dir / "audit" / "audit.parquet").to_pylist()
    assert len(rows) == 16 and all(r["dropped"] for r in rows)
    assert sorted({r["attempt"] for r in rows}) == [0, 1]


def test_other_recipe_in_same_folder_is_refused(built: Path, tmp_path: Path) -> None:
    other = load_recipe(write_recipe(tmp_path, **{"sampling.seed": 99}))
    with pytest.raises(SynthgenError, match="different recipe"):
        build(other, built)


def test_trained_model_loads_without_synthgen_and_as_pretrained(built: Path, tmp_path: Path) -> None:
    import torch
    from diffusers import DiffusionPipeline

    model = json.loads((built / "manifest.json").read_text())["model"]
    cache = Path(model["path"])
    assert model["id"] == f"synthgen://{cache.name}" and cache.parent.name == "models"
    pipe = DiffusionPipeline.from_pretrained(cache)
    image = pipe(
        "colonoscopy phantom showing a small polyp", num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (32, 32)
    recipe = write_recipe(tmp_path, model={"pretrained": str(cache)}, audit={"data": "demo", "threshold": 0.99})
    result = build(load_recipe(recipe))
    assert result.model_id == str(cache)
    assert sum(result.class_counts.values()) == 8


def test_cli_build_and_inspect(tmp_path: Path) -> None:
    from synthgen.cli import app

    recipe = write_recipe(tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["build", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "shards written 2" in result.output
    assert runner.invoke(app, ["inspect", str(tmp_path / "out")]).exit_code == 0
    tar = next((tmp_path / "out" / "webdataset").glob("*.tar"))
    data = bytearray(tar.read_bytes())
    data[600] ^= 0xFF  # one flipped byte inside the first member
    tar.write_bytes(bytes(data))
    assert runner.invoke(app, ["inspect", str(tmp_path / "out")]).exit_code == 1


def test_cli_train_writes_a_pipeline_and_guards_its_folder(tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline

    from synthgen.cli import app

    recipe = write_recipe(tmp_path / "r")
    runner = CliRunner()
    assert runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "model")]).exit_code == 0
    info = json.loads((tmp_path / "model" / "synthgen_model.json").read_text())
    assert info["training_data"]["images"] == 12 and info["dp"] is None
    assert type(DiffusionPipeline.from_pretrained(tmp_path / "model")).__name__ == "StableDiffusionPipeline"
    again = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "model")])
    assert again.exit_code == 2 and "--overwrite" in again.output
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    refused = runner.invoke(app, ["train", str(recipe), "--out", str(tmp_path / "notes")])
    assert refused.exit_code == 2 and (tmp_path / "notes" / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("scheduler", ["ddim", "dpm-solver++", "euler", "ddpm"])
def test_images_do_not_depend_on_batch_size(built: Path, scheduler: str) -> None:
    import numpy as np

    from synthgen.generate import Generator
    from synthgen.models.loading import load_model
    from synthgen.plan import Job
    from synthgen.recipe import SamplingConfig
    from synthgen.runtime import pick_device

    manifest = json.loads((built / "manifest.json").read_text())
    cache = Path(__import__("os").environ["SYNTHGEN_CACHE"]) / "models" / manifest["model"]["id"].split("/")[-1]
    model = load_model(cache, "tiny", "0" * 64, pick_device("cpu"))
    jobs = [Job(f"k-{i}", "polyp", "colonoscopy phantom showing a small polyp", 1000 + i) for i in range(3)]
    images = {}
    for batch_size in (1, 3):
        sampling = SamplingConfig(scheduler=scheduler, steps=3, batch_size=batch_size)
        images[batch_size] = [np.asarray(s.image, dtype=int) for s in Generator(model, sampling, {}).generate(jobs)]
    for one, three in zip(images[1], images[3], strict=True):
        assert np.abs(one - three).max() <= 2  # float reassociation across batch sizes, not different noise
    assert np.abs(images[1][0] - images[1][1]).mean() > 1  # different seeds, different images


@pytest.mark.real_data
def test_build_on_real_radiology_keeps_training_names_out_of_shards(real_data_dir: Path, tmp_path: Path) -> None:
    real = str(real_data_dir / "radiology-real")
    recipe = write_recipe(
        tmp_path,
        **{
            "model.train.data": {"path": real, "limit": 24},
            "classes": {"covid19": {"count": 4, "prompts": ["chest X-ray PA view, finding: covid19"]}},
        },
    )
    result = build(load_recipe(recipe))
    assert result.class_counts == {"covid19": 4}
    audit_rows = pq.read_table(result.out_dir / "audit" / "audit.parquet").to_pylist()
    assert all(row["nearest_train_key"].startswith("images/") for row in audit_rows)
    # The shipped shards carry hashes and settings, never training file names.
    for path in [*(result.out_dir / "data").glob("*.parquet"), *(result.out_dir / "webdataset").glob("*.tar")]:
        assert b"images/" not in path.read_bytes()
    assert b"images/" not in (result.out_dir / "manifest.json").read_bytes()


def test_second_build_into_a_locked_folder_is_refused(built: Path) -> None:
    from synthgen.output.folder import OutputFolder

    folder = OutputFolder(built)
    with folder.lock(), pytest.raises(SynthgenError, match="another synthgen build"), folder.lock():
        pass
    with folder.lock():
        pass  # free again once the holder is gone


def test_webdataset_only_jpeg_build(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, output={"dir": "out", "formats": ["webdataset"], "image_format": "jpeg"})
    result = build(load_recipe(recipe))
    assert not (result.out_dir / "data").exists()
    names = [
        name
        for tar in (result.out_dir / "webdataset").glob("*.tar")
        for name in __import__("tarfile").open(tar).getnames()
    ]
    assert sum(name.endswith(".jpg") for name in names) == 8
    assert (result.out_dir / "preview.png").is_file()
    assert "webdataset/*.tar" in (result.out_dir / "README.md").read_text()
