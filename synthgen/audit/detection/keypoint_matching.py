"""Matching a query's keypoints with training images' and verifying the matches geometrically, for the copy
detector (local_features.py finds the keypoints).

Why these choices (measured on real colonoscopy frames, bench/bench_copy_detection.py):

- Verification: Lowe's ratio test, one match per training keypoint, then RANSAC for a similarity transform
  (scale, rotation, shift), which covers resizing, cropping and rotation; flips are handled by the caller
  matching the mirrored query too. Unrelated frames of the same domain kept <= 5 consistent matches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from synthgen.audit.detection.local_features import DESCRIPTOR_SCALE, Features

# Accepted rotations: within MAX_ROTATION of a quarter turn (small rotations on top of flips and 90-degree
# turns). Unrelated images of round scenes (lumen, scope edge) otherwise match under any rotation.
ROTATION_STEP = 90.0
MAX_ROTATION = 30.0
MAX_SCALE = 3.5  # verify_geometry() accepts transforms that shrink or grow by at most this much (by default)


@dataclass(frozen=True)
class Geometry:
    """What verification found: the consistent matches, and (when there are some) the similarity transform
    (2x3, query working px -> training working px) and the query keypoints it explains."""

    matches: int
    matrix: np.ndarray | None = None
    inliers: np.ndarray | None = None


NO_GEOMETRY = Geometry(0)


def verify_geometry(
    query: Features,
    train: Features,
    *,
    ratio: float = 0.8,
    tolerance: float = 2.0,
    scales: tuple[float, float] = (1 / MAX_SCALE, MAX_SCALE),
) -> Geometry:
    """Matches of `query` that one similarity transform maps onto `train` within `tolerance` px (0 if none),
    with the transform and its inlier query points (the verdict's evidence).

    Each training keypoint counts once (its best match), and transforms whose scale (query to training
    pixels) lies outside `scales` are rejected (RANSAC otherwise "explains" many matches by collapsing them
    onto one point), as are rotations more than MAX_ROTATION from a quarter turn. One pair of
    `correspondences` then `fit_geometry`; the copy detector calls those two itself, for many pairs at once.
    """
    return fit_geometry(correspondences(query, [train], ratio)[0], tolerance=tolerance, scales=scales)


@dataclass(frozen=True)
class Correspondences:
    """The matches of a query with one training image that RANSAC sees: (n, 2) float32 query points and the
    training points they match, in ascending descriptor distance (RANSAC's input order)."""

    source: np.ndarray
    destination: np.ndarray

    def __len__(self) -> int:
        return len(self.source)


NO_CORRESPONDENCES = Correspondences(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))
_SQUARED_SCALE = DESCRIPTOR_SCALE**2  # integer squared distances of uint8 descriptors / this = RootSIFT's
MATCH_BLOCK = 1 << 21  # query x training keypoints whose distances `correspondences` holds at once (8 MB float32)


def correspondences(query: Features, trains: Sequence[Features], ratio: float = 0.8) -> list[Correspondences]:
    """Per training image: the query's matches that pass Lowe's ratio test (nearest descriptor closer than
    `ratio` x the second nearest), one per training keypoint (its closest), in ascending distance.

    One matrix product of the query with all training images at once, instead of one brute-force matcher call
    per pair, and the same matches in the same order as OpenCV's `BFMatcher(NORM_L2).knnMatch(k=2)` on the
    float RootSIFT descriptors gave (tests/test_copydetect_speed.py compares them). Exactly, not nearly: the
    descriptors are integers (uint8) / 512, so every squared distance is an integer divided by 2^18, and all
    the integers involved (products below 2^17, RootSIFT's squared norms ~2^18, sums below 2^24) are held
    exactly by float32 whatever the order of the sums (OpenCV's loop or BLAS's blocks, with or without FMA).
    OpenCV's distance is the correctly rounded float32 square root of that squared distance, and so is ours.
    Training images with fewer than 3 keypoints (all of them, for a query with fewer than 3) get none.
    Training images are taken a group at a time (MATCH_BLOCK distances): each pair's answer is its own.
    """
    found = [NO_CORRESPONDENCES] * len(trains)
    used = [i for i, train in enumerate(trains) if len(train) >= 3] if len(query) >= 3 else []
    group: list[int] = []
    size = 0
    for i in used:
        if group and (size + len(trains[i])) * len(query) > MATCH_BLOCK:
            _match_group(query, trains, group, ratio, found)
            group, size = [], 0
        group.append(i)
        size += len(trains[i])
    if group:
        _match_group(query, trains, group, ratio, found)
    return found


def _match_group(
    query: Features, trains: Sequence[Features], used: list[int], ratio: float, found: list[Correspondences]
) -> None:
    """`correspondences` of `query` with the training images `used` (indices into `trains`), into `found`."""
    lengths = np.array([len(trains[i]) for i in used])
    starts = np.zeros(len(used), np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    train_desc = np.concatenate([trains[i].descriptors for i in used]).astype(np.float32)
    train_norms = np.einsum("ij,ij->i", train_desc, train_desc)
    query_desc = query.descriptors.astype(np.float32)
    query_norms = np.einsum("ij,ij->i", query_desc, query_desc)[:, None]
    train_desc *= -2.0
    partial = query_desc @ train_desc.T  # (queries, all training keypoints): ||t||^2 - 2 q.t = squared - ||q||^2
    partial += train_norms
    nearest = np.minimum.reduceat(partial, starts, axis=1)  # (queries, images)
    is_nearest = partial == np.repeat(nearest, lengths, axis=1)
    rows, columns = np.divmod(np.flatnonzero(is_nearest), partial.shape[1])
    partial[is_nearest] = np.inf
    second = np.minimum.reduceat(partial, starts, axis=1)  # nearest of the rest (a tie for the nearest: below)
    # OpenCV's distances (float32 sqrt of the float32 squared distance), compared as Python floats
    d0 = np.sqrt(((nearest + query_norms) / _SQUARED_SCALE).astype(np.float32)).astype(np.float64)
    d1 = np.sqrt(((second + query_norms) / _SQUARED_SCALE).astype(np.float32)).astype(np.float64)
    images = np.repeat(np.arange(len(used)), lengths)[columns]
    cells = rows * len(used) + images
    unique = np.bincount(cells, minlength=nearest.size).reshape(nearest.shape) == 1
    good = (d0 < ratio * d1) & unique  # a tie for the nearest makes d1 = d0: never good
    passed = good[rows, images]
    rows, columns, images = rows[passed], columns[passed], images[passed]
    if not len(rows):
        return
    order = np.lexsort((columns, rows, d0[rows, images], images))  # per image, as sorted((distance, q, t))
    rows, images, columns = rows[order], images[order], columns[order]
    _, first = np.unique(columns, return_index=True)  # each training keypoint once: its closest match
    keep = np.sort(first)
    rows, images, columns = rows[keep], images[keep], columns[keep]
    train_points = np.concatenate([trains[i].points for i in used])
    bounds = np.searchsorted(images, np.arange(len(used) + 1))
    for slot, i in enumerate(used):
        if bounds[slot + 1] > bounds[slot]:
            part = slice(bounds[slot], bounds[slot + 1])
            found[i] = Correspondences(query.points[rows[part]], train_points[columns[part]])


def fit_geometry(
    pairs: Correspondences,
    *,
    tolerance: float = 2.0,
    scales: tuple[float, float] = (1 / MAX_SCALE, MAX_SCALE),
    min_matches: int = 0,
) -> Geometry:
    """RANSAC for one similarity transform explaining `pairs` (see `verify_geometry`). With `min_matches`, a
    transform explaining fewer is not checked further: NO_GEOMETRY (a caller that could not use it anyway)."""
    if len(pairs) < max(3, min_matches):
        return NO_GEOMETRY
    transform, inliers = cv2.estimateAffinePartial2D(
        pairs.source, pairs.destination, method=cv2.RANSAC, ransacReprojThreshold=tolerance, maxIters=1000
    )
    if transform is None or inliers is None:
        return NO_GEOMETRY
    kept = inliers.ravel().astype(bool)
    matches = int(np.count_nonzero(kept))
    if matches < min_matches:
        return NO_GEOMETRY
    scale = math.sqrt(abs(float(np.linalg.det(transform[:, :2]))))
    if not scales[0] <= scale <= scales[1]:
        return NO_GEOMETRY
    angle = math.degrees(math.atan2(float(transform[1, 0]), float(transform[0, 0])))
    off = abs((angle + ROTATION_STEP / 2) % ROTATION_STEP - ROTATION_STEP / 2)
    if off > MAX_ROTATION:
        return NO_GEOMETRY
    return Geometry(matches, transform, pairs.source[kept])
