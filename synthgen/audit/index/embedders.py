"""Image embedders for the memorization audit: images -> L2-normalised vectors, inner product = similarity.

The audit only needs "higher inner product = closer", so any embedder that returns unit-norm rows can be
plugged in (embedder_registry.py: `register_embedder`, `register_embedder_prefix`); models loaded from local
weights are in model_embedders.py. This module is the bottom of the index package: it imports no sibling.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image


@runtime_checkable
class Embedder(Protocol):
    """Maps images to unit-norm float32 rows so that the inner product of two rows is their similarity."""

    name: str
    dim: int
    description: str  # one sentence: what a similarity of this embedder means (goes to summary.json)

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """Return an (n, dim) float32 array with L2-normalised rows."""
        ...


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Scale rows to unit length; all-zero rows (flat images) stay zero, i.e. similarity 0 to everything."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.maximum(norms, 1e-12), dtype=np.float32)


class PixelEmbedder:
    """Downsampled, mean-centred RGB pixels: the inner product is the pixel correlation of two images.

    Cheap and dependency-free; catches verbatim and near-verbatim copies (resizing, re-encoding, brightness
    offsets) but not crops, flips or strong colour changes.
    """

    name = "pixel"

    def __init__(self, size: int = 32) -> None:
        self.size = size
        self.dim = 3 * size * size
        self.description = (
            f"Pearson correlation of the {size}x{size} RGB pixels of a candidate and its nearest training "
            "image (1 = identical up to a brightness offset, about 0 = unrelated, -1 = inverted)."
        )

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        pixels = np.stack([self._pixels(image) for image in images])  # (n, size, size, 3)
        pixels -= pixels.mean(axis=(1, 2), keepdims=True)  # per-image, per-channel mean
        return l2_normalise(pixels.reshape(len(images), -1))

    def _pixels(self, image: Image.Image) -> np.ndarray:
        # BOX averages every source pixel (area resampling), so downsizing does not alias.
        small = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BOX)
        return np.asarray(small, dtype=np.float32)
