"""Issue 13 (R): labels as a `ClassLabel` / `.cls` with the mapping in the manifest; the set names its model.

One tiny build with `--export-model` (through the CLI) is shared by the end-to-end tests; the export's
linking, copying, keeping and replacing are also tested on a small fake model folder.
"""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from test_build import TINY, write_recipe
from test_shards import CLASSES, make_samples
from typer.testing import CliRunner

import synthgen.output.model_export as model_export
from synthgen.build import build
from synthgen.errors import SynthgenError
from synthgen.output.model_export import place_model
from synthgen.output.shard_set import ShardSet
from synthgen.output.verify import inspect_output
from synthgen.provenance import sha256_tree
from synthgen.recipe import load_recipe
from synthgen.sources import open_source

pytestmark = pytest.mark.usefixtures("isolated_cache")

RECIPE_CLASSES = ["polyp", "ulcer", "normal"]  # test_build's TINY, in recipe (not alphabetical) order


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """`synthgen build --export-model` of the tiny recipe; the output folder."""
    from synthgen.cli import app

    mp = pytest.MonkeyPatch()
    mp.setenv("SYNTHGEN_CACHE", str(model_cache))
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        recipe = write_recipe(tmp_path_factory.mktemp("exported"))
        recipe.write_text(yaml.safe_dump(TINY, sort_keys=False))  # classes in TINY's order, not sorted
        result = CliRunner().invoke(app, ["build", str(recipe), "--export-model"])
    finally:
        mp.undo()
    assert result.exit_code == 0, result.output
    out = recipe.parent / "out"
    assert f"({(out / 'model').resolve()})" in " ".join(result.output.split())
    return out


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# --- labels -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_parquet_label_is_a_classlabel_in_recipe_order(exported: Path, tmp_path: Path) -> None:
    import datasets

    ds = datasets.load_dataset(
        "parquet", data_files=str(exported / "data" / "*.parquet"), split="train", cache_dir=str(tmp_path / "hf")
    )
    feature = ds.features["label"]
    assert isinstance(feature, datasets.ClassLabel) and feature.names == RECIPE_CLASSES
    assert manifest(exported)["classes"] == RECIPE_CLASSES
    for row in ds:
        assert feature.int2str(row["label"]) == row["label_name"] and row["label_name"] in row["prompt"]
    assert sorted(ds["label_name"]) == sorted(["polyp"] * 3 + ["ulcer"] * 3 + ["normal"] * 2)
    # The card's own features (what the hub reads from README.md) say the same.
    header = yaml.safe_load((exported / "README.md").read_text().split("---\n")[1])
    card_features = datasets.Features._from_yaml_list(header["dataset_info"]["features"])
    assert card_features["label"] == feature and card_features["label_name"] == datasets.Value("string")


@pytest.mark.slow
def test_webdataset_samples_carry_cls(exported: Path) -> None:
    import webdataset as wds

    tars = sorted(str(p) for p in (exported / "webdataset").glob("*.tar"))
    seen = 0
    for sample in wds.WebDataset(tars, shardshuffle=False).decode("pil"):
        assert {"png", "json", "txt", "cls"} <= set(sample)
        assert isinstance(sample["cls"], int)
        assert RECIPE_CLASSES[sample["cls"]] == sample["json"]["label_name"]
        assert sample["json"]["label"] == sample["cls"]
        seen += 1
    assert seen == 8
    with tarfile.open(tars[0]) as tar:
        raw = next(m for m in tar if m.name.endswith(".cls"))
        assert tar.extractfile(raw).read() in {b"0", b"1", b"2"}  # ASCII digits, no newline


@pytest.mark.slow
def test_readers_inspect_and_preview_still_see_class_names(exported: Path) -> None:
    counts = {"polyp": 3, "ulcer": 3, "normal": 2}
    for path in (exported, exported / "data", exported / "webdataset"):
        labels = [sample.label for sample in open_source(str(path))]
        assert {label: labels.count(label) for label in counts} == counts, path
    result = inspect_output(exported)
    assert result.ok, result.problems
    assert result.class_counts == dict(sorted(counts.items()))
    from PIL import Image

    assert Image.open(exported / "preview.png").size == (8 * 96, 3 * 96)


@pytest.mark.slow
def test_audit_reads_the_set_as_candidates_by_class_name(exported: Path, tmp_path: Path) -> None:
    from synthgen.cli import app

    args = ["audit", "--train", "demo", "--candidates", str(exported), "--out", str(tmp_path / "a")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert {name: row["n"] for name, row in summary["per_label"].items()} == {"polyp": 3, "ulcer": 3, "normal": 2}


def test_parquet_shards_stay_byte_reproducible(tmp_path: Path) -> None:
    for name in ("a", "b"):
        ShardSet(tmp_path / name, classes=CLASSES).write_shard(0, make_samples(5))
    for rel in ("data/shard-00000.parquet", "webdataset/shard-00000.tar"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_label_outside_the_classes_leaves_no_shard(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="label 'normal' is not one of the classes"):
        ShardSet(tmp_path, classes=["polyp"]).write_shard(0, make_samples(2))
    assert not list(tmp_path.rglob("shard-*"))
    with pytest.raises(ValueError, match="distinct"):
        ShardSet(tmp_path, classes=["a", "a"])


def test_inspect_flags_classlabel_names_that_differ_from_the_manifest(tmp_path: Path) -> None:
    from synthgen.output.manifest import write_manifest
    from synthgen.output.shard_set import load_completed

    ShardSet(tmp_path, ["parquet"], classes=CLASSES).write_shard(0, make_samples(2))
    write_manifest(tmp_path, load_completed(tmp_path), {"classes": ["normal", "polyp"]})
    problems = inspect_output(tmp_path).problems
    assert any("ClassLabel names ['polyp', 'normal'] differ" in p for p in problems)


# --- the model ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_manifest_and_card_name_the_exported_model(exported: Path) -> None:
    model = manifest(exported)["model"]
    cache = Path(model["path"])
    assert model["id"].startswith("synthgen://msdm-tiny-") and model["id"] == f"synthgen://{cache.name}"
    assert cache.is_absolute() and (cache / "model_index.json").is_file()
    assert model["exported_path"] == "model"
    assert sha256_tree(exported / "model") == model["sha256"] == sha256_tree(cache)
    assert not (exported / "model" / ".checkpoints").exists()
    row = pq.read_table(exported / "data", columns=["model_id", "model_sha256"]).to_pylist()[0]
    assert row == {"model_id": model["id"], "model_sha256": model["sha256"]}
    index = exported / "model" / "model_index.json"
    if index.stat().st_dev == (cache / "model_index.json").stat().st_dev:
        assert os.path.samefile(index, cache / "model_index.json")  # a hard link, not a copy
    card = (exported / "README.md").read_text()
    assert model["id"] in card and model["sha256"] in card and "`model/` in this dataset" in card


@pytest.mark.slow
def test_exported_model_loads_as_a_pipeline(exported: Path) -> None:
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(exported / "model")
    image = pipe("colonoscopy phantom showing a small ulcer", num_inference_steps=2, generator=torch.manual_seed(0))
    assert image.images[0].size == (32, 32)


@pytest.mark.slow
def test_resumed_build_keeps_the_export(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = (exported / "model").stat().st_ino

    def no_copy(*args, **kwargs):
        raise AssertionError("the model was exported again")

    monkeypatch.setattr(model_export, "_link_or_copy", no_copy)
    result = build(load_recipe(exported.parent / "recipe.yaml"), export_model=True)
    assert result.shards_resumed == 2 and result.model["exported_path"] == "model"
    assert (exported / "model").stat().st_ino == before
    # Without the flag an identical export stays and stays recorded (a set keeps naming its model).
    again = build(load_recipe(exported.parent / "recipe.yaml"))
    assert again.model["exported_path"] == "model" and inspect_output(exported).ok


@pytest.mark.slow
def test_local_pretrained_folder_is_named_by_its_path(exported: Path, tmp_path: Path) -> None:
    relative = os.path.relpath(exported / "model", tmp_path)
    recipe = write_recipe(tmp_path, model={"pretrained": relative}, audit={"enabled": False})
    result = build(load_recipe(recipe))
    model = manifest(result.out_dir)["model"]
    assert model["id"] == model["path"] == str((exported / "model").resolve())
    assert model["exported_path"] is None and not (result.out_dir / "model").exists()
    card = (result.out_dir / "README.md").read_text()
    assert "not included" in card and "--export-model" in card


@pytest.mark.slow
def test_recipe_field_exports_and_the_cli_flag_overrides_it(exported: Path, tmp_path: Path) -> None:
    from synthgen.cli import app

    output = {"dir": "out", "shard_size": 4, "export_model": True}
    recipe = write_recipe(tmp_path, output=output, audit={"enabled": False})
    result = CliRunner().invoke(app, ["build", str(recipe), "--no-export-model"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "out" / "model").exists() and manifest(tmp_path / "out")["model"]["exported_path"] is None
    assert build(load_recipe(recipe)).model["exported_path"] == "model"
    assert sha256_tree(tmp_path / "out" / "model") == manifest(exported)["model"]["sha256"]


# --- the export on its own ------------------------------------------------------------------------------------


def fake_model(folder: Path, text: str = "weights") -> Path:
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text('{"_class_name": "X"}')
    (folder / "unet" / "w.bin").write_text(text)
    (folder / ".checkpoints").mkdir()
    (folder / ".checkpoints" / "big.pt").write_text("resume point")
    return folder


def test_export_links_or_copies_and_replaces_a_stale_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source, out = fake_model(tmp_path / "cache"), tmp_path / "out"
    out.mkdir()
    sha = sha256_tree(source)
    assert place_model(out, source, sha, export=True) == "model"
    assert os.path.samefile(out / "model" / "unet" / "w.bin", source / "unet" / "w.bin")
    assert not (out / "model" / ".checkpoints").exists() and sha256_tree(out / "model") == sha
    # Another model for the same set (retrained): the old export is replaced, by copies when links fail.
    other = fake_model(tmp_path / "other", "new weights")

    def no_links(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    assert place_model(out, other, sha256_tree(other), export=True) == "model"
    assert (out / "model" / "unet" / "w.bin").read_text() == "new weights"
    assert not os.path.samefile(out / "model" / "unet" / "w.bin", other / "unet" / "w.bin")
    assert sorted(p.name for p in out.iterdir()) == ["model"]  # no staging folder left
    # Not exporting: a stale export (not this model) goes; nothing is written.
    assert place_model(out, source, sha, export=False) is None and not (out / "model").exists()


def test_export_refuses_a_model_that_changed_and_leaves_nothing(tmp_path: Path) -> None:
    source, out = fake_model(tmp_path / "cache"), tmp_path / "out"
    out.mkdir()
    (out / ".model.abc.tmp").mkdir()  # a killed build's staging folder
    with pytest.raises(SynthgenError, match="changed during the build"):
        place_model(out, source, "0" * 64, export=True)
    assert list(out.iterdir()) == []


def test_other_recipe_with_overwrite_removes_the_exported_model(tmp_path: Path) -> None:
    from synthgen.output.folder import OutputFolder

    out = tmp_path / "out"
    fake_model(out / "model")
    (out / ".synthgen").mkdir()
    (out / ".synthgen" / "build.json").write_text(json.dumps({"recipe_sha256": "another recipe"}))
    OutputFolder(out).claim(load_recipe(write_recipe(tmp_path)), overwrite=True)
    assert not (out / "model").exists()


def test_inspect_rehashes_the_exported_model(tmp_path: Path) -> None:
    from synthgen.output.manifest import write_manifest
    from synthgen.output.shard_set import load_completed

    ShardSet(tmp_path, ["parquet"], classes=CLASSES).write_shard(0, make_samples(2))
    source = fake_model(tmp_path / "cache")
    model = {"id": "synthgen://msdm-tiny-x", "sha256": sha256_tree(source), "path": str(source)}
    model["exported_path"] = place_model(tmp_path, source, model["sha256"], export=True)
    write_manifest(tmp_path, load_completed(tmp_path), {"classes": list(CLASSES), "model": model})
    assert inspect_output(tmp_path).ok
    (tmp_path / "model" / "unet" / "w.bin").unlink()
    (tmp_path / "model" / "unet" / "w.bin").write_text("edited")  # not through the link: the cache stays intact
    assert any("model: model sha256 does not match" in p for p in inspect_output(tmp_path).problems)
