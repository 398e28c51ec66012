"""Grayscale in, grayscale out (issue 13): `channels: 1 | 3 | auto` through training data, VAE, generation, writers.

A tiny grayscale imagefolder (made here) trains a tiny MSDM with `channels: auto` (→ 1) and a patient-aware
validation split; the build writes mode-L images that `datasets` loads, and the audit still runs on them.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image, ImageDraw

from synthgen.build import build
from synthgen.output.writers import encode_image
from synthgen.recipe import load_recipe
from synthgen.training.data import TrainingData, grayscale_count, to_grayscale
from synthgen.training.msdm_run import choose_channels

LABELS = ("opacity", "clear")


def gray_folder(root: Path, n: int = 12) -> Path:
    """Radiograph-like 32 px grayscale PNGs (mode L) with labels, captions and patient ids (two without)."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = LABELS[i % 2]
        image = Image.fromarray(rng.integers(60, 90, (32, 32), dtype=np.uint8), "L")
        draw = ImageDraw.Draw(image)
        draw.ellipse((6, 4, 26, 28), outline=200, width=2)
        if label == "opacity":
            draw.ellipse((12 + i % 3, 10, 20 + i % 3, 18), fill=230)
        name = f"images/xray_{i:02d}.png"
        image.save(root / name)
        patient = f"p{i // 2}" if i < n - 2 else ""
        rows.append({"file_name": name, "label": label, "text": f"chest x-ray, {label}", "patient_id": patient})
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


RECIPE = {
    "name": "gray",
    "model": {
        "train": {
            "data": {"path": "data"},
            "resolution": 32,
            "vae_steps": 2,
            "unet_steps": 2,
            "batch_size": 4,
            "validation_split": 0.3,
            "split_by": "patient_id",
        }
    },
    "classes": {label: {"count": 2, "prompts": [f"chest x-ray, {label}"]} for label in LABELS},
    "sampling": {"steps": 2, "batch_size": 4},
    "audit": {"threshold": 0.99},
    "output": {"dir": "out", "shard_size": 4, "formats": ["parquet", "webdataset"]},
}


@pytest.fixture(scope="module")
def gray_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gray")
    gray_folder(folder / "data")
    (folder / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    mp = pytest.MonkeyPatch()
    mp.setenv("SYNTHGEN_CACHE", str(folder / "cache"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        result = build(load_recipe(folder / "recipe.yaml"))
    finally:
        mp.undo()
    return result.out_dir


def model_folder(out_dir: Path) -> Path:
    return next((out_dir.parent / "cache" / "models").glob("msdm-*"))


def test_grayscale_source_builds_a_grayscale_set(gray_build: Path) -> None:
    rows = pq.read_table(gray_build / "data").to_pylist()
    assert len(rows) == 4
    assert {Image.open(io.BytesIO(row["image"]["bytes"])).mode for row in rows} == {"L"}
    import datasets

    ds = datasets.load_dataset("parquet", data_files=str(gray_build / "data" / "*.parquet"), split="train")
    assert isinstance(ds.features["image"], datasets.Image) and ds[0]["image"].mode == "L"
    assert isinstance(ds.features["label"], datasets.ClassLabel)
    assert ds.features["label"].names == sorted(RECIPE["classes"])  # the recipe file's order (safe_dump sorts keys)
    import webdataset as wds

    tars = sorted(str(p) for p in (gray_build / "webdataset").glob("*.tar"))
    assert {Image.open(io.BytesIO(s["png"])).mode for s in wds.WebDataset(tars, shardshuffle=False)} == {"L"}
    summary = json.loads((gray_build / "audit" / "summary.json").read_text())
    assert summary["n_candidates"] == 4  # the copy audit ran on the grayscale candidates


def test_model_records_channels_and_the_patient_split(gray_build: Path) -> None:
    folder = model_folder(gray_build)
    info = json.loads((folder / "synthgen_model.json").read_text())
    assert info["channels"] == 1 and info["training"]["channels"] == "auto"
    assert "every training image is grayscale" in info["channels_reason"]
    assert json.loads((folder / "vae" / "config.json").read_text())["in_channels"] == 1
    split = info["training_data"]["split"]
    assert split["by"] == "patient_id" and split["images_without_group"] == 2
    assert split["groups"]["validation"] >= 1 and info["training_data"]["validation_images"] >= 2
    card = (folder / "README.md").read_text()
    assert "Channels: 1 (grayscale" in card and "validation split by `patient_id`" in card


def test_membership_inference_scores_a_grayscale_model(gray_build: Path, tmp_path: Path) -> None:
    from synthgen.audit.entry import run_audit
    from synthgen.sources import open_source

    data = gray_build.parent / "data"
    summary = run_audit(
        open_source(str(data)), None, tmp_path / "audit", holdout=open_source(str(data)),
        model=model_folder(gray_build), max_images=4, privacy_metrics=False,
    )  # fmt: skip
    assert summary["membership"]["n_members"] == 4


def test_auto_channels_decisions() -> None:
    gray = np.repeat(np.arange(2 * 16, dtype=np.uint8).reshape(2, 1, 4, 4), 3, axis=1)
    colour = gray.copy()
    colour[1, 0] += 40  # a red cast: far beyond JPEG colour noise
    noisy = gray.copy()
    noisy[1, 2, 0, 0] += 6  # JPEG-sized chroma noise: still gray
    data = lambda images: TrainingData(images, ["c"] * len(images), ["l"] * len(images), 0)  # noqa: E731
    assert choose_channels("auto", data(gray), private=False)[0] == 1
    channels, reason = choose_channels("auto", data(colour), private=False)
    assert channels == 3 and "1 of 2 training images have colour" in reason
    assert choose_channels("auto", data(gray), private=True)[0] == 3  # not decided by private data
    assert choose_channels(1, data(colour), private=False) == (1, "set in the recipe")
    assert grayscale_count(gray) == 2 and grayscale_count(colour) == 1 and grayscale_count(noisy) == 2
    mostly_gray = np.concatenate([np.repeat(gray[:1], 19, axis=0), colour[1:]])  # 19 gray, 1 colour: 95%
    channels, reason = choose_channels("auto", data(mostly_gray), private=False)
    assert channels == 1 and "19 of 20" in reason
    luma = to_grayscale(data(gray))
    assert luma.images.shape == (2, 1, 4, 4) and np.array_equal(luma.images[:, 0], gray[:, 0])


def test_writers_keep_grayscale() -> None:
    image = Image.new("L", (8, 8), 77)
    for fmt in ("png", "jpeg"):
        assert Image.open(io.BytesIO(encode_image(image, fmt))).mode == "L"


def test_one_channel_vae_and_rgb_default() -> None:
    from synthgen.models.msdm import PRESETS, build_vae

    assert build_vae(PRESETS["tiny"], 32, 1).config.out_channels == 1
    assert build_vae(PRESETS["tiny"], 32).config.in_channels == 3
