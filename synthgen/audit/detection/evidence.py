"""Why a verdict says "copy": the evidence behind a copydetect similarity, in the pixels of both images.

Verification finds a similarity transform between keypoints at working sizes (the candidate at WORK_SIDE, the
training image at WORK_SIDE or, on the region path, FINE_SIDE; the candidate possibly mirrored first). Here it
becomes what a reader can check by eye: the copy operation (zoom, rotation, mirror) that turns the training
image into the candidate, the number of consistent matches, and the matched region as a box in each image's own
pixels. The report outlines those boxes; audit.parquet keeps them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in an image's own pixels (x1, y1 exclusive)

KEYPOINTS, REGION, PIXEL = "keypoints", "region", "pixel"  # which path of the detector gave the score
BOX_PAD = 0.06  # the matched keypoints' box grows by this share of the candidate's side: keypoints describe patches
# Matched keypoints spread over at least this share of the candidate: the candidate as a whole is the copy, and its
# box is all of it that the transform maps inside the training image; less: a local match, its keypoints' box.
WHOLE_MATCH_SHARE = 0.25
# Flips the pixel path compares (copydetect._FLIPS order): mirrored?, rotation (anticlockwise degrees)
PIXEL_FLIPS = ((False, 0.0), (True, 0.0), (True, 180.0), (False, 180.0))


@dataclass(frozen=True)
class Evidence:
    """The copy operation found: training image -> candidate, plus the matched region in both images.

    `zoom`: candidate pixels per training pixel (3.2 = the training region was enlarged 3.2x);
    `rotation`: degrees anticlockwise, as seen on screen, applied after the mirror; `mirrored`: left-right.
    `train_box` is None when the training image's size is unknown.
    """

    kind: str
    matches: int
    zoom: float
    rotation: float
    mirrored: bool
    candidate_box: Box
    train_box: Box | None
    train_share: float | None = None  # the train box's share of the training image's area
    local: bool = False  # the match covers only part of the candidate (its keypoints' box), not all of it

    @property
    def words(self) -> str:
        return describe(self)


def _fmt_angle(degrees: float) -> str:
    way = "anticlockwise" if degrees > 0 else "clockwise"
    return f"rotated {abs(degrees):.0f}° {way}"


def describe(evidence: Evidence) -> str:
    """The copy operation in words, e.g. 'crop of 10% of the training image, zoom 3.2×, rotated 12° clockwise,
    mirrored'; 'same framing' when nothing moved."""
    parts = []
    if evidence.train_share is not None and (evidence.local or evidence.train_share < 0.8):
        what = "local match on" if evidence.local else "crop of"
        parts.append(f"{what} {evidence.train_share:.0%} of the training image")
    if abs(math.log(max(evidence.zoom, 1e-6))) > math.log(1.08):
        parts.append(f"zoom {evidence.zoom:.1f}×" if evidence.zoom > 1 else f"scaled to {evidence.zoom:.2g}×")
    rotation, flip = evidence.rotation, "mirrored" if evidence.mirrored else ""
    if abs(abs(rotation) - 180.0) < 45.0:  # a half turn (after a mirror: upside down) plus a small rotation
        rotation = (rotation % 360.0) - 180.0
        flip = "flipped upside down" if evidence.mirrored else "turned upside down"
    if abs(rotation) >= 2.0:
        parts.append(_fmt_angle(rotation))
    parts += [flip] if flip else []
    text = ", ".join(parts) or "same framing"
    if evidence.kind == PIXEL:
        return f"near-identical pixels ({text})"
    return f"{evidence.matches} consistent matches: {text}"


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    out = np.eye(3)
    out[:2] = matrix
    return out


def _scaling(kx: float, ky: float) -> np.ndarray:
    return np.diag([kx, ky, 1.0])


def _clip(box: np.ndarray, width: int, height: int, snap: float = 0.02) -> Box:
    """Whole pixels inside the image; edges within `snap` of the image's side snap to it (rounding, RANSAC noise)."""
    x0, y0, x1, y1 = box
    x0, x1 = (0 if x0 <= snap * width else x0), (width if x1 >= (1 - snap) * width else x1)
    y0, y1 = (0 if y0 <= snap * height else y0), (height if y1 >= (1 - snap) * height else y1)
    x0, x1 = np.clip([math.floor(x0), math.ceil(x1)], 0, width)
    y0, y1 = np.clip([math.floor(y0), math.ceil(y1)], 0, height)
    return int(x0), int(y0), int(x1), int(y1)


def _bounds(points: np.ndarray) -> np.ndarray:
    return np.array([*points.min(axis=0), *points.max(axis=0)], np.float64)


def _corners(box: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def _area(box: Box) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:2, :2].T + matrix[:2, 2]


def geometric_evidence(
    kind: str,
    matches: int,
    matrix: np.ndarray,
    inliers: np.ndarray,
    *,
    mirrored: bool,
    candidate: tuple[tuple[int, int], tuple[int, int]],
    train: tuple[tuple[int, int], tuple[int, int]] | None,
    train_side: int,
) -> Evidence:
    """Evidence from a verified transform `matrix` (2x3: candidate working px -> training working px, after the
    mirror when `mirrored`) and its inlier keypoints (candidate working px, as matched).

    `candidate` = (pixel size, working size) of the candidate; `train` the same for the training image (None
    when unknown: the training side at `train_side` px is assumed square for the transform, and has no box).
    """
    (cw, ch), (qw, qh) = candidate
    (tw, th), (ww, wh) = train if train is not None else ((train_side, train_side), (train_side, train_side))
    mirror = np.array([[-1.0, 0.0, qw - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) if mirrored else np.eye(3)
    to_query = mirror @ _scaling(qw / cw, qh / ch)  # candidate px -> the keypoints' frame
    to_train = np.linalg.inv(_scaling(ww / tw, wh / th)) @ _homogeneous(matrix) @ to_query  # candidate px -> train px
    copy = np.linalg.inv(to_train)  # train px -> candidate px: the copy operation
    linear = copy[:2, :2] @ (np.diag([-1.0, 1.0]) if mirrored else np.eye(2))
    zoom = math.sqrt(abs(float(np.linalg.det(linear))))
    rotation = math.degrees(math.atan2(-float(linear[1, 0]), float(linear[0, 0])))  # y points down on screen
    points = _apply(np.linalg.inv(to_query), np.asarray(inliers, np.float64).reshape(-1, 2))
    pad = BOX_PAD * max(cw, ch)
    box = _bounds(points) + np.array([-pad, -pad, pad, pad]) if len(points) else np.array([0.0, 0.0, cw, ch])
    candidate_box = _clip(box, cw, ch)
    local = _area(candidate_box) < WHOLE_MATCH_SHARE * cw * ch
    if train is not None and not local:
        inside = _bounds(_apply(np.linalg.inv(to_train), _corners(np.array([0.0, 0.0, tw, th]))))
        candidate_box = _clip(inside, cw, ch)
    train_box, share = None, None
    if train is not None:
        train_box = _clip(_bounds(_apply(to_train, _corners(np.array(candidate_box, float)))), tw, th)
        mapped = abs(float(np.linalg.det(to_train[:2, :2]))) * _area(candidate_box)  # a rotated box's own area
        share = min(_area(train_box), mapped) / max(tw * th, 1)
    rounded = round(zoom, 3), round(rotation, 1)
    return Evidence(kind, int(matches), *rounded, mirrored, candidate_box, train_box, share, local)


def pixel_evidence(flip: int, candidate_size: tuple[int, int], train_size: tuple[int, int] | None) -> Evidence:
    """Evidence of the pixel path: whole frames, under one of the four flips it compares."""
    mirrored, rotation = PIXEL_FLIPS[flip]
    (cw, ch) = candidate_size
    box = (0, 0, train_size[0], train_size[1]) if train_size is not None else None
    zoom = math.sqrt(cw * ch / (train_size[0] * train_size[1])) if train_size else 1.0
    return Evidence(PIXEL, 0, round(zoom, 3), rotation, mirrored, (0, 0, cw, ch), box, 1.0 if box else None)
