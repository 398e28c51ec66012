"""Training images: decoded once to uint8 tensors (cached beside the checkpoints), split into train/validation.

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
from synthgen.sources.base import Source


@dataclass
class TrainingData:
    """Decoded training images with their captions and labels (index-aligned)."""

    images: np.ndarray  # (n, 3, H, W) uint8
    captions: list[str]
    labels: list[str]
    skipped: int

    def __len__(self) -> int:
        return len(self.captions)

    def subset(self, indices: np.ndarray) -> TrainingData:
        return TrainingData(
            self.images[indices],
            [self.captions[i] for i in indices],
            [self.labels[i] for i in indices],
            self.skipped,
        )

    def label_counts(self) -> dict[str, int]:
        return dict(sorted({lb: self.labels.count(lb) for lb in set(self.labels)}.items()))

    def floats(self, indices) -> np.ndarray:
        """Images `indices` as float32 in [-1, 1] (what the VAE sees)."""
        return np.ascontiguousarray(self.images[np.asarray(indices)], dtype=np.float32) / 127.5 - 1.0


def decode_training_data(source: Source, resolution: int) -> TrainingData:
    """Decode every training image to a square `resolution` array (centre crop); skipped images are counted."""
    from PIL import Image, ImageOps

    arrays, captions, labels = [], [], []
    for sample in source:
        image = ImageOps.fit(sample.image.convert("RGB"), (resolution, resolution), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
        captions.append(sample.text or sample.label)
        labels.append(sample.label)
    if not arrays:
        raise SynthgenError(f"{source.description}: no readable training images")
    # C-contiguous, as np.load gives it: a channels-last layout would change conv rounding after a resume.
    return TrainingData(np.ascontiguousarray(np.stack(arrays)), captions, labels, len(source.skipped))


def load_training_data(source: Source, resolution: int, cache_dir: Path | None = None) -> TrainingData:
    """The decoded data, from `cache_dir` when it holds this source at this resolution, else decoded (and cached)."""
    if cache_dir is None:
        return decode_training_data(source, resolution)
    key = hashlib.sha256(f"{source.fingerprint()}:{resolution}".encode()).hexdigest()
    meta_file, image_file = cache_dir / "data.json", cache_dir / "images.npy"
    if meta_file.is_file() and image_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("key") == key:
            return TrainingData(np.load(image_file), meta["captions"], meta["labels"], meta["skipped"])
    data = decode_training_data(source, resolution)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(image_file) as tmp, open(tmp, "wb") as handle:
        np.save(handle, data.images)
    write_json(meta_file, {"key": key, "captions": data.captions, "labels": data.labels, "skipped": data.skipped})
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
