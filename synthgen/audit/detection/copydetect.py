"""The default copy detector of the audit: cheap retrieval, then geometric verification of each candidate pair.

Stage 1 (retrieval): every training image is indexed by a VLAD code of its SIFT keypoints (crop-, rotation-
and scale-tolerant) and by its residual pixel embedding (32x32 RGB minus the training set's mean image, which
cancels the black borders that make raw pixel correlations of unrelated frames reach 0.96).
A candidate and its mirror image are each searched, giving up to 2 * `top_k` + `pixel_top_k` training
images to verify.

Stage 2 (verification): local features of the candidate (and its mirror) are matched against each of them;
the similarity is the larger of

- the geometric score 1 - 2^(-n / 8) of the n matches one similarity transform explains (resize, crop,
  rotation; flips via the mirror; vertical flip = mirror + 180 degrees), with keypoints common to the
  training set (scope borders, overlays, text) ignored: 8 consistent matches give 0.5;
- the pixel score (r - 0.95) / 0.05 of the best residual pixel correlation r over the four flips, for
  near-exact copies of texture-less images (no keypoints): r = 0.975 gives 0.5. Unrelated real frames
  stay below r = 0.93; resized, re-encoded, noised or blurred copies above 0.98.

Region-level copies (a crop of down to ~10% of a frame, enlarged) are found through tiles of each training
frame described at 256 px and verified against its fine keypoints (regions.py); same score.

So 0.5 is the default fixed threshold; `threshold: auto` calibrates it on the training set (calibrate.py).
Measured on real colonoscopy frames (docs/audit.md): unrelated frames of the same scopes scored at most
0.35 (0.45 with one text box stamped on every image); every copy under a single edit of the bench scored
at least 0.5.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from synthgen.audit.detection.evidence import KEYPOINTS, PIXEL, REGION, Evidence, geometric_evidence, pixel_evidence
from synthgen.audit.detection.fit_memory import MEMORY_CHECK, check_fit_memory
from synthgen.audit.detection.keypoint_matching import MAX_SCALE, Geometry, correspondences, fit_geometry
from synthgen.audit.detection.keypoint_store import FIT_CHUNK, KeypointStore
from synthgen.audit.detection.local_features import (
    WORK_SIDE,
    CommonStructure,
    Features,
    Vocabulary,
    spread,
    working_gray,
    working_size,
)
from synthgen.audit.detection.parallel import PerThreadExtractor, parallel_map
from synthgen.audit.detection.regions import FINE_SCALES, FINE_SIDE, RegionIndex, tile_boxes
from synthgen.audit.index.embedders import l2_normalise
from synthgen.audit.index.train_index import BATCH_SIZE, TrainIndex, batched, source_total
from synthgen.runtime import Progress, memory_available

if TYPE_CHECKING:
    from synthgen.sources.base import Skipped, Source

HALF_MATCHES = 8.0  # consistent matches that make the geometric score 0.5
PIXEL_FLOOR = 0.95  # residual pixel correlation that makes the pixel score 0 (and 0.975 makes it 0.5)
MIN_IMAGES_FOR_MEAN = 8  # fewer training images: no mean image is subtracted (it would cancel the images)
FRAME_SCALES = (1 / MAX_SCALE, MAX_SCALE)  # zooms accepted between a candidate and a training frame
_FLIPS = (None, Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180)


def geometric_score(matches: float) -> float:
    """1 - 2^(-matches / 8): 0 for no consistent match, 0.5 for 8, 0.94 for 32, ~1 for an exact copy."""
    return 1.0 - 2.0 ** (-max(matches, 0.0) / HALF_MATCHES)


def _matches_to_beat(score: float) -> int:
    """The fewest consistent matches whose geometric score is above `score` (exactly as `_Best.offer` compares)."""
    if score >= 1.0:  # nothing scores above an exact copy
        return 1 << 62
    matches = max(0, math.floor(-HALF_MATCHES * math.log2(max(1.0 - score, 1e-300))) - 1)
    while geometric_score(matches) <= score:
        matches += 1
    return matches


def pixel_score(correlation: float) -> float:
    """Pixel correlation rescaled so that only near-exact copies score: 0 up to 0.95, 0.5 at 0.975, 1 at 1."""
    return float(np.clip((correlation - PIXEL_FLOOR) / (1.0 - PIXEL_FLOOR), 0.0, 1.0))


class ResidualPixelEmbedder:
    """32x32 RGB minus the training set's mean image, mean-centred and unit-normed: inner product = correlation
    of what differs from the typical training image (scope borders and overlays shared by all cancel out)."""

    name = "pixel-residual"
    size = 32
    dim = 3 * size * size
    description = "Pearson correlation of the 32x32 RGB pixels of two images after subtracting the training mean image"

    def __init__(self, mean: np.ndarray | None = None) -> None:
        self.mean = np.zeros(self.dim, np.float32) if mean is None else np.asarray(mean, np.float32)

    def pixels(self, images: list[Image.Image]) -> np.ndarray:
        """(n, dim) uint8 raw pixels (area-averaged), compact enough to keep for a whole training set."""
        size = (self.size, self.size)
        rows = [np.asarray(image.convert("RGB").resize(size, Image.Resampling.BOX)).reshape(-1) for image in images]
        return np.stack(rows) if rows else np.zeros((0, self.dim), np.uint8)

    def from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        residual = pixels.astype(np.float32) - self.mean
        return l2_normalise(residual - residual.mean(axis=1, keepdims=True))

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        return self.from_pixels(self.pixels(images))


class CopyDetector:
    """Two-stage copy detector (see the module docstring); `fit` on the training set, then `match` candidates."""

    name = "copydetect"
    parallel_match = True  # match() only reads the fitted state: `Auditor.check` may run chunks in threads
    default_threshold = 0.5
    # `threshold: auto` stays within these: never below the fixed default, and never above the score of
    # 16 consistent matches, which no unrelated frame reached on the bench (a copy regardless of calibration).
    threshold_bounds = (0.5, geometric_score(16))
    description = (
        "copy score in [0, 1] of a candidate and its best-matching training image: the larger of "
        "1 - 2^(-n/8) for n local-feature matches that one resize/crop/rotation (or its mirror) explains, "
        "keypoints common to the training set (borders, overlays) ignored, and (r - 0.95)/0.05 for the pixel "
        "correlation r (minus the training mean image) of near-exact copies; 0.5 = 8 consistent matches or "
        "r = 0.975, 1 = identical"
    )

    def __init__(
        self,
        *,
        top_k: int = 24,
        pixel_top_k: int = 4,
        max_keypoints: int = 600,
        words: int = 64,
        reference_images: int = 300,
        common_fraction: float = 0.02,
        regions: bool = True,
    ) -> None:
        self.top_k = top_k
        self.pixel_top_k = pixel_top_k
        self.words = words
        self.reference_images = reference_images
        self.common_fraction = common_fraction
        self.embedder = ResidualPixelEmbedder()
        self.max_keypoints = max_keypoints
        self.workers: int | None = None  # threads of fit and calibration (None: parallel.worker_count)
        self._extract = PerThreadExtractor(max_keypoints)
        self.keys: list[str] = []
        self.sizes: list[tuple[int, int]] = []  # (width, height) of each training image: evidence boxes in its pixels
        self.skipped: list[Skipped] = []
        self.features = KeypointStore()  # per training frame (on disk past 1 GiB: keypoint_store.py)
        self.common = CommonStructure(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), 1.5, 0.5)
        self.vocabulary = Vocabulary(np.zeros((1, 128), np.float32))
        self.index = TrainIndex(self.embedder.dim)
        self._codes: TrainIndex | None = None
        self._row: dict[str, int] = {}
        self.regions = RegionIndex() if regions else None

    @property
    def n_train(self) -> int:
        return len(self.keys)

    def fit(self, source: Source, progress: Progress | None = None) -> None:
        """Extract local features and pixel embeddings of every readable training image, then index them."""
        total = source_total(source)
        available = self.memory_for_fit()
        check_fit_memory(total, self.regions is not None, available)
        pixels = []
        self.features, fine = KeypointStore(), KeypointStore()
        for batch in batched(source, BATCH_SIZE):
            images = [sample.image for sample in batch]
            extracted = parallel_map(self._extract_training, images, self.workers)
            self.features.extend(coarse for coarse, _ in extracted)
            if self.regions is not None:
                fine.extend(detail for _, detail in extracted if detail is not None)
            self.keys.extend(sample.key for sample in batch)
            self.sizes.extend(image.size for image in images)
            pixels.append(self.embedder.pixels(images))
            if total is None:
                check_fit_memory(len(self.keys), self.regions is not None, available, read_so_far=True)
            if progress:
                progress("embedding training images", len(self.keys), total)
        self.skipped = list(source.skipped)
        self._row = {key: row for row, key in enumerate(self.keys)}
        if not self.keys:
            return
        raw = np.concatenate(pixels)
        if len(raw) >= MIN_IMAGES_FOR_MEAN:
            self.embedder = ResidualPixelEmbedder(raw.mean(axis=0, dtype=np.float64))
        self.index = self._chunked_index(self.embedder.dim, lambda rows: self.embedder.from_pixels(raw[rows]))
        pixels.clear()  # `raw` holds them (uint8: 3 KB per image)
        reference = [self.features[i] for i in spread(len(self.features), self.reference_images)]
        min_images = max(3, math.ceil(self.common_fraction * len(reference)))
        self.common = CommonStructure.learn(reference, min_images=min_images)
        del reference
        self.features.map_in_place(self._content, self.workers)  # never both sets whole in memory
        sample = [self.features[i].floats() for i in spread(len(self.features), 500)]
        self.vocabulary = Vocabulary.train(np.concatenate(sample), self.words)
        del sample
        encode = self.vocabulary.encode
        self._codes = self._chunked_index(
            self.vocabulary.dim, lambda rows: np.stack(parallel_map(encode, self.features[rows], self.workers))
        )
        if self.regions is not None:
            self.regions.workers = self.workers
            self.regions.fit(fine)  # takes the store over (filtered in place)

    def memory_for_fit(self) -> int | None:
        """The memory a fit may count on (MemAvailable), or None to refuse nothing ($SYNTHGEN_AUDIT_MEMORY_CHECK=0)."""
        return memory_available() if os.environ.get(MEMORY_CHECK, "1").strip() != "0" else None

    def _chunked_index(self, dim: int, rows_of: Callable[[slice], np.ndarray]) -> TrainIndex:
        """A TrainIndex of every training row, computed and added FIT_CHUNK rows at a time: no whole-set temporaries
        (the same rows as one batch: each row is computed alone), and beyond 1 GiB the store spills to disk."""
        index = TrainIndex(dim)
        for start in range(0, len(self.keys), FIT_CHUNK):
            rows = slice(start, start + FIT_CHUNK)
            index.add(rows_of(rows), self.keys[rows])
        return index

    def _extract_training(self, image: Image.Image) -> tuple[Features, Features | None]:
        """One training image's keypoints at WORK_SIDE and (with regions) FINE_SIDE: the bulk of `fit`, per thread."""
        return self._extract(working_gray(image)), self.regions.extract(image) if self.regions is not None else None

    def match(
        self, images: list[Image.Image], exclude: list[set[str]] | None = None, vectors: np.ndarray | None = None
    ) -> list[tuple[float, str]]:
        """(similarity, nearest training key) per image; `exclude[i]`: training keys image i may not match;
        `vectors`: the images' `embedder` embeddings when the caller has them (not computed again)."""
        return [(score, key) for score, key, _ in self.match_evidence(images, exclude, vectors)]

    def match_evidence(
        self, images: list[Image.Image], exclude: list[set[str]] | None = None, vectors: np.ndarray | None = None
    ) -> list[tuple[float, str, Evidence | None]]:
        """`match` plus the evidence of each image's best pair (evidence.py: the transform found, the number of
        consistent matches, the matched region in both images' pixels); None when nothing matched at all."""
        if not images:
            return []
        if not self.keys or self._codes is None:
            raise RuntimeError("CopyDetector.match before fit (or fit on no images)")
        exclude = exclude or [set() for _ in images]
        pixel = self._pixel_candidates(images, exclude, vectors)
        grays = [working_gray(image) for image in images]
        queries = [self._content(self._extract(gray)) for gray in grays]
        mirrors = [self._extract(np.ascontiguousarray(gray[:, ::-1])) for gray in grays]
        frames = self._frame_candidates(queries + mirrors, exclude + exclude)
        regions = self._region_candidates(queries + mirrors, exclude + exclude)
        results = []
        for i, (query, mirror) in enumerate(zip(queries, mirrors, strict=True)):
            key, (score, flip) = max(pixel[i].items(), key=lambda item: item[1][0], default=(self.keys[0], (0.0, 0)))
            best = _Best(score, self._row[key], flip=flip)
            for features, j, mirrored in ((query, i, False), (mirror, len(images) + i, True)):
                rows = [self._row[key] for key in dict.fromkeys(frames[j] + list(pixel[i]))]
                self._verify(best, features, rows, regions[j], mirrored)
            results.append((best.score, self.keys[best.row], self._evidence(best, images[i], grays[i])))
        return results

    def _verify(self, best: _Best, features: Features, frame_rows: list[int], region_rows: list[int], mirrored: bool):
        """Offer `best` each pair of `features` with a training frame (its keypoints at WORK_SIDE), then with a
        training region (fine keypoints), in this order.

        The same verdicts as verifying each pair alone (tests/test_copydetect_speed.py), cheaper: the descriptor
        matches of all pairs come from one matrix product (`correspondences`), and a pair is taken no further once
        it cannot score above the best pair so far (`offer` keeps the earlier pair on ties, so it could never be
        taken): RANSAC is skipped when even all its matches would not be enough (its consistent matches are a
        subset of them), and the scale and rotation checks when RANSAC's consistent matches are not.
        """
        fine = self.regions.features if self.regions is not None else []
        if self.regions is None:
            region_rows = []
        trains = [self.features[row] for row in frame_rows] + [fine[row] for row in region_rows]
        pairs = correspondences(features, trains)
        for n, (row, found) in enumerate(zip(frame_rows + region_rows, pairs, strict=True)):
            needed = _matches_to_beat(best.score)
            if len(found) < needed:
                continue
            region = n >= len(frame_rows)
            scales = FINE_SCALES if region else FRAME_SCALES
            geometry = fit_geometry(found, scales=scales, min_matches=needed)
            best.offer(geometry, row, REGION if region else KEYPOINTS, mirrored)

    def _evidence(self, best: _Best, image: Image.Image, gray: np.ndarray) -> Evidence | None:
        """The best pair's evidence in both images' pixels (training size unknown: no training box)."""
        if best.score <= 0.0:
            return None
        size = self.sizes[best.row] if best.row < len(self.sizes) else None
        if best.geometry is None or best.geometry.matrix is None:
            return pixel_evidence(best.flip, image.size, size)
        side = FINE_SIDE if best.kind == REGION else WORK_SIDE
        geometry = best.geometry
        return geometric_evidence(
            best.kind,
            geometry.matches,
            geometry.matrix,
            geometry.inliers if geometry.inliers is not None else np.zeros((0, 2)),
            mirrored=best.mirrored,
            candidate=(image.size, (gray.shape[1], gray.shape[0])),
            train=(size, working_size(size, side)) if size else None,
            train_side=side,
        )

    def _frame_candidates(self, features: list[Features], exclude: list[set[str]]) -> list[list[str]]:
        """Per query: the `top_k` training keys whose frame VLAD code is nearest, `exclude[i]` left out."""
        assert self._codes is not None
        codes = np.stack([self.vocabulary.encode(f) for f in features])
        _, hits = self._codes.search(codes, self.top_k + max(len(e) for e in exclude), stable=True)
        pairs = zip(hits, exclude, strict=True)
        return [[key for key in keys if key not in skip][: self.top_k] for keys, skip in pairs]

    def _region_candidates(self, features: list[Features], exclude: list[set[str]]) -> list[list[int]]:
        """Per query: training rows one of whose tiles is near its tile-vocabulary code (none without regions)."""
        if self.regions is None:
            return [[] for _ in features]
        rows = [{self._row[key] for key in skip if key in self._row} for skip in exclude]
        return self.regions.search(self.regions.encode(features), rows)

    def info(self) -> dict[str, Any]:
        """Settings and training-set facts for summary.json."""
        return {
            "kind": "two-stage: VLAD/pixel retrieval + SIFT/RANSAC verification",
            "work_side": WORK_SIDE,
            "top_k": self.top_k,
            "pixel_top_k": self.pixel_top_k,
            "vocabulary_words": len(self.vocabulary.centroids),
            "mean_keypoints": round(float(np.mean(self.features.counts())), 1) if len(self.features) else 0.0,
            "common_structure_keypoints": len(self.common),
            **(self._region_info() if self.regions is not None else {"regions": False}),
        }

    def _region_info(self) -> dict[str, Any]:
        regions = self.regions
        assert regions is not None
        fine = regions.features
        return {
            "regions": True,
            "fine_side": FINE_SIDE,
            "region_tiles": len(tile_boxes()),
            "region_top_k": regions.top_k,
            "region_vocabulary_words": len(regions.vocabulary.centroids),
            "fine_mean_keypoints": round(float(np.mean(fine.counts())), 1) if len(fine) else 0.0,
            "fine_common_structure_keypoints": len(regions.common),
        }

    def _content(self, features: Features) -> Features:
        """A candidate's keypoints minus those on the training set's common structure (same place, same look)."""
        return features.subset(~self.common.mask(features)) if len(self.common) else features

    def _pixel_candidates(
        self, images: list[Image.Image], exclude: list[set[str]], vectors: np.ndarray | None = None
    ) -> list[dict[str, tuple[float, int]]]:
        """Per image: training key -> (pixel score, which of _FLIPS gave it) of the nearest pixel neighbours over
        the four flips."""
        flipped = [image.transpose(flip) for flip in _FLIPS if flip is not None for image in images]
        upright = self.embedder.embed(images) if vectors is None else np.asarray(vectors, np.float32)
        extra = max(len(e) for e in exclude)
        queries = np.concatenate([upright, self.embedder.embed(flipped)])  # flip-major, as _FLIPS lists them
        similarities, keys = self.index.search(queries, self.pixel_top_k + extra, stable=True)  # chunk-independent
        found: list[dict[str, tuple[float, int]]] = [{} for _ in images]
        for row, (sims, names) in enumerate(zip(similarities, keys, strict=True)):
            i, flip = row % len(images), row // len(images)
            kept = [(s, k) for s, k in zip(sims, names, strict=True) if k not in exclude[i]][: self.pixel_top_k]
            for similarity, key in kept:
                found[i][key] = max(found[i].get(key, (0.0, 0)), (pixel_score(float(similarity)), flip))
        return found


@dataclass
class _Best:
    """The best-scoring pair so far of one candidate: a pixel score (with its flip), or a verified geometry."""

    score: float
    row: int
    kind: str = PIXEL
    geometry: Geometry | None = None
    mirrored: bool = False
    flip: int = 0

    def offer(self, geometry: Geometry, row: int, kind: str, mirrored: bool) -> None:
        """Take this pair if it scores higher (ties keep the earlier pair, as retrieval ranked them)."""
        score = geometric_score(geometry.matches)
        if score > self.score:
            self.score, self.row, self.kind, self.geometry, self.mirrored = score, row, kind, geometry, mirrored
