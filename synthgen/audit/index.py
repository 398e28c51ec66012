"""Exact nearest-neighbour search over training embeddings (FAISS inner product).

Exact search on purpose: an audit that misses a copy because of an approximate index is worse than a slow one.
FAISS is imported lazily so that importing synthgen stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from synthgen.audit.embedders import Embedder

if TYPE_CHECKING:
    from synthgen.sources.base import Source

T = TypeVar("T")
Progress = Callable[[str, int, int | None], None]  # (stage, done, total or None)
BATCH_SIZE = 256


def batched(items: Iterable[T], size: int = BATCH_SIZE) -> Iterator[list[T]]:
    """Yield lists of up to `size` items, so a whole source never has to sit in memory."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def source_total(source: object) -> int | None:
    """Number of items a source will yield, when it knows it cheaply (for progress bars)."""
    try:
        return len(source)  # type: ignore[arg-type]
    except TypeError:
        return None


class TrainIndex:
    """Embeddings of the training images with their keys; `search` returns the most similar keys."""

    def __init__(self, dim: int) -> None:
        import faiss

        self.dim = dim
        self._index: Any = faiss.IndexFlatIP(dim)
        self.keys: list[str] = []

    def __len__(self) -> int:
        return len(self.keys)

    def add(self, embeddings: np.ndarray, keys: list[str]) -> None:
        embeddings = _as_matrix(embeddings, self.dim)
        if len(embeddings) != len(keys):
            raise ValueError(f"{len(embeddings)} embeddings but {len(keys)} keys")
        self._index.add(embeddings)
        self.keys.extend(keys)

    @classmethod
    def build(cls, embeddings: np.ndarray, keys: list[str]) -> TrainIndex:
        index = cls(np.asarray(embeddings).shape[1])
        index.add(embeddings, keys)
        return index

    @classmethod
    def from_source(
        cls,
        source: Source,
        embedder: Embedder,
        *,
        batch_size: int = BATCH_SIZE,
        progress: Progress | None = None,
    ) -> TrainIndex:
        """Embed a whole source batch by batch (bounded memory) and index it."""
        index = cls(embedder.dim)
        total = source_total(source)
        for batch in batched(source, batch_size):
            index.add(embedder.embed([s.image for s in batch]), [s.key for s in batch])
            if progress:
                progress("embedding training images", len(index), total)
        return index

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, list[list[str]]]:
        """Top-`k` training neighbours of each query: (n, k) similarities (descending) and their keys."""
        queries = _as_matrix(queries, self.dim)
        k = min(k, len(self))
        if k <= 0 or len(queries) == 0:
            return np.zeros((len(queries), max(k, 0)), dtype=np.float32), [[] for _ in range(len(queries))]
        similarities, ids = self._index.search(queries, k)
        keys = [[self.keys[i] for i in row] for row in ids]
        return np.asarray(similarities, dtype=np.float32), keys


def _as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"expected embeddings of shape (n, {dim}), got {vectors.shape}")
    return vectors
