"""On-disk cache of training indexes, so a large training set is embedded once, not on every audit or build.

An entry is keyed by the training data's fingerprint, the embedder (class, name, dim, description and its
optional `cache_config`, e.g. the weights' size and date), the index kind and the cache format. Layout:
`<cache_dir>/<key>/` with meta.json (sizes, checksums, skipped items), keys.json, vectors.f32 (raw float32
rows, memory-mapped on load) and index.faiss (approximate kinds). Entries are written into a temporary
folder and renamed into place, so no reader sees half an entry; an entry that fails any check is a miss.

Built on train_index.py (`cached_index` is `TrainIndex.from_source` with this cache); nothing below imports it.
The audit's detectors reach it through detection/fit_cache.py (`FitCache`), which also keeps copydetect's
fitted state and the calibrations; the build and `synthgen audit` fit through it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import weakref
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthgen.atomic import atomic_path, discard
from synthgen.audit.index.embedders import Embedder
from synthgen.audit.index.index_backends import IndexKind
from synthgen.audit.index.train_index import BATCH_SIZE, TrainIndex
from synthgen.runtime import Progress, cache_root

if TYPE_CHECKING:
    from synthgen.sources.base import Source

CACHE_FORMAT = 1
log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """$SYNTHGEN_CACHE/audit-index (else ~/.cache/synthgen/audit-index)."""
    return cache_root() / "audit-index"


def cache_key(fingerprint: str, embedder: Embedder, kind: str) -> str:
    """Hex key of an index: any change of data, embedder (or its weights) or index kind gives a new key."""
    from synthgen import __version__

    embedder_id = {
        "class": f"{type(embedder).__module__}.{type(embedder).__qualname__}",
        "name": embedder.name,
        "dim": embedder.dim,
        "description": embedder.description,
        "config": getattr(embedder, "cache_config", None),
    }
    blob = {"format": CACHE_FORMAT, "data": fingerprint, "embedder": embedder_id, "kind": kind, "v": __version__}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cached_index(
    source: Source,
    embedder: Embedder,
    *,
    cache_dir: str | Path | None = None,
    kind: IndexKind = "auto",
    batch_size: int = BATCH_SIZE,
    progress: Progress | None = None,
    use_gpu: bool | None = None,
) -> TrainIndex:
    """`TrainIndex.from_source` with the cache: load a valid entry, else build one while embedding.

    The entry is keyed by the source's fingerprint, the embedder and `kind`; `cache_dir` None means
    `default_cache_dir()`. On a cache hit the source is not read and its `skipped` list is restored from
    the cache, so callers see the same skipped items. A source without a fingerprint is never cached.
    """
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)

    def uncached() -> TrainIndex:
        return TrainIndex.from_source(
            source, embedder, batch_size=batch_size, progress=progress, kind=kind, use_gpu=use_gpu
        )

    try:
        fingerprint = source.fingerprint()
    except NotImplementedError:  # a source that cannot say when it changed is never cached
        return uncached()
    key = cache_key(fingerprint, embedder, kind)
    entry = cache_dir / key
    index = load_entry(entry, key, embedder.dim, kind, use_gpu)
    if index is not None:
        source.skipped = list(index.skipped)  # what a fresh read would have reported
        if progress:
            progress("loaded cached training index", len(index), len(index))
        return index
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=cache_dir))
    except OSError as error:  # an unwritable cache must not stop the audit
        log.warning("audit index cache %s is not writable (%s); indexing without it", cache_dir, error)
        return uncached()
    try:
        index = TrainIndex(embedder.dim, kind=kind, storage=tmp / "vectors.f32", use_gpu=use_gpu)
        index.fill(source, embedder, batch_size=batch_size, progress=progress)
        stage = f"building {index.resolved_kind} index"
        if progress and index.resolved_kind != "exact":
            progress(stage, 0, 1)  # one step: an unknown total would render as 0/0
        _write_entry(index, tmp, key)
        if progress and index.resolved_kind != "exact":
            progress(stage, 1, 1)
        # Not atomic.atomic_dir: the index reads its vectors from the staged folder, which must outlive a lost
        # race (another process committing the same entry) instead of being deleted with the block.
        discard(entry)  # a damaged entry (a valid one would have loaded); renamed aside, never seen half-deleted
        try:
            os.replace(tmp, entry)
        except OSError:  # another process committed the same entry meanwhile: keep ours private
            log.debug("index cache entry %s appeared concurrently; not replacing it", entry)
            weakref.finalize(index._store, shutil.rmtree, tmp, True)
            return index
        index._store.moved(entry / "vectors.f32")
        return index
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_entry(index: TrainIndex, folder: Path, key: str) -> None:
    import faiss

    index.build_index()
    store = index._store
    store.flush()
    keys_blob = json.dumps(index.keys).encode()
    (folder / "keys.json").write_bytes(keys_blob)
    if index._approx is not None:
        faiss.write_index(index._approx, str(folder / "index.faiss"))
    meta = {
        "format": CACHE_FORMAT,
        "key": key,
        "n": len(index),
        "dim": index.dim,
        "kind": index.kind,
        "resolved_kind": index.resolved_kind,
        "vectors_crc32": store.crc32,
        "keys_sha256": hashlib.sha256(keys_blob).hexdigest(),
        "skipped": [{"key": s.key, "reason": s.reason} for s in index.skipped],
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


def load_entry(entry: Path, key: str, dim: int, kind: IndexKind, use_gpu: bool | None) -> TrainIndex | None:
    """The cached index in `entry`, or None when it is absent or fails a check (then it is rebuilt)."""
    from synthgen.sources.base import Skipped

    if not (entry / "meta.json").is_file():
        return None
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if (meta["format"], meta["key"], meta["dim"], meta["kind"]) != (CACHE_FORMAT, key, dim, kind):
            raise ValueError("metadata does not match the requested index")
        keys_blob = (entry / "keys.json").read_bytes()
        if hashlib.sha256(keys_blob).hexdigest() != meta["keys_sha256"]:
            raise ValueError("keys.json checksum mismatch")
        keys = json.loads(keys_blob)
        n = int(meta["n"])
        if file_crc32(entry / "vectors.f32") != meta["vectors_crc32"] or len(keys) != n:
            raise ValueError("vectors.f32 checksum mismatch")
        index = TrainIndex.open(entry / "vectors.f32", keys, dim, kind=kind, use_gpu=use_gpu)
        index.cache_hit = True
        index.skipped = [Skipped(str(s["key"]), str(s["reason"])) for s in meta["skipped"]]
    except (OSError, ValueError, KeyError, TypeError) as error:
        log.warning("ignoring damaged audit index cache %s: %s", entry, error)
        return None
    if index.resolved_kind != "exact":
        _load_approximate(index, entry)
    return index


def _load_approximate(index: TrainIndex, entry: Path) -> None:
    """Read index.faiss; if it is missing or damaged, rebuild it from the (verified) vectors and rewrite it."""
    import faiss

    path = entry / "index.faiss"
    try:
        approx: Any = faiss.read_index(str(path))
        if approx.ntotal != len(index) or approx.d != index.dim:
            raise ValueError(f"index.faiss holds {approx.ntotal} x {approx.d} vectors")
        index._approx, index._approx_kind = approx, index.resolved_kind
    except (RuntimeError, ValueError, OSError) as error:
        log.warning("rebuilding damaged audit index %s: %s", path, error)
        index.build_index()
        with atomic_path(path) as tmp:
            faiss.write_index(index._approx, str(tmp))


def file_crc32(path: Path, block: int = 1 << 24) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            crc = zlib.crc32(chunk, crc)
    return crc
