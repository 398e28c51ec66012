"""Audit search at scale: exact vs IVF vs HNSW (both with exact re-ranking) on clustered unit vectors.

    .venv/bin/python bench/bench_index_scale.py [--sizes 100000,1000000] [--dim 256] [--queries 1000]

Training vectors are a Gaussian mixture (1000 clusters) normalised to unit length, like image embeddings.
Half the queries are near-copies of training vectors (what the audit must catch), half are fresh draws
from the mixture (the hard case for approximate search: many almost equally near neighbours). Per size and
kind it prints build time, search time for the queries at k=1 and k=10, recall@1 / recall@10 against exact
search (ids), copy@1 (near-copies whose original is the top hit), memory, and ratios against exact.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from synthgen.audit.index.train_index import TrainIndex  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def clustered(n: int, dim: int, centers: np.ndarray, rng: np.random.Generator, spread: float) -> np.ndarray:
    """Unit vectors drawn around random cluster centres, generated in blocks to bound memory."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        block = centers[rng.integers(0, len(centers), m)]
        block += (spread / np.sqrt(dim)) * rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def queries_for(base: np.ndarray, centers: np.ndarray, n: int, rng: np.random.Generator, spread: float):
    """(queries, originals): first half near-copies of random training rows, second half fresh draws."""
    dim = base.shape[1]
    originals = rng.choice(len(base), n // 2, replace=False)
    copies = base[originals] + (0.2 / np.sqrt(dim)) * rng.standard_normal((n // 2, dim), dtype=np.float32)
    fresh = clustered(n - n // 2, dim, centers, rng, spread)
    queries = np.concatenate([copies / np.linalg.norm(copies, axis=1, keepdims=True), fresh])
    return np.ascontiguousarray(queries, np.float32), originals


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def recall(ids: np.ndarray, reference: np.ndarray) -> float:
    """Mean fraction of the reference top-k found in the top-k."""
    k = reference.shape[1]
    hits = [len(set(row[:k]) & set(ref)) for row, ref in zip(ids, reference, strict=True)]
    return float(np.mean(hits)) / k


def bench_size(n: int, args: argparse.Namespace, rng: np.random.Generator) -> list[dict]:
    centers = rng.standard_normal((args.clusters, args.dim)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    t_data, base = timed(lambda: clustered(n, args.dim, centers, rng, args.spread))
    queries, originals = queries_for(base, centers, args.queries, rng, args.spread)
    print(f"\n== n={n:,} dim={args.dim} queries={len(queries)} (data generated in {t_data:.1f}s)", flush=True)
    keys = [str(i) for i in range(n)]
    exact = TrainIndex.build(base, keys, kind="exact")
    del base
    gc.collect()
    rows, reference = [], {}
    for kind in args.kinds:
        index = exact
        if kind != "exact":  # share the stored vectors; only the approximate structure is built
            index = TrainIndex(args.dim, kind=kind, nprobe=args.nprobe, ef_search=args.ef_search, use_gpu=False)
            index._store, index.keys = exact._store, exact.keys
        rss0 = rss_mb()
        build_s, _ = timed(index.build_index)
        rss_delta = rss_mb() - rss0
        index_mb = 0.0
        if index._approx is not None:
            import faiss

            index_mb = faiss.serialize_index(index._approx).nbytes / 2**20
        row = {"kind": kind, "build_s": build_s, "index_mb": index_mb, "rss_mb": rss_delta}
        for k in (1, 10):
            row[f"search{k}_s"], (sims, ids) = timed(lambda index=index, k=k: index.search_ids(queries, k))
            if kind == "exact":
                reference[k] = (sims, ids)
            row[f"recall{k}"] = recall(ids, reference[k][1])
            if k == 1:
                row["sim_err"] = float(np.abs(sims[:, 0] - reference[1][0][:, 0]).max())
                row["copy1"] = float(np.mean(ids[: len(originals), 0] == originals))
        rows.append(row)
        print_row(row, rows[0], n)
    store_mb = exact._store.nbytes / 2**20
    print(f"   stored float32 vectors (used by all kinds for exact re-ranking): {store_mb:,.0f} MB")
    return rows


HEADER = (
    f"{'n':>9} {'kind':>5} | {'build s':>8} {'k=1 s':>7} {'k=10 s':>7} | {'rec@1':>6} {'rec@10':>6} "
    f"{'copy@1':>6} {'max|dsim|':>9} | {'index MB':>8} {'RSS +MB':>7} | {'k=1 speedup':>11} {'k=10 speedup':>12}"
)


def print_row(row: dict, exact: dict, n: int) -> None:
    if row["kind"] == "exact":
        print(HEADER)
    print(
        f"{n:>9,} {row['kind']:>5} | {row['build_s']:>8.2f} {row['search1_s']:>7.3f} {row['search10_s']:>7.3f} | "
        f"{row['recall1']:>6.4f} {row['recall10']:>6.4f} {row['copy1']:>6.3f} {row['sim_err']:>9.1e} | "
        f"{row['index_mb']:>8.0f} {row['rss_mb']:>7.0f} | "
        f"{exact['search1_s'] / row['search1_s']:>10.1f}x {exact['search10_s'] / row['search10_s']:>11.1f}x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated training set sizes")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=0.6, help="cluster noise norm relative to the centre")
    parser.add_argument("--kinds", default="exact,ivf,hnsw")
    parser.add_argument("--nprobe", type=int, default=None, help="IVF cells visited (default: automatic)")
    parser.add_argument("--ef-search", type=int, default=None, help="HNSW efSearch (default: automatic)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.kinds = ["exact"] + [k for k in args.kinds.split(",") if k and k != "exact"]
    rng = np.random.default_rng(args.seed)
    import faiss

    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, CPU only")
    start = time.perf_counter()
    for size in (int(s) for s in args.sizes.split(",")):
        bench_size(size, args, rng)
    print(f"\ntotal {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
