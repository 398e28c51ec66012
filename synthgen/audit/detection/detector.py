"""What a copy detector is, which ones exist, and how a threshold is written.

`Detector` is the protocol (`copydetect` in copydetect.py, and `EmbeddingDetector` here for `pixel` and any
plug-in embedder); `get_detector` turns a recipe's `audit.embedder` into one; `parse_threshold` reads
`audit.threshold`.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
from PIL import Image

from synthgen.audit.detection.copydetect import CopyDetector
from synthgen.audit.index.embedder_registry import get_embedder
from synthgen.audit.index.embedders import Embedder
from synthgen.audit.index.train_index import TrainIndex
from synthgen.errors import SynthgenError
from synthgen.runtime import Progress
from synthgen.sources.base import Skipped, Source

# Similarities are rounded so that the stored value and the flag always agree (and an exact copy, whose
# float32 inner product can be 0.99999994, still reaches a threshold of 1.0).
SIMILARITY_DECIMALS = 6


class Detector(Protocol):
    """Finds each candidate's most similar training image. `similarity >= threshold` means "copy".

    `embedder` / `index` are a global embedding of the training set (the privacy metrics use them);
    `threshold_bounds` bound `threshold: auto` (calibrate.py).
    """

    name: str
    description: str
    default_threshold: float
    threshold_bounds: tuple[float, float]
    keys: list[str]
    skipped: list[Skipped]
    embedder: Embedder
    index: TrainIndex

    @property
    def n_train(self) -> int: ...

    def fit(self, source: Source, progress: Progress | None = None) -> None: ...

    def match(
        self, images: list[Image.Image], exclude: list[set[str]] | None = None, vectors: np.ndarray | None = None
    ) -> list[tuple[float, str]]: ...

    def info(self) -> dict[str, Any]: ...


class EmbeddingDetector:
    """A global embedder plus a nearest-neighbour index: similarity = inner product of the two embeddings.

    The `pixel` embedder and any plug-in embedder run this way; `threshold: auto` is then the plain
    leave-one-out quantile (no bounds: the scale of a plug-in embedder is unknown here).
    """

    default_threshold = 0.95
    threshold_bounds = (-1.0, 1.0)

    def __init__(self, embedder: Embedder, index_kind: str = "auto") -> None:
        self.embedder = embedder
        self.name = embedder.name
        self.description = embedder.description
        self.index_kind = index_kind
        self.index = TrainIndex(embedder.dim)
        self.skipped: list[Skipped] = []

    @property
    def keys(self) -> list[str]:
        return self.index.keys

    @property
    def n_train(self) -> int:
        return len(self.index)

    def fit(self, source: Source, progress: Progress | None = None) -> None:
        self.index = TrainIndex.from_source(source, self.embedder, progress=progress, kind=self.index_kind)
        self.skipped = list(source.skipped)

    def match(
        self, images: list[Image.Image], exclude: list[set[str]] | None = None, vectors: np.ndarray | None = None
    ) -> list[tuple[float, str]]:
        """`vectors`: the images' embeddings when the caller has them (embedded once for check and metrics)."""
        if not images:
            return []
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        queries = self.embedder.embed(images) if vectors is None else np.asarray(vectors, np.float32)
        similarities, keys = self.index.search(queries, k=1 + extra)
        results = []
        for i, (row, names) in enumerate(zip(similarities, keys, strict=True)):
            skip = exclude[i] if exclude else set()
            kept = [(float(s), k) for s, k in zip(row, names, strict=True) if k not in skip]
            results.append(kept[0] if kept else (-1.0, ""))
        return results

    def info(self) -> dict[str, Any]:
        return {"kind": "embedding nearest neighbour", "dim": self.embedder.dim, "index": self.index.resolved_kind}


def get_detector(name: str | Embedder | Detector, index_kind: str = "auto") -> Detector:
    """`copydetect` (the default two-stage detector), a registered embedder's name, or an object.

    `index_kind` (auto, exact, ivf, hnsw) applies to embedding detectors; copydetect verifies every
    candidate pair geometrically, so its retrieval stays exact.
    """
    if not isinstance(name, str):
        if hasattr(name, "match") and hasattr(name, "fit"):
            return name  # type: ignore[return-value]
        return EmbeddingDetector(name, index_kind)  # type: ignore[arg-type]
    if name == CopyDetector.name:
        return CopyDetector()
    try:
        return EmbeddingDetector(get_embedder(name), index_kind)
    except SynthgenError as error:
        message = str(error)
        if not message.startswith("unknown audit embedder"):
            raise  # e.g. weights that cannot be loaded: the embedder's own message
        raise SynthgenError(
            message.replace("known embedders: ", f"known embedders: {CopyDetector.name}, ", 1)
        ) from None


def parse_threshold(value: float | str) -> float | str:
    """A float in [-1, 1] (numeric strings too) or "auto"; anything else is a user error."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SynthgenError(f"audit threshold must be a number between -1 and 1 or 'auto', got {value!r}") from None
    if not -1.0 <= number <= 1.0:
        raise SynthgenError(f"audit threshold must be between -1 and 1, got {value}")
    return number
