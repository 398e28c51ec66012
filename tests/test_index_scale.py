"""Audit search at scale: approximate kinds agree with exact search, the on-disk cache, GPU limits, streaming."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

from synthgen.audit.index import index_backends as backends
from synthgen.audit.index import train_index as index_module
from synthgen.audit.index.embedders import PixelEmbedder
from synthgen.audit.index.index_backends import VectorStore, gpu_plan
from synthgen.audit.index.index_cache import cache_key, cached_index
from synthgen.audit.index.train_index import TrainIndex
from synthgen.sample import Sample
from synthgen.sources import Skipped, Source


def clustered(n: int, dim: int = 32, clusters: int = 50, seed: int = 0) -> np.ndarray:
    """Unit vectors around fixed cluster centres (the same centres for every seed)."""
    centers = np.random.default_rng(1234).standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    points = centers[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    return points / np.linalg.norm(points, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    base = clustered(8000)
    rng = np.random.default_rng(1)
    near = base[:150] + 0.05 * rng.standard_normal((150, base.shape[1])).astype(np.float32)
    queries = np.concatenate([near, clustered(150, seed=2)])
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return base, queries, [f"k{i}" for i in range(len(base))]


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_agree_with_exact_and_report_exact_similarities(data, kind: str) -> None:
    base, queries, keys = data
    exact_sims, exact_ids = TrainIndex.build(base, keys, kind="exact").search_ids(queries, 10)
    index = TrainIndex.build(base, keys, kind=kind, use_gpu=False)
    sims, ids = index.search_ids(queries, 10)
    assert index.resolved_kind == kind and index._approx is not None
    assert np.mean(ids[:, 0] == exact_ids[:, 0]) >= 0.99
    assert np.all(ids[:150, 0] == np.arange(150))  # every near-copy finds its original
    recomputed = np.einsum("qd,qkd->qk", queries, base[ids])  # re-ranked values are the true inner products
    np.testing.assert_allclose(sims, recomputed, atol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 1e-6)
    same = ids[:, 0] == exact_ids[:, 0]
    np.testing.assert_allclose(sims[same, 0], exact_sims[same, 0], atol=1e-5)
    top_sims, top_keys = index.search(queries[:3], 1)
    assert top_keys == [[keys[i]] for i in ids[:3, 0]] and top_sims.shape == (3, 1)


def test_auto_kind_switches_to_ivf_above_threshold(data, monkeypatch: pytest.MonkeyPatch) -> None:
    base, queries, keys = data
    index = TrainIndex.build(base[:100], keys[:100])
    assert index.kind == "auto" and index.resolved_kind == "exact"
    monkeypatch.setattr(backends, "AUTO_EXACT_MAX", 1000)
    index = TrainIndex.build(base, keys)
    assert index.resolved_kind == "ivf"
    index.search_ids(queries[:5], 1)
    extra = clustered(20, seed=9)
    index.add(extra, [f"new{i}" for i in range(20)])  # added after the IVF index was built: still found
    _, found = index.search(extra, 1)
    assert found == [[f"new{i}"] for i in range(20)]
    with pytest.raises(ValueError, match="unknown index kind"):
        TrainIndex(8, kind="lsh")  # type: ignore[arg-type]


def test_short_approximate_answers_fall_back_to_exact(data, monkeypatch: pytest.MonkeyPatch) -> None:
    base, queries, keys = data
    index = TrainIndex.build(base, keys, kind="ivf", use_gpu=False)
    monkeypatch.setattr(TrainIndex, "_candidates", lambda self, q, k: np.full((len(q), 32), -1, np.int64))
    sims, ids = index.search_ids(queries[:4], 3)
    exact_sims, exact_ids = TrainIndex.build(base, keys, kind="exact").search_ids(queries[:4], 3)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(sims, exact_sims, atol=1e-6)


def test_large_query_batches_are_split(data, monkeypatch: pytest.MonkeyPatch) -> None:
    base, queries, keys = data
    index = TrainIndex.build(base, keys, kind="ivf", use_gpu=False)
    whole = index.search_ids(queries[:20], 4)
    monkeypatch.setattr(index_module, "QUERY_BLOCK", 7)
    split = index.search_ids(queries[:20], 4)
    np.testing.assert_array_equal(split[1], whole[1])
    np.testing.assert_allclose(split[0], whole[0], atol=1e-6)


def test_gpu_k_limit_plan() -> None:
    assert gpu_plan(1, 32) == (32, True)
    assert gpu_plan(600, 2400) == (2048, True)  # the re-rank margin is clamped to the GPU limit
    assert gpu_plan(2048, 8192) == (2048, True)
    assert gpu_plan(2049, 8196) == (8196, False)  # more neighbours than the GPU returns: CPU


class FakeGpuIndex:
    """Stands in for a FAISS GPU index: enforces the k and nprobe limits, answers with the CPU index."""

    def __init__(self, cpu_index) -> None:
        self.cpu, self.nlist, self.nprobe, self.calls = cpu_index, cpu_index.nlist, 1, []

    def search(self, queries, k):
        assert k <= backends.GPU_MAX_K and self.nprobe <= backends.GPU_MAX_K
        self.calls.append(k)
        self.cpu.nprobe = self.nprobe
        return self.cpu.search(queries, k)


def test_gpu_paths_respect_the_k_limit(data, monkeypatch: pytest.MonkeyPatch) -> None:
    base, queries, keys = data
    gpu_indexes: list[FakeGpuIndex] = []
    knn_calls: list[int] = []

    def knn_gpu(res, xq, xb, k, metric=faiss.METRIC_L2):
        assert k <= backends.GPU_MAX_K
        knn_calls.append(k)
        return faiss.knn(xq, xb, k, metric=metric)

    def index_cpu_to_gpu(res, device, index):
        gpu_indexes.append(FakeGpuIndex(index))
        return gpu_indexes[-1]

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(faiss, "index_cpu_to_gpu", index_cpu_to_gpu, raising=False)
    monkeypatch.setattr(faiss, "knn_gpu", knn_gpu, raising=False)
    monkeypatch.setattr(backends, "_GPU_RESOURCES", [])

    exact = TrainIndex.build(base, keys, kind="exact")
    assert exact.on_gpu
    reference = TrainIndex.build(base, keys, kind="exact", use_gpu=False)
    sims, ids = exact.search_ids(queries[:3], 5)
    assert knn_calls == [5]
    exact.search_ids(queries[:2], 2100)  # beyond the GPU limit: answered on the CPU
    assert knn_calls == [5]

    ivf = TrainIndex.build(base, keys, kind="ivf")
    sims, ids = ivf.search_ids(queries[:3], 600)  # wants 2400 candidates: clamped to 2048
    assert gpu_indexes[-1].calls == [2048]
    ref_sims, _ = reference.search_ids(queries[:3], 600)
    np.testing.assert_allclose(sims[:, :10], ref_sims[:, :10], atol=1e-5)
    ivf.search_ids(queries[:2], 2100)
    assert gpu_indexes[-1].calls == [2048]  # the CPU index answered


def test_vector_store_streams_to_a_memory_map_and_spills(tmp_path: Path) -> None:
    rows = clustered(300, dim=8)
    store = VectorStore(8, tmp_path / "v.f32")
    for start in range(0, 300, 64):
        store.append(rows[start : start + 64])
    store.flush()
    assert (tmp_path / "v.f32").stat().st_size == 300 * 8 * 4
    assert isinstance(store.view(), np.memmap)
    np.testing.assert_array_equal(store.view(), rows)
    reopened = VectorStore.open(tmp_path / "v.f32", 300, 8)
    np.testing.assert_array_equal(reopened.view(), rows)
    assert reopened.crc32 == 0 and store.crc32 != 0
    with pytest.raises(ValueError, match="read-only"):
        reopened.append(rows[:1])

    spilling = VectorStore(8, spill_bytes=100 * 8 * 4)  # moves to a temporary file past 100 rows
    for start in range(0, 300, 64):
        spilling.append(rows[start : start + 64])
    np.testing.assert_array_equal(spilling.view(), rows)  # reading flushes the appended rows
    assert spilling.path is not None and spilling.path.stat().st_size == 300 * 8 * 4
    index = TrainIndex.build(rows, [str(i) for i in range(300)], kind="exact")
    index._store = spilling
    assert index.search(rows[:2], 1)[1] == [["0"], ["1"]]


def blob(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))


class SeedSource(Source):
    """Images drawn from seeds; the fingerprint is the seed list, `bad` keys are reported as skipped."""

    def __init__(self, seeds: list[int], bad: tuple[str, ...] = ("broken",)) -> None:
        super().__init__(description="seeds")
        self.seeds, self.bad = seeds, bad

    def _iter_samples(self) -> Iterator[Sample]:
        for key in self.bad:
            self.skipped.append(Skipped(key, "cannot decode image: corrupt"))
        yield from (Sample(f"img{seed}", blob(seed)) for seed in self.seeds)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.seeds, self.bad]).encode()).hexdigest()


class CountingEmbedder(PixelEmbedder):
    def __init__(self) -> None:
        super().__init__(size=8)
        self.calls = 0

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        self.calls += 1
        return super().embed(images)


@pytest.mark.parametrize("kind", ["exact", "ivf"])
def test_cache_reuses_and_invalidates(tmp_path: Path, kind: str) -> None:
    embedder, seeds = CountingEmbedder(), list(range(120))
    first = cached_index(SeedSource(seeds), embedder, kind=kind, cache_dir=tmp_path, batch_size=50)
    assert not first.cache_hit and embedder.calls == 3
    entry = tmp_path / cache_key(SeedSource(seeds).fingerprint(), embedder, kind)
    assert sorted(p.name for p in entry.iterdir()) == sorted(
        ["meta.json", "keys.json", "vectors.f32"] + (["index.faiss"] if kind == "ivf" else [])
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left

    source = SeedSource(seeds)
    again = cached_index(source, embedder, kind=kind, cache_dir=tmp_path)
    assert again.cache_hit and embedder.calls == 3  # not embedded again
    assert again.keys == first.keys and isinstance(again.vectors, np.memmap)
    assert [s.key for s in source.skipped] == [s.key for s in again.skipped] == ["broken"]
    queries = embedder.embed([blob(5), blob(77)])
    assert again.search(queries, 2)[1] == first.search(queries, 2)[1]

    cached_index(SeedSource(seeds[:-1]), embedder, kind=kind, cache_dir=tmp_path)  # data changed
    assert embedder.calls > 4
    calls = embedder.calls
    cached_index(SeedSource(seeds), PixelEmbedder(size=4), kind=kind, cache_dir=tmp_path)
    cached_index(SeedSource(seeds), embedder, kind="hnsw", cache_dir=tmp_path)  # another kind
    assert embedder.calls > calls
    assert len([p for p in tmp_path.iterdir()]) == 4


@pytest.mark.parametrize("damage", ["truncate_vectors", "flip_vector_byte", "bad_meta", "bad_keys"])
def test_damaged_cache_entry_is_rebuilt(tmp_path: Path, damage: str) -> None:
    embedder, source = CountingEmbedder(), SeedSource(list(range(40)))
    cached_index(source, embedder, cache_dir=tmp_path)
    entry = tmp_path / cache_key(source.fingerprint(), embedder, "auto")
    vectors = entry / "vectors.f32"
    if damage == "truncate_vectors":
        vectors.write_bytes(vectors.read_bytes()[:-8])
    elif damage == "flip_vector_byte":
        blob_ = bytearray(vectors.read_bytes())
        blob_[17] ^= 0xFF
        vectors.write_bytes(bytes(blob_))
    elif damage == "bad_meta":
        (entry / "meta.json").write_text("{not json")
    else:
        (entry / "keys.json").write_text('["x"]')
    calls = embedder.calls
    rebuilt = cached_index(source, embedder, cache_dir=tmp_path)
    assert not rebuilt.cache_hit and embedder.calls > calls and len(rebuilt) == 40
    assert cached_index(source, embedder, cache_dir=tmp_path).cache_hit  # the entry was rewritten


def test_damaged_faiss_file_is_rebuilt_from_cached_vectors(tmp_path: Path) -> None:
    embedder, source = CountingEmbedder(), SeedSource(list(range(100)))
    first = cached_index(source, embedder, kind="ivf", cache_dir=tmp_path)
    entry = tmp_path / cache_key(source.fingerprint(), embedder, "ivf")
    (entry / "index.faiss").write_bytes(b"garbage")
    calls = embedder.calls
    again = cached_index(source, embedder, kind="ivf", cache_dir=tmp_path)
    assert again.cache_hit and embedder.calls == calls and again._approx is not None
    assert faiss.read_index(str(entry / "index.faiss")).ntotal == 100
    queries = embedder.embed([blob(3)])
    assert again.search(queries, 1)[1] == first.search(queries, 1)[1] == [["img3"]]


def test_source_without_fingerprint_is_not_cached(tmp_path: Path) -> None:
    class Unkeyed(SeedSource):
        def fingerprint(self) -> str:
            raise NotImplementedError

    embedder = CountingEmbedder()
    index = cached_index(Unkeyed([1, 2, 3]), embedder, cache_dir=tmp_path)
    assert len(index) == 3 and not index.cache_hit and not list(tmp_path.iterdir())
    assert [s.key for s in index.skipped] == ["broken"]
