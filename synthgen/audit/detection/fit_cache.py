"""The fitted detector kept on disk, so a training set is indexed (and `threshold: auto` calibrated) once, not on
every build or `synthgen audit`.

copydetect keeps its whole fitted state (every frame's keypoints, the common structure, both vocabularies, the
frame and tile codes, the pixel embeddings) in `copydetect-<key>/`: one `.npy` per array (the frame codes and
pixel embeddings as raw float32 `.f32` rows), `facts.json` and `meta.json` (each file's shape, dtype and CRC-32).
A load memory-maps the large arrays read-only (keypoints, tile codes, both TrainIndexes' vectors), so they are
page-cache backed: a cache hit costs little RSS however large the training set (docs/audit.md, "At scale"), and
so does a fresh fit once saved (it is then read back like a hit, its RAM and temporary files freed).
Embedding detectors use index_cache.py (`cached_index`). Both live under `cache_root()/audit-index`. The key
covers the training data's fingerprint, the detector's settings, the code that fits it (sha256 of its modules'
source) and the versions of synthgen, OpenCV, FAISS and numpy, so any change gives a new entry. Entries are
written into a temporary folder and renamed into place; an entry that fails a check (checksum, shape, missing
file) is rebuilt, never trusted. Calibrations sit beside the fitted state, one file per calibration setting.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from synthgen.atomic import atomic_dir, write_json
from synthgen.audit.detection.copydetect import CopyDetector, ResidualPixelEmbedder
from synthgen.audit.detection.detector import Detector, EmbeddingDetector
from synthgen.audit.detection.keypoint_store import KeypointStore
from synthgen.audit.detection.local_features import CommonStructure, Vocabulary
from synthgen.audit.index.index_cache import cache_key, cached_index, default_cache_dir, file_crc32
from synthgen.audit.index.train_index import TrainIndex
from synthgen.runtime import Progress

if TYPE_CHECKING:
    from synthgen.sources.base import Source

CACHE_FORMAT = 2  # 2: one file per array, the large ones memory-mapped on load (1: one state.npz read whole)
RAW_VECTORS = ("pixel_vectors", "codes")  # raw float32 rows, searched in place by a file-backed VectorStore
MAPPED = ("points", "descriptors", "r_points", "r_descriptors", "r_codes")  # .npy files memory-mapped on load
log = logging.getLogger(__name__)
_HERE = Path(__file__).parent
FIT_CODE = (  # what the fitted state depends on
    "copydetect.py",
    "keypoint_store.py",
    "local_features.py",
    "keypoint_matching.py",
    "regions.py",
    "fit_cache.py",
)
CALIBRATION_CODE = ("calibrate.py", "grouping.py", "../../sources/groups.py")


def code_version(files: tuple[str, ...]) -> str:
    """sha256 of these modules' source and of the libraries' versions whose output they store."""
    import cv2
    import faiss

    from synthgen import __version__

    digest = hashlib.sha256(f"{__version__} {cv2.__version__} {faiss.__version__} {np.__version__}".encode())
    for name in files:
        digest.update((_HERE / name).read_bytes())
    return digest.hexdigest()


def _settings(detector: CopyDetector) -> dict[str, Any]:
    names = ("top_k", "pixel_top_k", "max_keypoints", "words", "reference_images", "common_fraction")
    settings: dict[str, Any] = {name: getattr(detector, name) for name in names}
    if detector.regions is not None:
        names = ("max_keypoints", "words", "dims", "top_k", "reference_images", "common_fraction")
        settings["regions"] = {name: getattr(detector.regions, name) for name in names}
    return settings


def copydetect_key(fingerprint: str, detector: CopyDetector) -> str:
    code = code_version(FIT_CODE)
    blob = {"format": CACHE_FORMAT, "data": fingerprint, "settings": _settings(detector), "code": code}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:32]


class FitCache:
    """Fit a detector through the cache in `root`, then keep its calibrations beside it (`entry`)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = default_cache_dir() if root is None else Path(root)
        self.entry: Path | None = None  # the fitted detector's entry (None: not cached)
        self.hit = False

    def fit(self, detector: Detector, source: Source, progress: Progress | None = None) -> None:
        """`detector.fit(source)`, or its cached state (then the source is not read and its `skipped` restored)."""
        try:
            fingerprint = source.fingerprint()
        except (NotImplementedError, OSError):  # a source that cannot say when it changed is never cached
            detector.fit(source, progress)
            return
        if isinstance(detector, EmbeddingDetector):
            kind = detector.index_kind
            detector.index = cached_index(source, detector.embedder, cache_dir=self.root, kind=kind, progress=progress)  # type: ignore[arg-type]
            detector.skipped = list(source.skipped)
            self.entry, self.hit = self.root / cache_key(fingerprint, detector.embedder, kind), detector.index.cache_hit
        elif isinstance(detector, CopyDetector):
            key = copydetect_key(fingerprint, detector)
            self.entry = self.root / f"copydetect-{key}"
            self.hit = _load(detector, self.entry, key)
            if self.hit:
                source.skipped = list(detector.skipped)
                if progress:
                    progress("loaded cached training index", detector.n_train, detector.n_train)
            else:
                detector.fit(source, progress)
                if _save(detector, self.entry, key):  # then read as a hit reads it: the fit's RAM and temporary files
                    _load(detector, self.entry, key, checksums=False)  # are freed, the entry's maps serve the checks
        else:
            detector.fit(source, progress)

    def holds(self, detector: CopyDetector, source: Source) -> bool:
        """Whether an entry for this detector and data exists (not checked: `fit` checks it), so fitting it
        again is not what a build would do; False for a source that cannot say when it changed."""
        try:
            key = copydetect_key(source.fingerprint(), detector)
        except (NotImplementedError, OSError):
            return False
        return (self.root / f"copydetect-{key}" / "meta.json").is_file()

    def calibration(self, settings: dict[str, Any]) -> tuple[float, dict[str, Any]] | None:
        """The stored (threshold, calibration record) for these settings, or None (absent or damaged)."""
        path = self._calibration_path(settings)
        if path is None or not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text())
            payload = json.dumps(stored["payload"], sort_keys=True)
            if hashlib.sha256(payload.encode()).hexdigest() != stored["sha256"]:
                raise ValueError("checksum mismatch")
            return float(stored["payload"]["threshold"]), dict(stored["payload"]["calibration"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            log.warning("ignoring damaged cached calibration %s: %s", path, error)
            return None

    def keep_calibration(self, settings: dict[str, Any], threshold: float, calibration: dict[str, Any]) -> None:
        path = self._calibration_path(settings)
        if path is None or not path.parent.is_dir():
            return
        payload = json.loads(json.dumps({"threshold": threshold, "calibration": calibration}, default=str))
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        try:
            write_json(path, {"payload": payload, "sha256": digest})
        except OSError as error:
            log.warning("could not cache the calibration in %s: %s", path, error)

    def _calibration_path(self, settings: dict[str, Any]) -> Path | None:
        if self.entry is None:
            return None
        blob = json.dumps({"settings": settings, "code": code_version(CALIBRATION_CODE)}, sort_keys=True, default=str)
        return self.entry / f"calibration-{hashlib.sha256(blob.encode()).hexdigest()[:24]}.json"


def _vocabulary_arrays(prefix: str, vocabulary: Vocabulary) -> dict[str, np.ndarray]:
    arrays = {f"{prefix}centroids": vocabulary.centroids}
    if vocabulary.projection is not None:
        arrays[f"{prefix}proj_mean"], arrays[f"{prefix}proj_matrix"] = vocabulary.projection
    return arrays


def _vocabulary(prefix: str, arrays: dict[str, np.ndarray]) -> Vocabulary:
    projection = None
    if f"{prefix}proj_mean" in arrays:
        projection = (arrays[f"{prefix}proj_mean"], arrays[f"{prefix}proj_matrix"])
    return Vocabulary(arrays[f"{prefix}centroids"], projection)


def _parts(detector: CopyDetector) -> tuple[dict[str, np.ndarray], dict[str, KeypointStore], dict[str, Any]]:
    """The fitted copydetect as arrays, keypoint stores by prefix ("" frames, "r_" regions) and JSON-able facts."""
    assert detector._codes is not None
    arrays: dict[str, np.ndarray] = {"pixel_mean": detector.embedder.mean, "pixel_vectors": detector.index.vectors}
    arrays["codes"] = detector._codes.vectors
    arrays["offsets"] = detector.features.offsets()
    keypoints = {"": detector.features}
    arrays["common_points"], arrays["common_descriptors"] = detector.common.points, detector.common.descriptors
    arrays.update(_vocabulary_arrays("vocab_", detector.vocabulary))
    common = {"frame": [detector.common.position_tolerance, detector.common.distance]}
    regions = detector.regions
    if regions is not None:
        arrays["r_offsets"], keypoints["r_"] = regions.features.offsets(), regions.features
        arrays["r_common_points"], arrays["r_common_descriptors"] = regions.common.points, regions.common.descriptors
        arrays.update(_vocabulary_arrays("r_vocab_", regions.vocabulary))
        arrays["r_codes"], arrays["r_scales"], arrays["r_owner"] = regions.codes, regions.scales, regions.owner
        common["regions"] = [regions.common.position_tolerance, regions.common.distance]
    facts = {
        "keys": detector.keys,
        "sizes": [list(size) for size in detector.sizes],
        "skipped": [{"key": s.key, "reason": s.reason} for s in detector.skipped],
        "common": common,
    }
    return arrays, keypoints, facts


def _restore(detector: CopyDetector, arrays: dict[str, np.ndarray], facts: dict[str, Any]) -> None:
    from synthgen.sources.base import Skipped

    keys = [str(key) for key in facts["keys"]]
    detector.keys, detector._row = keys, {key: row for row, key in enumerate(keys)}
    detector.sizes = [(int(w), int(h)) for w, h in facts["sizes"]]
    detector.skipped = [Skipped(str(s["key"]), str(s["reason"])) for s in facts["skipped"]]
    detector.embedder = ResidualPixelEmbedder(arrays["pixel_mean"])
    detector.index = _index_over(arrays["pixel_vectors"], keys)
    detector._codes = _index_over(arrays["codes"], keys)
    detector.features = KeypointStore.over(arrays["points"], arrays["descriptors"], arrays["offsets"])
    detector.common = CommonStructure(arrays["common_points"], arrays["common_descriptors"], *facts["common"]["frame"])
    detector.vocabulary = _vocabulary("vocab_", arrays)
    regions = detector.regions
    if regions is not None:
        regions.features = KeypointStore.over(arrays["r_points"], arrays["r_descriptors"], arrays["r_offsets"])
        tolerance, distance = facts["common"]["regions"]
        regions.common = CommonStructure(arrays["r_common_points"], arrays["r_common_descriptors"], tolerance, distance)
        regions.vocabulary = _vocabulary("r_vocab_", arrays)
        regions.codes, regions.scales, regions.owner = arrays["r_codes"], arrays["r_scales"], arrays["r_owner"]


def _index_over(vectors: np.ndarray, keys: list[str]) -> TrainIndex:
    """A TrainIndex over `vectors`; a memory-mapped raw file is searched in place (TrainIndex.open), not copied."""
    if not isinstance(vectors, np.memmap) or vectors.filename is None:
        return TrainIndex.build(vectors, keys)
    index = TrainIndex.open(vectors.filename, keys, vectors.shape[1])
    _ = index.vectors  # mapped now: a later replacement of the entry (unlinked files) cannot pull it away
    return index


def _save(detector: CopyDetector, entry: Path, key: str) -> bool:
    """Write the fitted state into a staging folder that replaces `entry` whole; a failure only logs (False)."""
    if not detector.n_train:
        return False
    try:
        with atomic_dir(entry) as tmp:  # a damaged entry (a valid one would have loaded) is replaced
            arrays, keypoints, facts = _parts(detector)
            files = {name: _write_array(tmp, name, array) for name, array in arrays.items()}
            for prefix, store in keypoints.items():  # streamed: no concatenated copy of every keypoint
                files[f"{prefix}points"], files[f"{prefix}descriptors"] = _write_keypoints(tmp, prefix, store)
            (tmp / "facts.json").write_text(json.dumps(facts))
            facts_sha256 = hashlib.sha256((tmp / "facts.json").read_bytes()).hexdigest()
            meta = {"format": CACHE_FORMAT, "key": key, "files": files, "facts_sha256": facts_sha256}
            (tmp / "meta.json").write_text(json.dumps(meta))
    except OSError as error:  # unwritable, a full disk or a concurrent writer: the fitted detector is still good
        log.warning("could not cache the audit index in %s: %s", entry, error)
        return False
    return True


def _write_array(folder: Path, name: str, array: np.ndarray) -> dict[str, Any]:
    """One array as `name.npy` (or raw float32 rows `name.f32` for a TrainIndex's vectors); its meta.json record."""
    if name in RAW_VECTORS:
        path = folder / f"{name}.f32"
        array = np.ascontiguousarray(array, np.float32)  # already so: no copy, also of a spilled memory map
        array.tofile(path)
    else:
        path = folder / f"{name}.npy"
        np.save(path, array, allow_pickle=False)
    return _record(path, array.shape, array.dtype)


def _write_keypoints(folder: Path, prefix: str, store: KeypointStore) -> tuple[dict[str, Any], dict[str, Any]]:
    """A store's flat points and descriptors as `{prefix}points.npy` and `{prefix}descriptors.npy`, written through
    memory maps FIT_CHUNK frames at a time (from RAM or from the store's own files: never a whole copy)."""
    total = int(store.offsets()[-1])
    layout = [
        (folder / f"{prefix}points.npy", (total, 2), np.float32),
        (folder / f"{prefix}descriptors.npy", (total, 128), np.uint8),
    ]
    if not total:
        for path, shape, dtype in layout:
            np.save(path, np.zeros(shape, dtype), allow_pickle=False)
        return _record(*layout[0]), _record(*layout[1])
    points = np.lib.format.open_memmap(layout[0][0], mode="w+", dtype=np.float32, shape=(total, 2))
    descriptors = np.lib.format.open_memmap(layout[1][0], mode="w+", dtype=np.uint8, shape=(total, 128))
    start = 0
    for block_points, block_descriptors in store.blocks():
        points[start : start + len(block_points)] = block_points
        descriptors[start : start + len(block_points)] = block_descriptors
        start += len(block_points)
    points.flush()
    descriptors.flush()
    del points, descriptors
    return _record(*layout[0]), _record(*layout[1])


def _record(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> dict[str, Any]:
    return {"file": path.name, "shape": list(shape), "dtype": str(np.dtype(dtype)), "crc32": file_crc32(path)}


def _read_array(entry: Path, name: str, record: dict[str, Any], checksum: bool = True) -> np.ndarray:
    """One checked array: the large ones memory-mapped read-only (page-cache backed), the small ones in RAM.
    `checksum=False` skips reading the whole file for its CRC-32 (an entry this process has just written)."""
    path = entry / str(record["file"])
    if path.parent != entry or path.name not in (f"{name}.npy", f"{name}.f32"):
        raise ValueError(f"unexpected file {record['file']!r} for {name}")
    if checksum and file_crc32(path) != record["crc32"]:
        raise ValueError(f"{path.name} checksum mismatch")
    shape, dtype = tuple(int(d) for d in record["shape"]), np.dtype(record["dtype"])
    if path.suffix == ".f32":
        if dtype != np.float32 or len(shape) != 2 or path.stat().st_size != 4 * math.prod(shape):
            raise ValueError(f"{path.name} does not hold {shape} float32 rows")
        return np.memmap(path, dtype=np.float32, mode="r", shape=shape)
    array = np.load(path, mmap_mode="r" if name in MAPPED else None, allow_pickle=False)
    if array.shape != shape or array.dtype != dtype:
        raise ValueError(f"{path.name} holds {array.shape} {array.dtype}, expected {shape} {dtype}")
    return array


def _load(detector: CopyDetector, entry: Path, key: str, checksums: bool = True) -> bool:
    """Restore the fitted state from `entry`; False (and the detector untouched) when absent or damaged.
    `checksums=False`: the entry was just written by `_save`, whose CRC-32s are not read back a second time."""
    if not (entry / "meta.json").is_file():
        return False
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if (meta["format"], meta["key"]) != (CACHE_FORMAT, key):
            raise ValueError("metadata does not match the requested index")
        facts_blob = (entry / "facts.json").read_bytes()
        if hashlib.sha256(facts_blob).hexdigest() != meta["facts_sha256"]:
            raise ValueError("facts.json checksum mismatch")
        arrays = {name: _read_array(entry, name, record, checksums) for name, record in meta["files"].items()}
        facts = json.loads(facts_blob)
        if len(facts["keys"]) != len(arrays["pixel_vectors"]):
            raise ValueError("keys and vectors differ in number")
        fresh = copy.copy(detector)  # restored aside: a failure half-way leaves `detector` unfitted, not mixed
        fresh.regions = copy.copy(detector.regions)
        _restore(fresh, arrays, facts)
    except (OSError, ValueError, KeyError, TypeError, EOFError) as error:
        log.warning("ignoring damaged audit index cache %s: %s", entry, error)
        return False
    detector.__dict__.update(fresh.__dict__)
    return True
