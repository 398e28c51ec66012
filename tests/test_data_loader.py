"""`synthgen.data`: PyTorch datasets over a build folder written by the project's own shard writers."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from test_shards import make_samples
from torch.utils.data import DataLoader

from synthgen.data import SyntheticDataset, SyntheticShards, class_balanced_sampler
from synthgen.errors import SynthgenError
from synthgen.output.manifest import write_manifest
from synthgen.output.shard_set import ShardSet, load_completed

CLASSES = ("polyp", "normal", "ulcer")  # recipe order: the label index is the position here
SKEWED = ("polyp", "polyp", "polyp", "polyp", "normal", "normal", "ulcer")  # 4 : 2 : 1


def make_build(out: Path, shards: int = 3, per_shard: int = 7, classes_in_manifest: bool = True) -> list:
    """A build folder as `synthgen build` leaves it: shards in both formats and manifest.json."""
    shard_set = ShardSet(out, classes=CLASSES)
    samples = []
    for index in range(shards):
        batch = make_samples(per_shard, seed=index, labels=SKEWED)
        shard_set.write_shard(index, batch)
        samples += batch
    write_manifest(out, load_completed(out), {"classes": list(CLASSES)} if classes_in_manifest else None)
    return samples


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("build")
    return out, make_build(out)


def test_map_dataset_items_labels_and_classes(build) -> None:
    out, samples = build
    ds = SyntheticDataset(out, verify=True)
    assert len(ds) == len(samples) == 21 and ds.classes == list(CLASSES)
    assert ds.keys == [s.key for s in samples]
    assert list(ds.labels) == [CLASSES.index(s.label) for s in samples]
    image, label = ds[4]
    assert image.dtype == torch.float32 and image.shape == (3, 16, 12) and label == CLASSES.index(samples[4].label)
    assert torch.equal(image, torch.from_numpy(np.array(samples[4].image)).permute(2, 0, 1).float() / 255)
    assert ds[-1][1] == ds.labels[-1]
    with pytest.raises(IndexError):
        ds[len(ds)]
    sized = SyntheticDataset(out, transform=lambda im: im.size)
    assert sized[0] == (samples[0].image.size, 0)


def test_classes_fall_back_to_parquet_classlabel(tmp_path) -> None:
    make_build(tmp_path, shards=1, classes_in_manifest=False)
    assert SyntheticDataset(tmp_path).classes == list(CLASSES)


def test_dataloader_batches(build) -> None:
    out, _ = build
    images, labels = next(iter(DataLoader(SyntheticDataset(out), batch_size=5)))
    assert images.shape == (5, 3, 16, 12) and labels.dtype == torch.int64


def keys_seen(ds: SyntheticShards, workers: int) -> list[str]:
    loader = DataLoader(ds, batch_size=None, num_workers=workers)
    return [key for _, _, key in loader]


def test_shards_cover_every_sample_once_across_workers(build, tmp_path) -> None:
    out, samples = build
    everything = sorted(s.key for s in samples)
    seen = keys_seen(SyntheticShards(out, return_key=True), workers=2)  # 3 shards: split by shard
    assert sorted(seen) == everything
    one = tmp_path / "one"
    single = make_build(one, shards=1)  # 1 shard, 2 workers: split by sample position
    assert sorted(keys_seen(SyntheticShards(one, return_key=True), workers=2)) == sorted(s.key for s in single)
    ranks = [keys_seen(SyntheticShards(out, rank=r, world_size=2, return_key=True), workers=0) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == everything and not set(ranks[0]) & set(ranks[1])


def test_shards_labels_and_shuffle(build) -> None:
    out, samples = build
    ds = SyntheticShards(out, shuffle_buffer=8, seed=3, return_key=True)
    assert ds.classes == list(CLASSES) and len(ds) == len(samples)
    first = [(key, label) for _, label, key in ds]
    label_of = {s.key: CLASSES.index(s.label) for s in samples}
    assert all(label_of[key] == label for key, label in first)
    assert [k for k, _ in first] != [s.key for s in samples]
    assert first == [(key, label) for _, label, key in ds]  # same seed and epoch: same order
    ds.set_epoch(1)
    assert [key for _, _, key in ds] != [k for k, _ in first]


def test_class_balanced_sampler_frequencies(build) -> None:
    out, _ = build
    ds = SyntheticDataset(out)
    assert Counter(ds.labels.tolist()) == {0: 12, 1: 6, 2: 3}
    draws = list(class_balanced_sampler(ds, num_samples=6000, seed=0))
    counts = np.bincount(ds.labels[draws], minlength=3) / len(draws)
    assert np.allclose(counts, 1 / 3, atol=0.03)
    assert draws == list(class_balanced_sampler(ds, num_samples=6000, seed=0))
    assert len(list(class_balanced_sampler(ds))) == len(ds)


def test_corrupted_shard_is_named(tmp_path) -> None:
    make_build(tmp_path, shards=2)
    for rel in ("data/shard-00001.parquet", "webdataset/shard-00001.tar"):
        path = tmp_path / rel
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(SynthgenError, match=r"shard-00001\.parquet: sha256 does not match"):
        SyntheticDataset(tmp_path, verify=True)
    with pytest.raises(SynthgenError, match=r"shard-00001\.tar: sha256 does not match"):
        SyntheticShards(tmp_path, verify=True)


def test_bad_build_dirs(tmp_path) -> None:
    with pytest.raises(SynthgenError, match="no manifest.json") as error:
        SyntheticDataset(tmp_path / "nowhere")
    assert "\n" not in str(error.value) and "nowhere" in str(error.value)
    make_build(tmp_path / "b", shards=1)
    (tmp_path / "b/data/shard-00000.parquet").unlink()
    with pytest.raises(SynthgenError, match="shard-00000.parquet: shard listed in manifest.json is missing"):
        SyntheticDataset(tmp_path / "b")
    (tmp_path / "c").mkdir()
    (tmp_path / "c/manifest.json").write_text(json.dumps({"shards": [], "classes": ["a"]}))
    with pytest.raises(SynthgenError, match="no parquet shards"):
        SyntheticDataset(tmp_path / "c")
    (tmp_path / "c/manifest.json").write_text("{broken")
    with pytest.raises(SynthgenError, match="unreadable manifest"):
        SyntheticShards(tmp_path / "c")


def test_eval_reads_a_build_through_the_dataset(build, monkeypatch) -> None:
    """`synthgen eval --synthetic BUILD` reads the build as training code does: a capped read decodes only the
    images it keeps, with the prompts and the manifest's class names, and the same images as the source reader."""
    from synthgen.evaluation.image_sets import read_set

    out, samples = build
    decoded: list[int] = []
    real_getitem = SyntheticDataset.__getitem__

    def counting(self, index):
        decoded.append(index)
        return real_getitem(self, index)

    monkeypatch.setattr(SyntheticDataset, "__getitem__", counting)
    capped = read_set("synthetic", out, max_per_class=2)
    assert len(decoded) == len(capped) == 6 and capped.counts() == {"normal": 2, "polyp": 2, "ulcer": 2}
    by_key = {s.key: s for s in samples}
    for key, label, prompt, image in zip(capped.keys, capped.labels, capped.prompts, capped.images, strict=True):
        assert (by_key[key].label, by_key[key].text) == (label, prompt)
        assert np.array_equal(np.asarray(image), np.asarray(by_key[key].image.convert("RGB")))
    assert capped.fingerprint == SyntheticDataset(out).fingerprint != ""
    whole = read_set("synthetic", out)
    assert whole.keys == [s.key for s in samples]
    from synthgen.sources import open_source

    via_source = read_set("synthetic", open_source(str(out)), max_per_class=2)  # the generic reader's draw
    assert via_source.keys == capped.keys
