"""The cheaper copy check gives exactly the verdicts of the one it replaced: the batched descriptor matching
(`correspondences`) against OpenCV's brute-force matcher pair by pair, the skipped RANSAC runs against verifying
every pair, the kept float32 tile codes against converting them per search, the blocked re-rank against one
block."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFilter

from synthgen.audit.detection import keypoint_matching
from synthgen.audit.detection import regions as regions_module
from synthgen.audit.detection.copydetect import CopyDetector, _Best
from synthgen.audit.detection.evidence import KEYPOINTS, REGION
from synthgen.audit.detection.keypoint_matching import (
    MAX_ROTATION,
    MAX_SCALE,
    NO_GEOMETRY,
    ROTATION_STEP,
    Geometry,
    correspondences,
    fit_geometry,
    verify_geometry,
)
from synthgen.audit.detection.local_features import EMPTY, FeatureExtractor, Features, working_gray
from synthgen.audit.detection.regions import FINE_SCALES
from synthgen.audit.index import index_backends
from synthgen.sources import open_source
from synthgen.sources.spec import SourceSpec

_MATCHER = cv2.BFMatcher(cv2.NORM_L2)


def reference_geometry(
    query: Features, train: Features, scales: tuple[float, float] = (1 / MAX_SCALE, MAX_SCALE)
) -> Geometry:
    """verify_geometry as it was: OpenCV's knnMatch on float RootSIFT, one pair at a time."""
    if len(query) < 3 or len(train) < 3:
        return NO_GEOMETRY
    pairs = _MATCHER.knnMatch(query.floats(), train.floats(), k=2)
    good = sorted(
        (m[0].distance, m[0].queryIdx, m[0].trainIdx)
        for m in pairs
        if len(m) == 2 and m[0].distance < 0.8 * m[1].distance
    )
    seen: set[int] = set()
    src, dst = [], []
    for _, q, t in good:
        if t not in seen:
            seen.add(t)
            src.append(query.points[q])
            dst.append(train.points[t])
    if len(src) < 3:
        return NO_GEOMETRY
    source = np.array(src)
    transform, inliers = cv2.estimateAffinePartial2D(
        source, np.array(dst), method=cv2.RANSAC, ransacReprojThreshold=2.0, maxIters=1000
    )
    if transform is None or inliers is None:
        return NO_GEOMETRY
    scale = math.sqrt(abs(float(np.linalg.det(transform[:, :2]))))
    if not scales[0] <= scale <= scales[1]:
        return NO_GEOMETRY
    angle = math.degrees(math.atan2(float(transform[1, 0]), float(transform[0, 0])))
    if abs((angle + ROTATION_STEP / 2) % ROTATION_STEP - ROTATION_STEP / 2) > MAX_ROTATION:
        return NO_GEOMETRY
    kept = inliers.ravel().astype(bool)
    return Geometry(int(kept.sum()), transform, source[kept])


def same(a: Geometry, b: Geometry) -> bool:
    if a.matches != b.matches or (a.matrix is None) != (b.matrix is None):
        return False
    return a.matrix is None or (np.array_equal(a.matrix, b.matrix) and np.array_equal(a.inliers, b.inliers))


def phantoms(n: int, seed: int) -> list[Image.Image]:
    return [s.image for s in open_source(SourceSpec(type="demo", per_class=n, resolution=64, seed=seed))]


@pytest.fixture(scope="module")
def features() -> list[Features]:
    """Keypoints of phantoms, of edited copies (rotated crops, blurred, mirrored) and at the fine 256 px side."""
    extract = FeatureExtractor()
    found = []
    for image in phantoms(4, 3):
        found.append(extract(working_gray(image)))
        found.append(extract(working_gray(image.rotate(8).crop((4, 4, 60, 60)))))
        found.append(
            extract(working_gray(image.filter(ImageFilter.GaussianBlur(1)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
        )
        found.append(extract(working_gray(image, 256)))
    return found


def test_batched_matching_equals_opencv_pair_by_pair(features: list[Features]) -> None:
    tied = features[0].subset(np.r_[np.arange(len(features[0])), np.arange(5)])  # repeated keypoints: tied nearest
    few = Features(features[1].points[:2], features[1].descriptors[:2])
    compared = 0
    for i, query in enumerate([*features, tied]):
        trains = [*features[i % 4 :: 3], features[(i + 1) % len(features)], EMPTY, few, tied]
        for scales in ((1 / MAX_SCALE, MAX_SCALE), FINE_SCALES):
            found = [fit_geometry(pairs, scales=scales) for pairs in correspondences(query, trains)]
            expected = [reference_geometry(query, train, scales) for train in trains]
            assert all(same(a, b) for a, b in zip(found, expected, strict=True)), i
            compared += len(trains)
    assert compared > 400
    assert all(len(c) == 0 for c in correspondences(few, features[:3]))  # a query with < 3 keypoints: none
    assert same(verify_geometry(features[0], features[1]), reference_geometry(features[0], features[1]))


def test_matching_in_groups_of_training_images(features: list[Features], monkeypatch: pytest.MonkeyPatch) -> None:
    """Bounded buffers (a few training images at a time) give the same matches as one product."""
    whole = [correspondences(query, features) for query in features[:6]]
    monkeypatch.setattr(keypoint_matching, "MATCH_BLOCK", 60_000)
    for query, expected in zip(features[:6], whole, strict=True):
        found = correspondences(query, features)
        assert all(
            np.array_equal(a.source, b.source) and np.array_equal(a.destination, b.destination)
            for a, b in zip(found, expected, strict=True)
        )


def test_a_copy_is_matched_by_both(features: list[Features]) -> None:
    geometry = fit_geometry(correspondences(features[1], [features[0]])[0])
    assert geometry.matches >= 8 and same(geometry, reference_geometry(features[1], features[0]))


@pytest.fixture(scope="module")
def detector() -> CopyDetector:
    from synthgen.sample import Sample
    from synthgen.sources.memory import MemorySource

    detector = CopyDetector()
    detector.workers = 1
    detector.fit(MemorySource([Sample(key=f"t{i}", image=im) for i, im in enumerate(phantoms(8, 5))], "train"))
    return detector


def reference_match(detector: CopyDetector, images: list[Image.Image]) -> list[tuple[float, str]]:
    """match_evidence's scores as they were: every pair verified by reference_geometry, in retrieval order."""
    exclude: list[set[str]] = [set() for _ in images]
    pixel = detector._pixel_candidates(images, exclude)
    grays = [working_gray(image) for image in images]
    queries = [detector._content(detector._extract(gray)) for gray in grays]
    mirrors = [detector._extract(np.ascontiguousarray(gray[:, ::-1])) for gray in grays]
    frames = detector._frame_candidates(queries + mirrors, exclude + exclude)
    regions = detector._region_candidates(queries + mirrors, exclude + exclude)
    assert detector.regions is not None
    results = []
    for i, (query, mirror) in enumerate(zip(queries, mirrors, strict=True)):
        key, (score, flip) = max(pixel[i].items(), key=lambda item: item[1][0], default=(detector.keys[0], (0.0, 0)))
        best = _Best(score, detector._row[key], flip=flip)
        for features, j, mirrored in ((query, i, False), (mirror, len(images) + i, True)):
            for key in dict.fromkeys(frames[j] + list(pixel[i])):
                row = detector._row[key]
                best.offer(reference_geometry(features, detector.features[row]), row, KEYPOINTS, mirrored)
            for row in regions[j]:
                geometry = reference_geometry(features, detector.regions.features[row], FINE_SCALES)
                best.offer(geometry, row, REGION, mirrored)
        results.append((best.score, detector.keys[best.row]))
    return results


def test_match_equals_verifying_every_pair(detector: CopyDetector) -> None:
    train = phantoms(8, 5)
    copies = [train[0], train[1].resize((96, 96)), train[2].rotate(10), train[3].crop((10, 10, 54, 54))]
    images = copies + phantoms(3, 77)
    found = detector.match(images)
    assert found == reference_match(detector, images)
    assert all(score >= 0.5 for score, _ in found[:4]) and [key for _, key in found[:4]] == ["t0", "t1", "t2", "t3"]


def test_kept_float_tiles_give_the_same_search(detector: CopyDetector, monkeypatch: pytest.MonkeyPatch) -> None:
    regions = detector.regions
    assert regions is not None
    images = phantoms(2, 41)
    codes = regions.encode([detector._extract(working_gray(image)) for image in images])
    kept = regions.search(codes, [set(), {0, 1}] * 3)
    assert regions._floats is not None and regions._floats[0] is regions.codes
    monkeypatch.setattr(regions_module, "FLOAT_TILES_BYTES", 0)  # above the cap: converted per block
    assert regions._all_float_tiles() is None
    assert regions.search(codes, [set(), {0, 1}] * 3) == kept
    monkeypatch.setattr(regions_module, "TILE_BLOCK", 5)  # converted a few codes at a time: the same rows
    assert regions.search(codes, [set(), {0, 1}] * 3) == kept
    monkeypatch.undo()
    regions.codes = regions.codes.copy()  # a cache load replaces the codes: the float copy follows
    assert regions.search(codes, [set(), {0, 1}] * 3) == kept and regions._floats[0] is regions.codes


def test_blocked_rerank_equals_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((60, 512)).astype(np.float32)
    queries = rng.standard_normal((9, 512)).astype(np.float32)
    ids = np.stack([rng.permutation(60)[:20] for _ in range(9)])
    ids[2, 5:] = -1
    whole = index_backends.rerank(base, queries, ids, 12)
    monkeypatch.setattr(index_backends, "RERANK_BYTES", 4 * 20 * 512 * 2)  # two queries per block
    blocked = index_backends.rerank(base, queries, ids, 12)
    assert np.array_equal(whole[0], blocked[0]) and np.array_equal(whole[1], blocked[1])
