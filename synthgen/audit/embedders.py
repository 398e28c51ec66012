"""Image embedders for the memorization audit: images -> L2-normalised vectors, inner product = similarity.

The audit only needs "higher inner product = closer", so any embedder that returns unit-norm rows can be
plugged in via `register_embedder`, or, for models loaded from local weights, `register_embedder_prefix`
("sscd:/path", "dinov2:/path", "timm:/path", "open_clip:/path" are built in: synthgen.audit.model_embedders).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

from synthgen.errors import SynthgenError


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


_REGISTRY: dict[str, Callable[[], Embedder]] = {"pixel": PixelEmbedder}
# "prefix:ARG[?option=value&...]" names, e.g. "dinov2:/models/dinov2-small": factory(ARG, **options).
_PREFIXES: dict[str, Callable[..., Embedder]] = {}
# Built in but loaded on first use: they import torch and a model library (synthgen.audit.model_embedders).
MODEL_PREFIXES = ("sscd", "dinov2", "timm", "open_clip")


def register_embedder(name: str, factory: Callable[[], Embedder]) -> None:
    """Make `factory` available as `get_embedder(name)` (and thus as recipe `audit.embedder: name`)."""
    _REGISTRY[name] = factory


def register_embedder_prefix(prefix: str, factory: Callable[..., Embedder]) -> None:
    """Make `get_embedder("prefix:ARG?k=v")` call `factory(ARG, k="v")`, e.g. to load a model from a path."""
    _PREFIXES[prefix] = factory


def known_embedders() -> list[str]:
    return sorted(_REGISTRY)


def known_embedder_prefixes() -> list[str]:
    return sorted(set(_PREFIXES) | set(MODEL_PREFIXES))


def _prefix_factory(prefix: str) -> Callable[..., Embedder] | None:
    if prefix not in _PREFIXES and prefix in MODEL_PREFIXES:
        from synthgen.audit.model_embedders import MODEL_FACTORIES

        return MODEL_FACTORIES[prefix]
    return _PREFIXES.get(prefix)


def parse_embedder_name(name: str) -> tuple[str, str, dict[str, str]]:
    """Split "prefix:ARG?k=v&k2=v2" into (prefix, ARG, {k: v}); options are optional."""
    prefix, _, rest = name.partition(":")
    arg, _, query = rest.partition("?")
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SynthgenError(f"audit embedder '{name}': option '{item}' is not key=value")
        options[key.strip()] = value.strip()
    return prefix.strip(), arg.strip(), options


def get_embedder(name: str | Embedder) -> Embedder:
    """Look up an embedder by name, or load one from weights with "prefix:PATH" (instances pass through)."""
    if not isinstance(name, str):
        return name
    factory = _REGISTRY.get(name)
    if factory is not None:
        return factory()
    known = ", ".join(known_embedders() + [f"{p}:PATH" for p in known_embedder_prefixes()])
    prefix, arg, options = parse_embedder_name(name)
    model_factory = _prefix_factory(prefix)
    if model_factory is None:
        raise SynthgenError(f"unknown audit embedder '{name}'; known embedders: {known}")
    if not arg:
        raise SynthgenError(f"audit embedder '{prefix}' needs a model path or id, e.g. '{prefix}:/path/to/model'")
    try:
        inspect.signature(model_factory).bind(arg, **options)
    except TypeError as error:
        raise SynthgenError(f"audit embedder '{name}': bad option ({error})") from None
    return model_factory(arg, **options)
