"""PyTorch datasets over a synthgen build's output folder, for training code that consumes a build.

`SyntheticDataset` is map-style over the Parquet shards (random access, samplers, `class_balanced_sampler`);
`SyntheticShards` streams the WebDataset tars (sharded across DataLoader workers and ranks, constant memory).
Both read only the shards `manifest.json` lists, take the class names from the build (index ↔ name as in the
recipe), and can re-hash every shard against the manifest first (`verify=True`), so a model is never trained
on a modified or truncated build. torch is imported at module level: this module is for training code, and
nothing in the CLI imports it at top level.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, WeightedRandomSampler, get_worker_info

from synthgen.errors import SynthgenError
from synthgen.provenance import sha256_file

Transform = Callable[[Image.Image], Any]
_IMAGE_EXTS = ("png", "jpg", "jpeg")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as float32 (C, H, W) in [0, 1]; grayscale stays one channel (no torchvision needed)."""
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB" if image.mode in ("RGBA", "P", "CMYK", "YCbCr") else "L")
    array = np.array(image, dtype=np.uint8)  # a writable copy: torch warns on read-only buffers
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array)).float().div_(255.0)


def _decode(data: bytes, transform: Transform | None, where: str = "") -> Any:
    try:
        with Image.open(io.BytesIO(data)) as opened:
            image = opened.copy()  # decode now, while the buffer is open
    except OSError as error:
        raise SynthgenError(f"{where}: undecodable image ({error})") from None
    return transform(image) if transform is not None else to_tensor(image)


class _Build:
    """What a dataset needs of a build: its manifest, classes and the listed shard files of one format."""

    def __init__(self, build_dir: str | Path, fmt: str, verify: bool) -> None:
        self.root = Path(build_dir)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise SynthgenError(f"{self.root}: no manifest.json; not a synthgen build folder")
        try:
            self.manifest = json.loads(path.read_text(encoding="utf-8"))
            entries = [e for e in self.manifest["shards"] if e["format"] == fmt]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise SynthgenError(f"{path}: unreadable manifest ({error})") from None
        if not entries:
            have = sorted({e.get("format") for e in self.manifest["shards"] if isinstance(e, dict)})
            raise SynthgenError(f"{self.root}: the build has no {fmt} shards (formats: {have or 'none'})")
        self.entries = sorted(entries, key=lambda e: e["index"])
        for entry in self.entries:
            self._check(entry, verify)
        self.files = [self.root / e["path"] for e in self.entries]

    def _check(self, entry: dict[str, Any], verify: bool) -> None:
        file = self.root / entry["path"]
        if not file.is_file():
            raise SynthgenError(f"{file}: shard listed in manifest.json is missing")
        if verify and (file.stat().st_size != entry.get("bytes") or sha256_file(file) != entry.get("sha256")):
            raise SynthgenError(f"{file}: sha256 does not match manifest.json (modified or corrupt shard)")

    def classes(self) -> list[str]:
        """The manifest's `classes`, else the Parquet `label` ClassLabel names (both in recipe order)."""
        classes = self.manifest.get("classes")
        if isinstance(classes, list) and classes:
            return [str(c) for c in classes]
        for entry in self.manifest["shards"]:
            if entry.get("format") == "parquet" and (self.root / entry["path"]).is_file():
                metadata = pq.read_schema(self.root / entry["path"]).metadata or {}
                features = json.loads(metadata.get(b"huggingface", b"{}")).get("info", {}).get("features", {})
                names = features.get("label", {}).get("names")
                if names:
                    return [str(n) for n in names]
        raise SynthgenError(f"{self.root}: manifest.json has no 'classes' and no Parquet shard names them")


class SyntheticDataset(Dataset):
    """Map-style dataset over a build's Parquet shards: `ds[i]` is (image, label index).

    The image is a float32 (C, H, W) tensor in [0, 1], or `transform(PIL image)` when a transform is given.
    The encoded image bytes are read into memory once (pyarrow buffers, shared with forked DataLoader
    workers); decoding happens per item. For builds larger than memory, stream them with `SyntheticShards`.
    """

    def __init__(
        self,
        build_dir: str | Path,
        transform: Transform | None = None,
        format: str = "parquet",
        *,
        verify: bool = False,
    ) -> None:
        if format != "parquet":
            raise SynthgenError(f"SyntheticDataset reads Parquet shards; use SyntheticShards for {format!r}")
        build = _Build(build_dir, "parquet", verify)
        self.root, self.transform, self.classes = build.root, transform, build.classes()
        keys, labels, images, prompts = [], [], [], []
        for file, entry in zip(build.files, build.entries, strict=True):
            try:
                table = pq.read_table(file, columns=["key", "image", "label", "prompt"])
            except (OSError, pa.ArrowException) as error:
                raise SynthgenError(f"{file}: unreadable Parquet shard ({error})") from None
            if table.num_rows != entry.get("num_samples", table.num_rows):
                raise SynthgenError(f"{file}: {table.num_rows} rows, manifest.json says {entry['num_samples']}")
            keys += table.column("key").to_pylist()
            prompts += table.column("prompt").to_pylist()
            labels.append(table.column("label").to_numpy(zero_copy_only=False))
            images.append(table.column("image").combine_chunks().flatten()[0])  # the bytes child, offsets applied
        self.keys: list[str] = keys
        self.prompts: list[str] = prompts  # the text each image was generated from
        self.fingerprint = hashlib.sha256("".join(e["sha256"] for e in build.entries).encode()).hexdigest()
        self.labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        self._images = images
        self._starts = np.cumsum([0] + [len(a) for a in images])
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise SynthgenError(f"{self.root}: labels outside the {len(self.classes)} classes {self.classes}")

    def __len__(self) -> int:
        return len(self.labels)

    def image_bytes(self, index: int) -> bytes:
        """The encoded image (PNG or JPEG) of sample `index`, as the build wrote it."""
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        index %= len(self)
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self._images[shard][index - int(self._starts[shard])].as_py()

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = _decode(self.image_bytes(index), self.transform, f"{self.root} sample {self.keys[index]}")
        return image, int(self.labels[index])


class SyntheticShards(IterableDataset):
    """Streams a build's WebDataset tars as (image, label index[, key]), each sample once per epoch in all.

    Work is split over `world_size` ranks and each rank's DataLoader workers: by whole shards when there are
    at least as many shards as consumers, else by sample position. `shuffle_buffer > 0` shuffles the shard
    order and samples within a buffer of that size, seeded by `seed` and the epoch (`set_epoch`).
    """

    def __init__(
        self,
        build_dir: str | Path,
        transform: Transform | None = None,
        shuffle_buffer: int = 0,
        seed: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
        verify: bool = False,
        return_key: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise SynthgenError(f"rank {rank} is not in range for world_size {world_size}")
        build = _Build(build_dir, "webdataset", verify)
        self.root, self.classes, self.files = build.root, build.classes(), build.files
        self.num_samples = sum(int(e.get("num_samples", 0)) for e in build.entries)
        self.transform, self.shuffle_buffer, self.seed = transform, shuffle_buffer, seed
        self.rank, self.world_size, self.epoch, self.return_key = rank, world_size, 0, return_key

    def set_epoch(self, epoch: int) -> None:
        """Call once per epoch (before iterating) for a new shuffle order."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples in the whole build (all ranks); a rank sees about len / world_size."""
        return self.num_samples

    def _consumer(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.world_size * workers

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        me, consumers = self._consumer()
        rng = random.Random(f"{self.seed}:{self.epoch}:{me}")
        files = list(self.files)
        if self.shuffle_buffer > 0:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(files)  # same order for every consumer
        by_shard = len(files) >= consumers
        mine = files[me::consumers] if by_shard else files
        samples = self._samples(mine, None if by_shard else (me, consumers))
        for key, data, label in _shuffled(samples, self.shuffle_buffer, rng):
            image = _decode(data, self.transform, f"{self.root} sample {key}")
            yield (image, label, key) if self.return_key else (image, label)

    def _samples(self, files: list[Path], stride: tuple[int, int] | None) -> Iterator[tuple[str, bytes, int]]:
        position = 0
        for file in files:
            for sample in _read_tar(file, len(self.classes)):
                if stride is None or position % stride[1] == stride[0]:
                    yield sample
                position += 1


def _read_tar(file: Path, n_classes: int) -> Iterator[tuple[str, bytes, int]]:
    """(key, image bytes, label) per sample of one tar; a sample's files are consecutive, grouped by key."""
    key, parts = None, {}
    try:
        with tarfile.open(file, "r") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                stem, _, ext = member.name.rpartition("/")[2].partition(".")
                if stem != key:
                    if key is not None:
                        yield _sample(file, key, parts, n_classes)
                    key, parts = stem, {}
                if ext in _IMAGE_EXTS or ext == "cls":
                    parts[ext] = tar.extractfile(member).read()  # type: ignore[union-attr]
            if key is not None:
                yield _sample(file, key, parts, n_classes)
    except (OSError, tarfile.TarError) as error:
        raise SynthgenError(f"{file}: unreadable WebDataset shard ({error})") from None


def _sample(file: Path, key: str, parts: dict[str, bytes], n_classes: int) -> tuple[str, bytes, int]:
    image = next((parts[e] for e in _IMAGE_EXTS if e in parts), None)
    try:
        label = int(parts["cls"])
    except (KeyError, ValueError):
        label = -1
    if image is None or not 0 <= label < n_classes:
        raise SynthgenError(f"{file}: sample {key} lacks an image or a valid .cls label")
    return key, image, label


def _shuffled(items: Iterator[Any], buffer: int, rng: random.Random) -> Iterator[Any]:
    """Shuffle a stream within a buffer of `buffer` items (0: keep the order)."""
    if buffer <= 0:
        yield from items
        return
    pool: list[Any] = []
    for item in items:
        if len(pool) < buffer:
            pool.append(item)
            continue
        j = rng.randrange(len(pool))
        pool[j], item = item, pool[j]
        yield item
    rng.shuffle(pool)
    yield from pool


def class_balanced_sampler(
    dataset: SyntheticDataset | Any, num_samples: int | None = None, seed: int = 0
) -> WeightedRandomSampler:
    """Draws every class equally often (weights 1 / class count), with replacement; `num_samples` per epoch.

    Works for any dataset with a `.labels` array (default epoch length: the dataset's length).
    """
    labels = np.asarray(getattr(dataset, "labels", []), dtype=np.int64)
    if labels.size == 0:
        raise SynthgenError("class_balanced_sampler needs a non-empty dataset with a .labels array")
    counts = np.bincount(labels)
    weights = torch.from_numpy(1.0 / counts[labels]).double()
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(weights, num_samples or len(labels), replacement=True, generator=generator)
