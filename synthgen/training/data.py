"""Training images: decoded once to uint8 tensors (cached beside the checkpoints), split into train/validation.

The split is by image, or by group with `split_by` (a patient column, or `sequence`: video frames inferred from
file names; see `synthgen.sources.groups`), so no patient or video has images on both sides. A grayscale model
(`channels: 1`) gets the images as one luma channel.

Images are kept as uint8 (a quarter of float32's memory: 10k images at 256 px are 2 GiB, not 8) and turned
into [-1, 1] floats per batch. The decoded cache lives in DIR/.checkpoints so a resumed run does not decode
the data again; it is deleted when training finishes (a model folder must not carry training images).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthgen.atomic import atomic_path, write_json
from synthgen.errors import SynthgenError
from synthgen.sources.base import Source, meta_str
from synthgen.sources.groups import SEQUENCE, column_groups, holdout_mask, sequence_groups, thumbnail_vector


@dataclass
class TrainingData:
    """Decoded training images with their captions and labels (index-aligned)."""

    images: np.ndarray  # (n, C, H, W) uint8: C = 3 (RGB) or 1 (grayscale)
    captions: list[str]
    labels: list[str]
    skipped: int
    groups: list[str] | None = None  # split group per image (`split_by`), else None

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, indices: np.ndarray) -> TrainingData:
        return TrainingData(
            self.images[indices],
            [self.captions[i] for i in indices],
            [self.labels[i] for i in indices],
            self.skipped,
            None if self.groups is None else [self.groups[i] for i in indices],
        )

    def label_counts(self) -> dict[str, int]:
        return dict(sorted({lb: self.labels.count(lb) for lb in set(self.labels)}.items()))

    def floats(self, indices) -> np.ndarray:
        """Images `indices` as float32 in [-1, 1] (what the VAE sees)."""
        return np.ascontiguousarray(self.images[np.asarray(indices)], dtype=np.float32) / 127.5 - 1.0


def decode_training_data(
    source: Source, resolution: int, split_by: str | None = None, field: str = "split_by"
) -> TrainingData:
    """Decode every training image to a square `resolution` array (centre crop); skipped images are counted.

    With `split_by`, each image's split group comes along (`field` names the setting in errors).
    """
    from PIL import Image, ImageOps

    arrays, captions, labels, keys, values = [], [], [], [], []
    columns: set[str] = set()
    for sample in source:
        image = ImageOps.fit(sample.image.convert("RGB"), (resolution, resolution), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
        captions.append(sample.text or sample.label)
        labels.append(sample.label)
        keys.append(sample.key)
        if split_by not in (None, SEQUENCE):
            columns.update(sample.metadata)
            values.append(meta_str(sample.metadata.get(split_by)))
    if not arrays:
        raise SynthgenError(f"{source.description}: no readable training images")
    # C-contiguous, as np.load gives it: a channels-last layout would change conv rounding after a resume.
    images = np.ascontiguousarray(np.stack(arrays))
    groups = None
    if split_by == SEQUENCE:
        groups = sequence_groups(keys, np.stack([thumbnail_vector(image) for image in images]))
    elif split_by is not None:
        if split_by not in columns:
            names = ", ".join(sorted(columns)) or "none"
            raise SynthgenError(f"{field}: {source.description} has no column {split_by!r} (columns: {names})")
        groups, _ = column_groups(values, keys)
    return TrainingData(images, captions, labels, len(source.skipped), groups)


def load_training_data(
    source: Source,
    resolution: int,
    cache_dir: Path | None = None,
    split_by: str | None = None,
    field: str = "split_by",
) -> TrainingData:
    """The decoded data, from `cache_dir` when it holds this source at this resolution, else decoded (and cached)."""
    if cache_dir is None:
        return decode_training_data(source, resolution, split_by, field)
    identity = f"{source.fingerprint()}:{resolution}" + (f":{split_by}" if split_by else "")
    key = hashlib.sha256(identity.encode()).hexdigest()
    meta_file, image_file = cache_dir / "data.json", cache_dir / "images.npy"
    if meta_file.is_file() and image_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("key") == key:
            images = np.load(image_file)
            return TrainingData(images, meta["captions"], meta["labels"], meta["skipped"], meta.get("groups"))
    data = decode_training_data(source, resolution, split_by, field)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(image_file) as tmp, open(tmp, "wb") as handle:
        np.save(handle, data.images)
    record = {"key": key, "captions": data.captions, "labels": data.labels, "skipped": data.skipped}
    if data.groups is not None:
        record["groups"] = data.groups
    write_json(meta_file, record)
    return data


def drop_cache(cache_dir: Path) -> None:
    shutil.rmtree(cache_dir, ignore_errors=True)


def split_indices(n: int, validation_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic, disjoint (train, validation) index arrays; validation gets floor(n * split) images.

    Depends only on (n, split, seed), so a resumed run holds out exactly the same images.
    """
    n_val = min(int(n * validation_split), n - 1) if validation_split > 0 else 0
    order = np.random.default_rng([seed, 0x5EED]).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def split_groups(groups: list[str], validation_split: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, validation) index arrays that keep every group on one side (`holdout_mask`)."""
    held = holdout_mask(groups, validation_split, seed)
    return np.flatnonzero(~held), np.flatnonzero(held)


# A pixel whose channels differ by at most this much (of 255) is gray: JPEG's chroma subsampling leaves a few
# levels of colour noise in grayscale images saved as RGB JPEGs.
GRAY_TOLERANCE = 10


def grayscale_count(images: np.ndarray, chunk: int = 256, tolerance: int = GRAY_TOLERANCE) -> int:
    """How many of the (n, C, H, W) images are grayscale: one channel, or 99% of pixels within `tolerance`."""
    if images.shape[1] == 1:
        return len(images)
    count = 0
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].astype(np.int16)
        spread = part.max(axis=1) - part.min(axis=1)  # (n, H, W): how far a pixel is from gray
        count += int((np.percentile(spread.reshape(len(part), -1), 99, axis=1) <= tolerance).sum())
    return count


def to_grayscale(data: TrainingData) -> TrainingData:
    """The same data as one luma channel (ITU-R 601, as PIL's "L"); grayscale RGB keeps its exact values."""
    if data.images.shape[1] == 1:
        return data
    weights = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)[None, :, None, None]
    luma = np.empty((len(data), 1, *data.images.shape[2:]), dtype=np.uint8)
    for start in range(0, len(data), 256):
        part = data.images[start : start + 256].astype(np.float32)
        luma[start : start + 256] = np.clip(np.rint((part * weights).sum(axis=1, keepdims=True)), 0, 255)
    return TrainingData(luma, data.captions, data.labels, data.skipped, data.groups)
