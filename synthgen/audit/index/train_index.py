"""Nearest-neighbour search over training embeddings: exact while affordable, approximate + exact re-rank beyond.

Reported similarities are always exact inner products: an approximate index (IVF or HNSW) only proposes
candidates, which are re-scored from the stored vectors, so an audit never under-reports a copy's
similarity. `kind="auto"` searches exactly up to `AUTO_EXACT_MAX` training images and uses IVF beyond
(see bench/bench_index_scale.py). A GPU is used when faiss-gpu sees one. FAISS loads lazily.
An index built once can be kept on disk: index_cache.py (`cached_index`), which builds on this module.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from synthgen.audit.index import index_backends as backends
from synthgen.audit.index.embedders import Embedder
from synthgen.audit.index.index_backends import AUTO_EXACT_MAX, INDEX_KINDS, IndexKind, VectorStore
from synthgen.runtime import Progress

if TYPE_CHECKING:
    from synthgen.sources.base import Skipped, Source

__all__ = ["AUTO_EXACT_MAX", "BATCH_SIZE", "INDEX_KINDS", "IndexKind", "TrainIndex", "batched", "source_total"]

T = TypeVar("T")
BATCH_SIZE = 256
QUERY_BLOCK = 4096
STABLE_MARGIN = 8  # extra neighbours a `stable` search re-scores, so float noise cannot move the k-th one out


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
    """Embeddings of the training images with their keys; `search` returns the most similar keys.

    `kind`: "exact" (brute force), "ivf", "hnsw" or "auto". `storage`: a file to stream the vectors to
    (else they stay in memory, moving to a temporary file past 1 GiB). `use_gpu`: None = when available.
    `skipped` lists training items that could not be read (kept with a cached index).
    """

    def __init__(
        self,
        dim: int,
        *,
        kind: IndexKind = "auto",
        storage: str | Path | None = None,
        use_gpu: bool | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> None:
        backends.resolve_kind(kind, 0)  # validate early
        self.dim = dim
        self.kind: str = kind
        self.keys: list[str] = []
        self.skipped: list[Skipped] = []
        self.cache_hit = False
        self.nprobe = nprobe
        self.ef_search = ef_search
        self._use_gpu = use_gpu
        self._store = VectorStore(dim, storage)
        self._approx: Any = None  # the CPU approximate index, when built
        self._approx_gpu: Any = None  # its GPU copy, when a GPU is used
        self._approx_kind: str | None = None
        self._lock = threading.Lock()  # searches may come from several threads (the audit's pool)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def vectors(self) -> np.ndarray:
        """The stored (n, dim) float32 embeddings (a read-only memory map for file-backed indexes)."""
        return self._store.view()

    @property
    def resolved_kind(self) -> str:
        """The search actually used for the current size: "exact", "ivf" or "hnsw"."""
        return backends.resolve_kind(self.kind, len(self))

    @property
    def on_gpu(self) -> bool:
        if self._use_gpu is None:
            self._use_gpu = backends.gpu_available()
        return self._use_gpu

    def add(self, embeddings: np.ndarray, keys: list[str]) -> None:
        embeddings = _as_matrix(embeddings, self.dim)
        if len(embeddings) != len(keys):
            raise ValueError(f"{len(embeddings)} embeddings but {len(keys)} keys")
        self._store.append(embeddings)
        self.keys.extend(keys)
        if self._approx is not None:
            if self.resolved_kind == self._approx_kind:
                backends.add_rows(self._approx, embeddings)
                self._approx_gpu = None  # re-copied to the GPU on the next search
            else:
                self._approx = self._approx_kind = None

    def build_index(self) -> TrainIndex:
        """Build the approximate index now (searches build it on demand); returns self."""
        kind = self.resolved_kind
        with self._lock:  # two threads searching a fresh index build it once
            if kind != "exact" and len(self) and (self._approx is None or self._approx_kind != kind):
                self._approx = backends.build_approximate(kind, self._store.view())
                self._approx_kind, self._approx_gpu = kind, None
        return self

    @classmethod
    def open(cls, path: str | Path, keys: list[str], dim: int, **options: Any) -> TrainIndex:
        """An index over float32 rows already in a file (a cache entry: one per key), searched in place through a
        read-only memory map, never copied into memory; `options` are the constructor's keywords."""
        index = cls(dim, **options)
        index._store, index.keys = VectorStore.open(path, len(keys), dim), list(keys)
        return index

    @classmethod
    def build(cls, embeddings: np.ndarray, keys: list[str], **options: Any) -> TrainIndex:
        """An index over in-memory embeddings; `options` are the constructor's keywords."""
        index = cls(np.asarray(embeddings).shape[1], **options)
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
        kind: IndexKind = "auto",
        use_gpu: bool | None = None,
    ) -> TrainIndex:
        """Embed a whole source batch by batch (bounded memory) and index it (kept on disk: `cached_index`)."""
        index = cls(embedder.dim, kind=kind, use_gpu=use_gpu)
        index.fill(source, embedder, batch_size=batch_size, progress=progress)
        return index

    def fill(
        self, source: Source, embedder: Embedder, *, batch_size: int = BATCH_SIZE, progress: Progress | None = None
    ) -> None:
        """Embed and add every readable item of `source`, then record what it skipped."""
        total = source_total(source)
        for batch in batched(source, batch_size):
            self.add(embedder.embed([s.image for s in batch]), [s.key for s in batch])
            if progress:
                progress("embedding training images", len(self), total)
        self.skipped = list(source.skipped)
        self._store.flush()

    def search(self, queries: np.ndarray, k: int = 1, *, stable: bool = False) -> tuple[np.ndarray, list[list[str]]]:
        """Top-`k` training neighbours of each query: (n, k) exact similarities (descending) and their keys.

        `stable`: each query's answer does not depend on the other queries of the batch (FAISS's BLAS path
        rounds the last bits differently for other batch shapes), so an audit split into chunks for threads
        gives the same numbers as the whole batch: `STABLE_MARGIN` extra neighbours re-scored row by row.
        """
        if stable and len(self):
            wanted = min(k, len(self))
            sims, ids = self.search_ids(queries, min(len(self), wanted + STABLE_MARGIN))
            sims, ids = backends.rerank(self._store.view(), _as_matrix(queries, self.dim), ids, wanted)
            return sims, [[self.keys[i] for i in row] for row in ids]
        similarities, ids = self.search_ids(queries, k)
        keys = [[self.keys[i] for i in row] for row in ids]
        return similarities, keys

    def search_ids(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Like `search` but returns row numbers into `keys` / `vectors` (int64) instead of keys."""
        queries = _as_matrix(queries, self.dim)
        k = min(k, len(self))
        if k <= 0 or len(queries) == 0:
            shape = (len(queries), max(k, 0))
            return np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.int64)
        if len(queries) > QUERY_BLOCK:  # bounds the re-rank buffer (queries x candidates x dim floats)
            parts = [self.search_ids(queries[i : i + QUERY_BLOCK], k) for i in range(0, len(queries), QUERY_BLOCK)]
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        base = self._store.view()
        if self.resolved_kind == "exact":
            return backends.exact_knn(base, queries, k, use_gpu=self.on_gpu)
        sims, ids = backends.rerank(base, queries, self._candidates(queries, k), k)
        missing = (ids < 0).any(axis=1)  # an approximate index can come back short: answer those exactly
        if missing.any():
            sims[missing], ids[missing] = backends.exact_knn(base, queries[missing], k, use_gpu=self.on_gpu)
        return sims, ids

    def _candidates(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Row ids of the approximate neighbours to re-rank (-1 where the index found fewer)."""
        self.build_index()
        kind = self.resolved_kind
        fetch = backends.fetch_size(k, len(self))
        index = self._approx
        if self.on_gpu and kind == "ivf":
            fetch, gpu_ok = backends.gpu_plan(k, fetch)
            if gpu_ok:
                with self._lock:
                    if self._approx_gpu is None:
                        self._approx_gpu = backends.to_gpu(self._approx)
                    index = self._approx_gpu
        backends.set_search_params(index, kind, fetch, self.nprobe, self.ef_search)
        _, ids = index.search(queries, fetch)
        return np.asarray(ids, dtype=np.int64)


def _as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"expected embeddings of shape (n, {dim}), got {vectors.shape}")
    return vectors
