"""Shard writers, resumable shard sets and the manifest."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import synthgen.output.shard_set as shard_set_module
from synthgen.output.folder import OutputFolder
from synthgen.output.manifest import write_manifest
from synthgen.output.shard_set import ShardSet, load_completed
from synthgen.output.writers import ParquetShardWriter, WebDatasetShardWriter, encode_image
from synthgen.provenance import PROVENANCE_FIELDS, provenance_record, sha256_file
from synthgen.sample import Sample

CLASSES = ("polyp", "normal")  # recipe order: polyp is label 0, normal label 1


def make_samples(n: int, seed: int = 0, labels: tuple[str, ...] = CLASSES) -> list[Sample]:
    """Small random RGB images with complete provenance, as the generator would hand them over."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        label = labels[i % len(labels)]
        prompt = f"an endoscopy image of {label} number {i} — ünïcode"
        image = Image.fromarray(rng.integers(0, 256, (16, 12, 3), dtype=np.uint8))
        record = provenance_record(
            label=label,
            prompt=prompt,
            seed=seed * 1000 + i,
            recipe_name="demo",
            recipe_sha256="r" * 64,
            model_id="tiny-msdm",
            model_sha256="m" * 64,
            scheduler="ddim",
            steps=20,
            guidance_scale=3.5,
            width=12,
            height=16,
            synthgen_version="0.1.0",
            created_at="2024-01-01T00:00:00Z",
            audit_embedder="pixel",
            audit_threshold=0.95,
            audit_similarity=0.5 + i / 100,
            audit_flagged=False,
        )
        samples.append(Sample(key=f"s{seed}_{i:04d}", image=image, text=prompt, label=label, metadata=record))
    return samples


def test_parquet_schema_and_provenance_columns(tmp_path) -> None:
    samples = make_samples(3)
    writer = ParquetShardWriter(tmp_path, 0, "png", 95, classes=CLASSES)
    for sample in samples:
        writer.write(sample)
    shard = writer.close()
    assert shard.path == "data/shard-00000.parquet" and shard.num_samples == 3
    assert shard.sha256 == sha256_file(tmp_path / shard.path)
    assert shard.bytes == (tmp_path / shard.path).stat().st_size
    table = pq.read_table(tmp_path / shard.path)
    assert table.column_names == ["key", "image", "label", "label_name", *PROVENANCE_FIELDS[1:]]
    assert PROVENANCE_FIELDS[0] == "label" and str(table.schema.field("label").type) == "int64"
    assert table.schema.field("image").type.names == ["bytes", "path"]
    assert table.column("seed").type == "int64" and str(table.column("guidance_scale").type) == "float"
    row = table.to_pylist()[1]
    assert row["image"]["path"] == f"{samples[1].key}.png"
    assert row["dp_epsilon"] is None and row["audit_attempt"] == 0
    assert {k: row[k] for k in ("label", "label_name", "prompt", "seed")} == {
        "label": CLASSES.index(samples[1].label),
        "label_name": samples[1].label,
        "prompt": samples[1].text,
        "seed": samples[1].metadata["seed"],
    }
    hf = json.loads(table.schema.metadata[b"huggingface"])
    assert hf["info"]["features"]["image"] == {"_type": "Image"}
    assert hf["info"]["features"]["label"] == {"names": list(CLASSES), "_type": "ClassLabel"}
    assert not list(tmp_path.glob("data/.*.tmp"))


def test_datasets_decodes_parquet_images(tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    samples = make_samples(4)
    ShardSet(tmp_path, ["parquet"], classes=CLASSES).write_shard(0, samples)
    ds = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "data" / "*.parquet"), split="train", cache_dir=str(tmp_path / "hf-cache")
    )
    assert ds.num_rows == 4
    for row, sample in zip(ds, samples, strict=True):
        assert isinstance(row["image"], Image.Image)
        assert np.array_equal(np.asarray(row["image"]), np.asarray(sample.image))
        assert (row["key"], row["label_name"], row["prompt"]) == (sample.key, sample.label, sample.text)
        assert ds.features["label"].int2str(row["label"]) == sample.label
    assert isinstance(ds.features["label"], datasets.ClassLabel) and ds.features["label"].names == list(CLASSES)


def test_webdataset_round_trip_and_determinism(tmp_path) -> None:
    wds = pytest.importorskip("webdataset")
    samples = make_samples(3)
    paths = []
    for name in ("a", "b"):
        writer = WebDatasetShardWriter(tmp_path / name, 0, "png", classes=CLASSES)
        for sample in make_samples(3):
            writer.write(sample)
        paths.append(tmp_path / name / writer.close().path)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    loaded = list(wds.WebDataset(str(paths[0]), shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in loaded] == [s.key for s in samples]
    for got, sample in zip(loaded, samples, strict=True):
        assert got["txt"] == sample.text
        assert got["json"]["label_name"] == sample.label and got["json"]["key"] == sample.key
        assert got["cls"] == got["json"]["label"] == CLASSES.index(sample.label)
        assert got["json"]["seed"] == sample.metadata["seed"]
        assert np.array_equal(np.asarray(got["png"]), np.asarray(sample.image))


def test_jpeg_encoding_and_extension(tmp_path) -> None:
    gray = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), mode="L")
    assert encode_image(gray, "jpeg", 90)[:2] == b"\xff\xd8"
    assert encode_image(gray, "png") == encode_image(gray.copy(), "png")
    ShardSet(tmp_path, ["parquet", "webdataset"], "jpeg", 80, classes=CLASSES).write_shard(0, make_samples(2))
    row = pq.read_table(tmp_path / "data/shard-00000.parquet").to_pylist()[0]
    assert row["image"]["path"].endswith(".jpg") and row["image"]["bytes"][:2] == b"\xff\xd8"
    wds = pytest.importorskip("webdataset")
    first = next(iter(wds.WebDataset(str(tmp_path / "webdataset/shard-00000.tar"), shardshuffle=False)))
    assert first["jpg"] == row["image"]["bytes"]
    with pytest.raises(ValueError, match="image format"):
        encode_image(gray, "gif")


@pytest.mark.parametrize("key", ["a.b", "a/b", "", "ä"])
def test_invalid_key_rejected(tmp_path, key: str) -> None:
    sample = make_samples(1)[0]
    sample.key = key
    with pytest.raises(ValueError, match="invalid sample key"):
        ShardSet(tmp_path, classes=CLASSES).write_shard(0, [sample])
    assert not list(tmp_path.rglob("shard-*"))


def test_failure_mid_shard_leaves_nothing(tmp_path, monkeypatch) -> None:
    shard_set = ShardSet(tmp_path, classes=CLASSES)
    shard_set.write_shard(0, make_samples(3))
    calls = {"n": 0}
    real_encode = shard_set_module.encoded_bytes

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(shard_set_module, "encoded_bytes", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        shard_set.write_shard(1, make_samples(4, seed=1))
    assert shard_set.is_complete(0) and not (tmp_path / "data/shard-00001.parquet").exists()
    # Rewriting an already complete shard that fails also leaves nothing of it behind.
    broken = make_samples(3, seed=2)
    broken[1].image = None  # type: ignore[assignment]
    with pytest.raises(ValueError, match="PIL image"):
        shard_set.write_shard(0, broken)
    # A standalone writer's abort() drops its temp file and never creates the shard.
    for cls in (ParquetShardWriter, WebDatasetShardWriter):
        writer = cls(tmp_path, 5, classes=CLASSES)
        writer.write(make_samples(1)[0])
        writer.abort()
    leftovers = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []
    assert load_completed(tmp_path) == {} and not shard_set.is_complete(0)


def test_completion_markers_and_tampering(tmp_path) -> None:
    shard_set = ShardSet(tmp_path, classes=CLASSES)
    for index in range(3):
        shard_set.write_shard(index, make_samples(4, seed=index))
    completed = load_completed(tmp_path)
    assert sorted(completed) == [0, 1, 2] and all(shard_set.is_complete(i) for i in range(3))
    assert completed[1].class_counts == {"normal": 2, "polyp": 2}
    assert completed[1].keys == [s.key for s in make_samples(4, seed=1)]
    assert {f.format for f in completed[1].files} == {"parquet", "webdataset"}
    # Tamper with shard 1 after its marker was written: it must be redone.
    tar = tmp_path / "webdataset/shard-00001.tar"
    data = bytearray(tar.read_bytes())
    data[600] ^= 0xFF
    tar.write_bytes(bytes(data))
    (tmp_path / "data/shard-00002.parquet").unlink()
    assert sorted(load_completed(tmp_path)) == [0]
    assert not shard_set.is_complete(1) and not shard_set.is_complete(2)
    # A format the marker does not cover makes the shard incomplete for that ShardSet only.
    ShardSet(tmp_path / "p", ["parquet"], classes=CLASSES).write_shard(0, make_samples(2))
    assert not ShardSet(tmp_path / "p", classes=CLASSES).is_complete(0)
    assert ShardSet(tmp_path / "p", ["parquet"], classes=CLASSES).is_complete(0)
    OutputFolder(tmp_path / "p").marker(0).write_text("{not json")
    assert load_completed(tmp_path / "p") == {}


def test_manifest_matches_files(tmp_path) -> None:
    shard_set = ShardSet(tmp_path, classes=CLASSES)
    for index in range(2):
        shard_set.write_shard(index, make_samples(3, seed=index))
    path = write_manifest(tmp_path, load_completed(tmp_path), {"recipe_name": "demo", "dp_epsilon": None})
    manifest = json.loads(path.read_text())
    assert manifest["recipe_name"] == "demo" and manifest["synthgen_version"]
    assert len(manifest["shards"]) == 4
    for entry in manifest["shards"]:
        assert sha256_file(tmp_path / entry["path"]) == entry["sha256"]
        assert (tmp_path / entry["path"]).stat().st_size == entry["bytes"]
    assert manifest["totals"]["num_samples"] == 6 and manifest["totals"]["num_shards"] == 2
    assert manifest["totals"]["per_format"]["parquet"]["num_samples"] == 6
    assert manifest["class_counts"] == {"normal": 2, "polyp": 4}
    with pytest.raises(ValueError, match="shards"):
        write_manifest(tmp_path, [], {"shards": []})


def test_provenance_outside_schema_never_written(tmp_path) -> None:
    sample = make_samples(1)[0]
    sample.metadata["nearest_training_file"] = "patient_0042.dcm"
    ShardSet(tmp_path, classes=CLASSES).write_shard(0, [sample])
    assert b"patient_0042" not in (tmp_path / "webdataset/shard-00000.tar").read_bytes()
    assert "nearest_training_file" not in pq.read_table(tmp_path / "data/shard-00000.parquet").column_names
