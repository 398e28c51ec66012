"""Local features for the copy detector: SIFT keypoints, VLAD retrieval codes, and the "common structure"
(scope borders, overlays, burnt-in text) that every image of a training set shares. Matching keypoints and
verifying the matches geometrically is keypoint_matching.py.

Why these choices (measured on real colonoscopy frames, bench/bench_copy_detection.py):

- Keypoints are found on a grey image scaled to `WORK_SIDE` = 128 px (longest side): at that size JPEG
  blocks, sensor noise and a 2 px blur fall below SIFT's finest scale, so an edited copy keeps the keypoints
  of its original; 256 px found more keypoints but lost the blurred and noised copies.
- RootSIFT descriptors (Arandjelovic & Zisserman 2012) are stored as uint8 (x 512): 128 bytes per keypoint.
- A keypoint at the same spot with the same look in many training images is furniture of the scope, not
  content (a shared text box alone gave 16-20 consistent matches between unrelated frames), so such
  training keypoints take no part in retrieval or verification.

OpenCV's matcher is used instead of numpy products on purpose: small BLAS calls on a busy multi-core
machine cost milliseconds each in thread hand-offs; cv2.BFMatcher stays under a millisecond per pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

WORK_SIDE = 128
DESCRIPTOR_SCALE = 512.0  # RootSIFT components stay below ~0.4, so x512 fits uint8 at ~0.002 resolution
_MATCHER = cv2.BFMatcher(cv2.NORM_L2)


@dataclass
class Features:
    """Keypoints of one image at the working size: (n, 2) float32 positions and (n, 128) uint8 descriptors."""

    points: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.points)

    def floats(self) -> np.ndarray:
        return self.descriptors.astype(np.float32) / DESCRIPTOR_SCALE

    def subset(self, keep: np.ndarray) -> Features:
        return Features(self.points[keep], self.descriptors[keep])


EMPTY = Features(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8))


def working_gray(image: Image.Image, side: int = WORK_SIDE) -> np.ndarray:
    """8-bit grey image whose longest side is `side` (area-averaged when shrinking)."""
    gray = image.convert("L")
    size = working_size(gray.size, side)
    resample = Image.Resampling.BOX if side < max(gray.size) else Image.Resampling.BILINEAR
    return np.asarray(gray.resize(size, resample))


def working_size(size: tuple[int, int], side: int = WORK_SIDE) -> tuple[int, int]:
    """(width, height) of an image of `size` scaled so that its longest side is `side`."""
    scale = side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def spread(n: int, at_most: int) -> list[int]:
    """Up to `at_most` indices spread evenly over range(n) (a deterministic sample)."""
    if n <= at_most:
        return list(range(n))
    return [int(i) for i in np.linspace(0, n - 1, at_most).round().astype(int)]


class FeatureExtractor:
    """SIFT (RootSIFT descriptors) at the working size; at most `max_keypoints` per image."""

    def __init__(self, max_keypoints: int = 600, contrast_threshold: float = 0.005) -> None:
        self._sift = cv2.SIFT_create(nfeatures=max_keypoints, contrastThreshold=contrast_threshold)

    def __call__(self, gray: np.ndarray) -> Features:
        keypoints, descriptors = self._sift.detectAndCompute(np.ascontiguousarray(gray), None)
        if descriptors is None or not keypoints:
            return EMPTY
        root = np.sqrt(descriptors / (descriptors.sum(axis=1, keepdims=True) + 1e-7))
        quantised = np.clip(np.rint(root * DESCRIPTOR_SCALE), 0, 255).astype(np.uint8)
        points = np.array([k.pt for k in keypoints], dtype=np.float32)
        return Features(points, quantised)


class Vocabulary:
    """VLAD (Jegou et al. 2010) over RootSIFT: a global code whose inner product ranks retrieval candidates.

    With `projection` (mean, 128 x d matrix) descriptors are first reduced by PCA to d dimensions, which
    allows more words for the same code size (the region index: 128 words of 32 dimensions).
    """

    def __init__(self, centroids: np.ndarray, projection: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.projection = projection
        self.dim = self.centroids.size

    @classmethod
    def train(cls, descriptors: np.ndarray, words: int = 64, seed: int = 0, dims: int | None = None) -> Vocabulary:
        """k-means on (a sample of) training descriptors (PCA-reduced to `dims` if given); fewer words when
        there are few descriptors."""
        import faiss

        data = np.ascontiguousarray(descriptors, dtype=np.float32).reshape(-1, 128)
        projection = None
        if dims is not None and dims < 128 and len(data) > dims:
            mean = data.mean(axis=0)
            values, vectors = np.linalg.eigh(np.cov((data - mean).T))
            projection = (mean.astype(np.float32), np.ascontiguousarray(vectors[:, ::-1][:, :dims], np.float32))
            data = np.ascontiguousarray((data - projection[0]) @ projection[1])
        words = min(words, len(data) // 39)  # faiss wants >= 39 points per centroid
        if words <= 1:
            return cls(data.mean(axis=0, keepdims=True) if len(data) else np.zeros((1, 128), np.float32))
        kmeans = faiss.Kmeans(data.shape[1], words, niter=20, seed=seed, max_points_per_centroid=1000)
        kmeans.train(data)
        return cls(kmeans.centroids, projection)

    def encode(self, features: Features) -> np.ndarray:
        """Residual sums per word, each L2-normalised, square-rooted and unit-normed as a whole."""
        code = np.zeros_like(self.centroids)
        if len(features):
            descriptors = features.floats()
            if self.projection is not None:
                descriptors = np.ascontiguousarray((descriptors - self.projection[0]) @ self.projection[1])
            words = np.array([m.trainIdx for m in _MATCHER.match(descriptors, self.centroids)])
            np.add.at(code, words, descriptors - self.centroids[words])
        code /= np.maximum(np.linalg.norm(code, axis=1, keepdims=True), 1e-12)
        code = np.sign(code) * np.sqrt(np.abs(code))
        flat = code.ravel()
        return flat / max(float(np.linalg.norm(flat)), 1e-12)


class CommonStructure:
    """Keypoints that recur, same place and same look, in at least `min_images` images of a reference sample.

    Such keypoints belong to the scope or the recording system (black borders, overlay boxes, burnt-in text),
    so two unrelated frames share them. Learnt from the training set itself, no labels needed. Video frames
    of one lesion shift by more than `position_tolerance` between frames, so they do not count as common.
    """

    def __init__(self, points: np.ndarray, descriptors: np.ndarray, position_tolerance: float, distance: float):
        self.points = points
        self.descriptors = descriptors
        self.position_tolerance = position_tolerance
        self.distance = distance

    def __len__(self) -> int:
        return len(self.points)

    @classmethod
    def learn(
        cls,
        sample: list[Features],
        *,
        min_images: int,
        position_tolerance: float = 1.5,
        distance: float = 0.5,
    ) -> CommonStructure:
        points = np.concatenate([f.points for f in sample] or [EMPTY.points])
        descriptors = np.concatenate([f.floats() for f in sample] or [EMPTY.floats()])
        owner = np.concatenate([np.full(len(f), i) for i, f in enumerate(sample)] or [np.zeros(0, int)])
        cells = _cells(points, position_tolerance)
        by_cell: dict[tuple[int, int], np.ndarray] = {}
        order = np.lexsort((cells[:, 1], cells[:, 0]))
        keys, starts = np.unique(cells[order], axis=0, return_index=True)
        for key, rows in zip(map(tuple, keys), np.split(order, starts[1:]), strict=True):
            by_cell[key] = rows
        common: list[int] = []
        for (cx, cy), rows in by_cell.items():
            near = [
                by_cell[(cx + dx, cy + dy)] for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (cx + dx, cy + dy) in by_cell
            ]
            other = np.concatenate(near)
            close = _close(
                points[rows], descriptors[rows], points[other], descriptors[other], position_tolerance, distance
            )
            close &= owner[rows][:, None] != owner[other][None, :]
            for row, hits in zip(rows, close, strict=True):
                if hits.sum() >= min_images and len(np.unique(owner[other][hits])) >= min_images:
                    common.append(row)
        keep = _thin(points, descriptors, np.array(common, dtype=np.int64), position_tolerance, distance)
        return cls(points[keep], descriptors[keep], position_tolerance, distance)

    def mask(self, features: Features) -> np.ndarray:
        """True for the keypoints of `features` that are common structure."""
        found = np.zeros(len(features), dtype=bool)
        if not len(self) or not len(features):
            return found
        a, _ = _close_pairs(
            features.points, features.floats(), self.points, self.descriptors, self.position_tolerance, self.distance
        )
        found[a] = True
        return found


def _thin(
    points: np.ndarray, descriptors: np.ndarray, rows: np.ndarray, tolerance: float, distance: float
) -> np.ndarray:
    """One representative per recurring keypoint (each reference image holds its own copy of it)."""
    kept: dict[tuple[int, int], list[int]] = {}
    chosen: list[int] = []
    for row, (cx, cy) in zip(rows, _cells(points[rows], tolerance), strict=True):
        near = [r for dx in (-1, 0, 1) for dy in (-1, 0, 1) for r in kept.get((cx + dx, cy + dy), [])]
        if (
            near
            and _close(
                points[row : row + 1], descriptors[row : row + 1], points[near], descriptors[near], tolerance, distance
            ).any()
        ):
            continue
        kept.setdefault((int(cx), int(cy)), []).append(int(row))
        chosen.append(int(row))
    return np.array(chosen, dtype=np.int64)


def _cells(points: np.ndarray, tolerance: float) -> np.ndarray:
    return np.floor(points / max(2 * tolerance, 1e-6)).astype(np.int64).reshape(-1, 2)


def _close_pairs(
    points_a: np.ndarray,
    desc_a: np.ndarray,
    points_b: np.ndarray,
    desc_b: np.ndarray,
    tolerance: float,
    distance: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i in a, j in b) within `tolerance` px and `distance` in descriptor space.

    A grid of `tolerance`-sized cells finds the position candidates (3 x 3 neighbouring cells), so the cost
    grows with the pairs found, not with len(a) * len(b): masking a fine-scale image (~700 keypoints) against
    thousands of common keypoints takes ~3 ms instead of ~80 ms.
    """
    none = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if not len(points_a) or not len(points_b):
        return none
    size = max(tolerance, 1e-6)
    cells_a = np.floor(points_a / size).astype(np.int64)
    cells_b = np.floor(points_b / size).astype(np.int64)
    origin = np.minimum(cells_a.min(axis=0), cells_b.min(axis=0)) - 1
    span = int(max(cells_a.max(), cells_b.max()) - origin.min()) + 3
    key_b = (cells_b[:, 0] - origin[0]) * span + (cells_b[:, 1] - origin[1])
    order = np.argsort(key_b, kind="stable")
    sorted_keys = key_b[order]
    found_a, found_b = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            key = (cells_a[:, 0] + dx - origin[0]) * span + (cells_a[:, 1] + dy - origin[1])
            low = np.searchsorted(sorted_keys, key, "left")
            counts = np.searchsorted(sorted_keys, key, "right") - low
            total = int(counts.sum())
            if not total:
                continue
            rows_a = np.repeat(np.arange(len(points_a)), counts)
            offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
            found_a.append(rows_a)
            found_b.append(order[np.repeat(low, counts) + offsets])
    if not found_a:
        return none
    a, b = np.concatenate(found_a), np.concatenate(found_b)
    near = ((points_a[a] - points_b[b]) ** 2).sum(axis=1) <= tolerance**2
    a, b = a[near], b[near]
    alike = np.zeros(len(a), dtype=bool)
    for start in range(0, len(a), 65536):  # bounded temporaries: dense borders give millions of pairs
        part = slice(start, start + 65536)
        alike[part] = ((desc_a[a[part]] - desc_b[b[part]]) ** 2).sum(axis=1) <= distance**2
    return a[alike], b[alike]


def _close(
    points_a: np.ndarray,
    desc_a: np.ndarray,
    points_b: np.ndarray,
    desc_b: np.ndarray,
    tolerance: float,
    distance: float,
) -> np.ndarray:
    """(len a, len b) bool: within `tolerance` px and `distance` in descriptor space."""
    offsets = points_a[:, None, :] - points_b[None, :, :]
    near = (offsets**2).sum(axis=2) <= tolerance**2
    if not near.any():
        return near
    rows, cols = np.nonzero(near)  # few pairs: descriptor distances only where the positions agree
    near[rows, cols] = ((desc_a[rows] - desc_b[cols]) ** 2).sum(axis=1) <= distance**2
    return near
