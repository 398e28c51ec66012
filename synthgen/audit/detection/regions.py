"""Region-level copies for the copy detector: a third party keeps only part of a training frame (down to ~10%
of its area, e.g. the lesion) and enlarges it, by up to ~3.2x in width (10x in area) or more.

Why the whole-frame path misses them: its keypoints are found at 128 px on both sides, so the structure a
10% crop shows at 128 px is sub-pixel detail of the 128-px training frame, and the crop's global code looks
like an unrelated frame's. So each training frame is also described at FINE_SIDE = 256 px (its stored
resolution here), where a 10% crop's content spans ~80 px, and:

- retrieval unit = a tile, not the frame: VLAD codes of the fine keypoints inside overlapping squares of
  0.4 x 0.4 of the frame (stride 0.2: 16 tiles), so a crop competes with the part of a frame it came from.
  The tile vocabulary has 128 words over RootSIFT reduced to 32 dimensions by PCA (4,096-d codes, stored as
  int8 with one scale per tile: 4 KB); more words found the source of 10% crops more often than the frame
  vocabulary did (at the same code size), PCA of whole codes much less often;
- verification against the fine keypoints, with scales from 0.2 (a query at 128 px mapping onto 26 px of the
  256-px frame: a crop of 1% of its area) to 3.5, accepted only here: on the frame path such zooms let
  RANSAC explain random matches.

Memory per training frame: ~700 fine keypoints (136 bytes each) and up to 16 tile codes (4 KB each).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from synthgen.audit.detection.keypoint_matching import MAX_SCALE, Geometry, verify_geometry
from synthgen.audit.detection.keypoint_store import FIT_CHUNK, KeypointStore, scratch_array
from synthgen.audit.detection.local_features import (
    WORK_SIDE,
    CommonStructure,
    Features,
    Vocabulary,
    spread,
    working_gray,
)
from synthgen.audit.detection.parallel import PerThreadExtractor, parallel_map

FINE_SIDE = 2 * WORK_SIDE
TILE = 0.4  # tile side, as a fraction of the frame's side
STRIDE = 0.2
MIN_TILE_KEYPOINTS = 8  # fewer (black scope corners): no code for that tile
FINE_SCALES = (0.2, MAX_SCALE)
IMAGE_BLOCK = 2048  # training frames whose tiles are scored at once (bounds the similarity buffer)
TILE_BLOCK = 1024  # tile codes converted to float32 at once by a search (a 16 MB buffer that stays in cache)
FLOAT_TILES_BYTES = 256 * 2**20  # float32 tile codes kept for search up to this size (~1,000 training frames)


def tile_boxes(tile: float = TILE, stride: float = STRIDE) -> list[tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) of the overlapping tiles, as fractions of the frame; the last row/column ends at 1."""
    starts = sorted({min(round(i * stride, 6), 1 - tile) for i in range(math.ceil((1 - tile) / stride) + 1)})
    return [(x, y, x + tile, y + tile) for y in starts for x in starts]


class RegionIndex:
    """Fine-scale keypoints and tile codes of every training frame; `search` then `verify` a candidate."""

    def __init__(
        self,
        *,
        max_keypoints: int = 700,
        words: int = 128,
        dims: int = 32,
        top_k: int = 12,
        reference_images: int = 150,
        common_fraction: float = 0.02,
    ) -> None:
        self.words = words
        self.dims = dims
        self.top_k = top_k
        self.reference_images = reference_images
        self.common_fraction = common_fraction
        self.max_keypoints = max_keypoints
        self.workers: int | None = None  # fit's threads (parallel.py); the copy detector sets its own
        self._extract = PerThreadExtractor(max_keypoints)  # fit extracts in threads
        self.features = KeypointStore()
        tolerance = 1.5 * FINE_SIDE / WORK_SIDE
        self.common = CommonStructure(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), tolerance, 0.5)
        self.vocabulary = Vocabulary(np.zeros((1, dims), np.float32))
        self.codes = np.zeros((0, self.vocabulary.dim), np.int8)
        self.scales = np.zeros(0, np.float32)
        self.owner = np.zeros(0, np.int64)  # training row of each tile code, ascending
        self._floats: tuple[np.ndarray, np.ndarray] | None = None  # (codes, as float32): `_all_float_tiles`

    def extract(self, image: Image.Image) -> Features:
        return self._extract(working_gray(image, FINE_SIDE))

    def fit(self, features: KeypointStore) -> None:
        """Learn the fine-scale common structure and the tile vocabulary, then code every frame's tiles.

        `features` is taken over: filtered in place, chunk by chunk, so the unfiltered and the filtered keypoints
        of the whole set are never held at once (fit's peak memory; on disk past 1 GiB: keypoint_store.py)."""
        if not features:
            return
        reference = [features[i] for i in spread(len(features), self.reference_images)]
        min_images = max(3, math.ceil(self.common_fraction * len(reference)))
        tolerance = self.common.position_tolerance
        self.common = CommonStructure.learn(reference, min_images=min_images, position_tolerance=tolerance)
        del reference
        features.map_in_place(lambda f: f.subset(~self.common.mask(f)), self.workers)
        self.features = features
        sample = np.concatenate([self.features[i].floats() for i in spread(len(self.features), 500)])
        self.vocabulary = Vocabulary.train(sample, self.words, dims=self.dims)
        del sample
        self.codes, self.scales, self.owner = self._code_tiles()

    def _code_tiles(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(int8 codes, scales, owner row) of every frame's tiles, written into arrays sized by a first (cheap)
        count, chunk by chunk: the float32 codes of only FIT_CHUNK frames exist at once, and the int8 codes go to
        a temporary file past 1 GiB (4 KB per tile: ~6 GiB at 100,000 frames)."""
        counts = np.array([len(_tile_masks(fine)) for fine in self.features], np.int64)
        owner = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        codes = scratch_array((int(counts.sum()), self.vocabulary.dim), np.int8)
        scales = np.empty(len(codes), np.float32)
        start = 0
        for first in range(0, len(self.features), FIT_CHUNK):
            chunk = self.features[first : first + FIT_CHUNK]
            for quantised, scale in parallel_map(self._tile_codes, chunk, self.workers):
                codes[start : start + len(quantised)], scales[start : start + len(quantised)] = quantised, scale
                start += len(quantised)
        return codes, scales, owner

    def _tile_codes(self, fine: Features) -> tuple[np.ndarray, np.ndarray]:
        """Quantised vocabulary codes of one frame's tiles that hold at least MIN_TILE_KEYPOINTS keypoints, in tile
        order (quantised per code: the same bytes as quantising all frames' codes at once)."""
        codes = [self.vocabulary.encode(fine.subset(inside)) for inside in _tile_masks(fine)]
        return _quantise(np.stack(codes) if codes else np.zeros((0, self.vocabulary.dim), np.float32))

    def encode(self, features: list[Features]) -> np.ndarray:
        """(n, dim) tile-vocabulary codes of query keypoints (found at WORK_SIDE)."""
        return np.stack([self.vocabulary.encode(f) for f in features])

    def search(self, codes: np.ndarray, exclude: list[set[int]]) -> list[list[int]]:
        """Per code: the `top_k` training rows whose best tile is most similar, rows in `exclude[i]` left out."""
        n_train = len(self.features)
        best = np.full((len(codes), n_train), -np.inf, np.float32)
        floats = self._all_float_tiles()
        queries = codes.astype(np.float32)
        if len(self.owner):
            starts = np.flatnonzero(np.r_[True, self.owner[1:] != self.owner[:-1]])  # first tile of each frame
            for begin in range(0, len(starts), IMAGE_BLOCK):
                first = starts[begin]
                last = starts[begin + IMAGE_BLOCK] if begin + IMAGE_BLOCK < len(starts) else len(self.owner)
                sims = self._similarities(queries, first, last, floats)
                frames = starts[begin : begin + IMAGE_BLOCK]
                best[:, self.owner[frames]] = np.maximum.reduceat(sims, frames - first, axis=1)
        found = []
        for i, skip in enumerate(exclude):
            if skip:
                best[i, list(skip)] = -np.inf
            k = min(self.top_k, n_train)
            top = np.argpartition(-best[i], k - 1)[:k] if k else np.zeros(0, np.int64)
            found.append([int(r) for r in top[np.argsort(-best[i, top])] if np.isfinite(best[i, r])])
        return found

    def _similarities(self, queries: np.ndarray, first: int, last: int, floats: np.ndarray | None) -> np.ndarray:
        """(queries, tiles first..last) similarities: the queries times each int8 code, times the code's scale.

        The codes are converted to float32 TILE_BLOCK at a time into one reused buffer that stays in cache (or
        read from the kept float32 copy), and scaled after the product: one multiply per similarity, not per code
        component. Converting and scaling a whole block of 2,048 frames' codes cost ~3x the product itself."""
        if floats is not None:
            sims = queries @ floats[first:last].T
        else:
            sims = np.empty((len(queries), last - first), np.float32)
            buffer = np.empty((min(TILE_BLOCK, last - first), self.codes.shape[1]), np.float32)
            for start in range(first, last, TILE_BLOCK):
                stop = min(start + TILE_BLOCK, last)
                np.copyto(buffer[: stop - start], self.codes[start:stop])
                sims[:, start - first : stop - first] = queries @ buffer[: stop - start].T
        sims *= self.scales[first:last]
        return sims

    def _all_float_tiles(self) -> np.ndarray | None:
        """Every int8 tile code as float32 (unscaled), converted once and kept while it takes at most
        FLOAT_TILES_BYTES (converting 16 codes per training frame for every search cost more than the search
        itself); None above that (converted TILE_BLOCK codes at a time per search, memory bounded)."""
        codes = self.codes
        if codes.size * 4 > FLOAT_TILES_BYTES or not len(codes):
            return None
        kept = self._floats
        if kept is None or kept[0] is not codes:  # fit, or a cache load, replaced the codes
            kept = self._floats = (codes, codes.astype(np.float32))
        return kept[1]

    def verify(self, query: Features, row: int) -> int:
        """Consistent matches of `query` (keypoints at WORK_SIDE) with the fine keypoints of training `row`."""
        return self.geometry(query, row).matches

    def geometry(self, query: Features, row: int) -> Geometry:
        """`verify` with the transform found (onto the FINE_SIDE frame): the verdict's evidence."""
        return verify_geometry(query, self.features[row], scales=FINE_SCALES)


def _tile_masks(fine: Features) -> list[np.ndarray]:
    """Per tile (in `tile_boxes` order) holding at least MIN_TILE_KEYPOINTS keypoints: which keypoints it holds."""
    masks = []
    x, y = fine.points[:, 0], fine.points[:, 1]
    for x0, y0, x1, y1 in np.array(tile_boxes(), np.float32) * FINE_SIDE:
        inside = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
        if inside.sum() >= MIN_TILE_KEYPOINTS:
            masks.append(inside)
    return masks


def _quantise(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes and one float scale per code: code ~ int8 * scale (4x smaller than float32)."""
    scales = np.maximum(np.abs(codes).max(axis=1), 1e-12) / 127.0 if len(codes) else np.zeros(0)
    quantised = np.clip(np.rint(codes / scales[:, None]), -127, 127).astype(np.int8) if len(codes) else codes
    return quantised.astype(np.int8), scales.astype(np.float32)
