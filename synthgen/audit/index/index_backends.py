"""The pieces behind `TrainIndex`: a vector store that spills to disk, exact k-NN, approximate indexes, GPU.

Similarities reported by the audit are always exact inner products: approximate indexes only propose
candidates (`rerank_factor` times more than asked for), which are then re-scored from the stored float32
vectors. FAISS is imported lazily so that importing synthgen stays fast.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import weakref
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np

IndexKind = Literal["exact", "ivf", "hnsw", "auto"]
INDEX_KINDS: tuple[str, ...] = ("exact", "ivf", "hnsw", "auto")
AUTO_EXACT_MAX = 200_000  # auto: exact search up to this many vectors (bench/bench_index_scale.py), IVF beyond
RERANK_FACTOR = 4  # approximate candidates fetched per wanted neighbour ...
RERANK_MIN = 32  # ... and at least this many, then re-scored exactly
GPU_MAX_K = 2048  # FAISS GPU kernels answer at most k = 2048 neighbours (and nprobe <= 2048)
HNSW_M = 32
HNSW_EF_SEARCH = 256  # 128 misses ~1.6% of copies at 1M clustered vectors, 256: 0.6% (bench); IVF: none
HNSW_EF_CONSTRUCTION = 80  # 40 leaves ~1% of points unreachable on clustered data (bench)
IVF_TRAIN_MAX = 100_000  # k-means for the IVF cells runs on an evenly spaced sample of at most this many
EXACT_BLOCK = 1 << 18  # database rows per exact-search block (bounds memory on a memory-mapped store)
ADD_BLOCK = 1 << 16  # rows handed to an approximate index at a time while building it
SPILL_BYTES = 1 << 30  # an in-memory store moves to a temporary file beyond this size
RERANK_BYTES = 1 << 22  # candidate vectors gathered at once by `rerank` (a block of queries)


class TempFolder:
    """A private temporary folder (under TMPDIR), removed when this object is garbage-collected (or at exit): where
    stores that outgrow SPILL_BYTES move (this module's VectorStore, the copy detector's keypoints)."""

    def __init__(self, prefix: str) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix))
        self.remove = weakref.finalize(self, shutil.rmtree, self.path, True)


class VectorStore:
    """Append-only (n, dim) float32 rows, in memory or in a raw file read back through `np.memmap`.

    Appending to a file keeps RAM at one batch however large the training set; an in-memory store that
    grows past `spill_bytes` moves itself to a temporary file (deleted with the store). A running CRC-32
    of the bytes lets a cache detect a damaged vectors file without re-reading it on write.
    """

    def __init__(self, dim: int, path: str | Path | None = None, *, spill_bytes: int | None = None) -> None:
        self.dim = dim
        self.n = 0
        self.crc32 = 0
        self.path: Path | None = None
        self.spill_bytes = SPILL_BYTES if spill_bytes is None else spill_bytes  # read now: a bench may lower it
        self._ram: np.ndarray | None = np.empty((0, dim), np.float32)
        self._file: Any = None
        self._view: np.ndarray | None = None
        if path is not None:
            self._to_file(Path(path))

    @classmethod
    def open(cls, path: str | Path, n: int, dim: int) -> VectorStore:
        """A read-only store over an existing vectors file (e.g. from the index cache)."""
        path = Path(path)
        expected = n * dim * 4
        if path.stat().st_size != expected:
            raise ValueError(f"{path} has {path.stat().st_size} bytes, expected {expected}")
        store = cls(dim)
        store._ram, store.path, store.n = None, path, n
        return store

    @property
    def nbytes(self) -> int:
        return self.n * self.dim * 4

    def append(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        self.crc32 = zlib.crc32(rows.data, self.crc32)
        if self._ram is not None and (self.n + len(rows)) * self.dim * 4 > self.spill_bytes:
            self._to_file(None)
        if self._ram is not None:
            if self.n + len(rows) > len(self._ram):  # grow geometrically: amortised O(1) appends
                grown = np.empty((max(2 * len(self._ram), self.n + len(rows), 1024), self.dim), np.float32)
                grown[: self.n] = self._ram[: self.n]
                self._ram = grown
            self._ram[self.n : self.n + len(rows)] = rows
        else:
            if self._file is None:
                raise ValueError(f"vector store {self.path} is read-only")
            self._file.write(rows.data)
            self._view = None
        self.n += len(rows)

    def view(self) -> np.ndarray:
        """All rows as a C-contiguous float32 array (a memory map for file stores: nothing is read yet)."""
        if self._ram is not None:
            return self._ram[: self.n]
        if self._view is None or len(self._view) != self.n:
            if self._file is not None:
                self._file.flush()
            if self.n == 0:
                return np.empty((0, self.dim), np.float32)
            self._view = np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.n, self.dim))
        return self._view

    def flush(self) -> None:
        """Make the appended rows durable (flush + fsync); appending can go on afterwards."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())

    def moved(self, path: Path) -> None:
        """The vectors file was renamed (a cache entry was committed); open views stay valid."""
        self.path = path

    def _to_file(self, path: Path | None) -> None:
        if path is None:  # spill: a private temporary file, removed when the store is collected
            self._folder = TempFolder("synthgen-vectors-")
            path = self._folder.path / "vectors.f32"
        self._file = open(path, "wb")  # noqa: SIM115 - stays open for appends until close()
        self.path = path
        if self._ram is not None and self.n:
            self._file.write(np.ascontiguousarray(self._ram[: self.n]).data)
        self._ram = None
        self._view = None


def resolve_kind(kind: str, n: int) -> str:
    """The concrete index kind for `n` vectors ("auto": exact while it is affordable, IVF beyond)."""
    if kind not in INDEX_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; expected one of {', '.join(INDEX_KINDS)}")
    if kind == "auto":
        return "exact" if n <= AUTO_EXACT_MAX else "ivf"
    return kind


def ivf_nlist(n: int) -> int:
    """About 4 sqrt(n) cells, but at least 39 training points per cell (FAISS's k-means minimum)."""
    return max(1, min(int(4 * math.sqrt(n)), min(n, IVF_TRAIN_MAX) // 39))


def default_nprobe(nlist: int) -> int:
    """Cells visited per query: enough for >= 0.99 top-1 agreement on clustered data (see the bench)."""
    return min(nlist, max(32, nlist // 16))


def fetch_size(k: int, n: int) -> int:
    """How many approximate candidates to re-score exactly for a top-`k` answer."""
    return min(n, max(RERANK_FACTOR * k, RERANK_MIN, k))


def gpu_plan(k: int, fetch: int) -> tuple[int, bool]:
    """(candidates to fetch, whether the GPU can answer) given the GPU's k <= GPU_MAX_K limit.

    The re-rank margin is clamped to the limit; a request for more than GPU_MAX_K neighbours themselves
    goes to the CPU instead (it cannot be split: top-k is not decomposable over one index).
    """
    if k > GPU_MAX_K:
        return fetch, False
    return min(fetch, GPU_MAX_K), True


def gpu_available() -> bool:
    """True when the installed FAISS has GPU support and sees at least one GPU."""
    import faiss

    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # a broken CUDA setup must not stop a CPU audit
        return False


_GPU_RESOURCES: list[Any] = []


def gpu_resources() -> Any:
    """One shared `StandardGpuResources` (it reserves scratch memory, so it is made once per process)."""
    import faiss

    if not _GPU_RESOURCES:
        _GPU_RESOURCES.append(faiss.StandardGpuResources())
    return _GPU_RESOURCES[0]


def to_gpu(index: Any) -> Any:
    """A GPU copy of an IVF index (HNSW has no FAISS GPU implementation and stays on the CPU)."""
    import faiss

    return faiss.index_cpu_to_gpu(gpu_resources(), 0, index)


def set_search_params(index: Any, kind: str, fetch: int, nprobe: int | None, ef_search: int | None) -> None:
    """nprobe for IVF (clamped to the GPU limit) or efSearch for HNSW (at least the candidates fetched)."""
    if kind == "ivf":
        nlist = int(index.nlist)
        index.nprobe = min(nlist, nprobe or default_nprobe(nlist), GPU_MAX_K)
    elif kind == "hnsw":
        index.hnsw.efSearch = max(ef_search or HNSW_EF_SEARCH, fetch)


def build_approximate(kind: str, base: np.ndarray) -> Any:
    """An IVF (8-bit scalar-quantised cells) or HNSW (M=32) inner-product index over `base`, built in blocks.

    IVF trains its cells on an evenly spaced sample (sorted data, e.g. by class, stays represented) and
    keeps 1 byte per dimension: exact re-ranking from the store makes the quantisation invisible.
    """
    import faiss

    n, dim = base.shape
    if kind == "ivf":
        nlist = ivf_nlist(n)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
        )
        index.cp.niter = 10
        rows = np.unique(np.linspace(0, n - 1, min(n, IVF_TRAIN_MAX)).astype(np.int64))
        index.train(np.ascontiguousarray(base[rows]))
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        raise ValueError(f"not an approximate index kind: {kind!r}")
    add_rows(index, base)
    return index


def add_rows(index: Any, rows: np.ndarray) -> None:
    for start in range(0, len(rows), ADD_BLOCK):
        index.add(np.ascontiguousarray(rows[start : start + ADD_BLOCK], dtype=np.float32))


def exact_knn(base: np.ndarray, queries: np.ndarray, k: int, *, use_gpu: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-`k` inner products of each query over `base`, block by block; ties go to the lower id."""
    import faiss

    metric = faiss.METRIC_INNER_PRODUCT
    best_sims = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.full((len(queries), 0), -1, np.int64)
    for start in range(0, len(base), EXACT_BLOCK):
        block = np.ascontiguousarray(base[start : start + EXACT_BLOCK], dtype=np.float32)
        kk = min(k, len(block))
        if use_gpu and kk <= GPU_MAX_K:
            sims, ids = faiss.knn_gpu(gpu_resources(), queries, block, kk, metric=metric)
        else:
            sims, ids = faiss.knn(queries, block, kk, metric=metric)
        best_sims = np.concatenate([best_sims, np.asarray(sims, np.float32)], axis=1)
        best_ids = np.concatenate([best_ids, np.asarray(ids, np.int64) + start], axis=1)
        best_sims, best_ids = top_k(best_sims, best_ids, k)
    return best_sims, best_ids


def rerank(base: np.ndarray, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact similarities of the candidate `ids` (-1 = none) and the best `k` of them per query.

    A few queries at a time (RERANK_BYTES of gathered candidate vectors): each query's answer is its own, so
    the blocks give the same numbers, and a block that fits in the cache is ~2x faster than gathering the whole
    batch (32 audit queries x 32 candidates x 8,192-d codes: 33 MB).
    """
    step = max(1, RERANK_BYTES // max(1, 4 * ids.shape[1] * base.shape[1]))
    if len(queries) <= step:
        return _rerank(base, queries, ids, k)
    parts = [_rerank(base, queries[i : i + step], ids[i : i + step], k) for i in range(0, len(queries), step)]
    return np.concatenate([sims for sims, _ in parts]), np.concatenate([found for _, found in parts])


def _rerank(base: np.ndarray, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    valid = ids >= 0
    rows = np.where(valid, ids, 0)
    order = np.argsort(rows, axis=1)  # read the stored rows in file order (friendly to a memory map)
    rows = np.take_along_axis(rows, order, axis=1)
    valid = np.take_along_axis(valid, order, axis=1)
    flat = rows.ravel()
    unique, inverse = np.unique(flat, return_inverse=True)
    vectors = np.asarray(base[unique], dtype=np.float32)[inverse].reshape(*rows.shape, base.shape[1])
    sims = np.einsum("qd,qkd->qk", queries, vectors, dtype=np.float32)
    sims = np.where(valid, sims, -np.inf).astype(np.float32)
    return top_k(sims, np.where(valid, rows, -1), k)


def top_k(sims: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` highest similarities per row (descending; equal similarities keep their current order)."""
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, order, axis=1), np.take_along_axis(ids, order, axis=1)
