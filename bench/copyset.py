"""A copy-detection evaluation set built in memory from the REAL colonoscopy images (never written to the repo).

Split by sequence, not frame: neighbouring video frames of one lesion look like copies of each other, so a
frame-level split would call them "novel" and punish a detector for finding them. Groups:

- CVC-ClinicDB (`cvcclinicdb256__<frame>`): frames 1-612 are 29 videos in contiguous frame ranges;
- PolypGen C1 (`<seq>OLCV1_100H<frame>`) and C4 (`<seq>_endocv2021_positive_<frame>`): a sequence id;
- PolypGen C2, C3, C5, C6 (`..._<frame>`): only a running frame number (contiguous ranges are videos).

Within each centre the items are ordered by (sequence, frame); the first half trains, the next `GAP` of the
order is dropped (so a video cut in two does not straddle the split) and the rest is novel. C2 is novel as a
whole: its running numbers are not in video order (frames 1140 and 1346 show the same polyp from the same
spot). Positives are edited copies of training images, one list per edit kind; negatives are untouched
novel images.

Region crops (`lesion*`, `region*`): a third party keeps only part of a frame (10-30% of its area) and
enlarges it to 256x256. The data has no polyp masks, so `lesion_centre` stands in for the lesion: the spot
whose colour and brightness differ most from their surroundings (polyps are pale or red domes that catch
the light), scope borders, overlay boxes and specular highlights left out. By eye it lands on the polyp in
about half of the frames, on another fold or lesion-like spot in the rest. `region*` crops sit at random
places on the scope's content.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter
from scipy.ndimage import binary_erosion, gaussian_filter

GAP = 0.1  # fraction of each centre's ordered items dropped between its train and novel parts
NOVEL_ONLY = frozenset({"C2"})  # centres whose numbering does not follow the videos: all novel
Edit = Callable[[Image.Image, np.random.Generator], Image.Image]


@dataclass
class CopySet:
    """Training images, edited copies of some of them (per edit kind) and novel same-domain images."""

    train: list[tuple[str, Image.Image]]
    positives: dict[str, list[tuple[str, Image.Image]]]  # edit kind -> (source train key, edited image)
    negatives: list[tuple[str, Image.Image]]
    info: dict[str, int] = field(default_factory=dict)


def read_rows(root: Path) -> list[dict[str, str]]:
    with (root / "metadata.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def sequence_order(row: dict[str, str]) -> tuple[str, int, int]:
    """(centre, sequence, frame) of a row: items of one centre sort into video order."""
    stem = Path(row["file_name"]).stem.split("__", 1)[-1]
    centre = row["centre"][:2] or row["dataset"]
    numbers = [int(n) for n in re.findall(r"\d+", stem)]
    if centre in ("C1", "C4"):  # "133OLCV1_100H0006", "29_endocv2021_positive_437": sequence first
        return centre, numbers[0] if numbers else 0, numbers[-1] if numbers else 0
    return centre, 0, numbers[-1] if numbers else 0


def split_rows(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, novel) rows: per centre, first half of the video order trains, a gap is dropped, the rest novel."""
    by_centre: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_centre.setdefault(sequence_order(row)[0], []).append(row)
    train: list[dict[str, str]] = []
    novel: list[dict[str, str]] = []
    for centre, group in by_centre.items():
        group.sort(key=sequence_order)
        if centre in NOVEL_ONLY:
            novel += group
            continue
        cut = len(group) // 2
        # Snap the cut to a sequence boundary where there is one (C1, C4), so one sequence is never split.
        while 0 < cut < len(group) - 1 and sequence_order(group[cut])[1] == sequence_order(group[cut - 1])[1] != 0:
            cut += 1
        gap = max(1, round(GAP * len(group)))
        train += group[:cut]
        novel += group[cut + gap :]
    return train, novel


# --- edits (all on 8-bit RGB; parameters drawn per image from `rng`) ----------------------------------------


def _resize(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    scale = rng.uniform(0.4, 0.8)
    return image.resize((max(16, round(image.width * scale)), max(16, round(image.height * scale))), Image.BICUBIC)


def _crop75(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = round(image.width * 0.75), round(image.height * 0.75)
    x, y = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
    return image.crop((x, y, x + w, y + h)).resize(image.size, Image.BICUBIC)


def _rotate(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    angle = float(rng.uniform(3, 12) * rng.choice([-1, 1]))
    return image.rotate(angle, Image.BILINEAR)


def _jpeg(image: Image.Image, rng: np.random.Generator, quality: int = 25) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _noise(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image, np.float32)
    noisy = pixels + rng.normal(0, rng.uniform(0.05, 0.08) * 255, pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _blur(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(2.0 * max(image.size) / 256))


def _jitter(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """torchvision ColorJitter(0.4, 0.4, 0.4, 0.1)-like: brightness, contrast, saturation, then a hue shift."""
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        image = enhance(image).enhance(float(rng.uniform(0.6, 1.4)))
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.uniform(-0.1, 0.1) * 255)) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def _chain(*edits: Edit) -> Edit:
    def apply(image: Image.Image, rng: np.random.Generator) -> Image.Image:
        for edit in edits:
            image = edit(image, rng)
        return image

    return apply


# --- region crops ------------------------------------------------------------------------------------------

REGION_SIDE = 256  # region crops are enlarged to this square size
_SALIENCY_SIDE = 64


def _lab(image: Image.Image) -> np.ndarray:
    """(side, side, 3) float32 CIELAB at the saliency size (PIL stores a and b as signed bytes)."""
    raw = np.asarray(image.convert("RGB").resize((_SALIENCY_SIDE,) * 2, Image.Resampling.BOX).convert("LAB"))
    return np.dstack([raw[..., :1], raw[..., 1:].view(np.int8)]).astype(np.float32)


def _mucosa(lab: np.ndarray) -> np.ndarray:
    """Scope content: not the black border, not the green or blue overlay boxes."""
    return (lab[..., 0] > 30) & (lab[..., 1] > -8) & (lab[..., 2] > -8)


def _masked_blur(values: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    blurred = gaussian_filter(values * weight[..., None], (sigma, sigma, 0))
    return blurred / np.maximum(gaussian_filter(weight, sigma), 1e-6)[..., None]


def lesion_centre(image: Image.Image, area: float) -> tuple[float, float]:
    """(x, y) in [0, 1]: the centre of the crop of `area` whose colour stands out most from its surroundings."""
    lab = _lab(image)
    content = _mucosa(lab)
    usable = (content & (lab[..., 0] < 235)).astype(np.float32)  # highlights carry no lesion colour
    crop = np.sqrt(area) * _SALIENCY_SIDE
    diff = _masked_blur(lab, usable, crop / 6) - _masked_blur(lab, usable, crop / 1.5)
    contrast = np.sqrt(((diff * [0.5, 1.0, 1.0]) ** 2).sum(axis=2)) + np.maximum(diff[..., 0], 0)
    inside = binary_erosion(content, iterations=max(1, int(crop / 4)))
    if inside.any():
        contrast[~inside] = -1.0
    y, x = np.unravel_index(int(np.argmax(contrast)), contrast.shape)
    return (x + 0.5) / _SALIENCY_SIDE, (y + 0.5) / _SALIENCY_SIDE


def random_centre(image: Image.Image, rng: np.random.Generator) -> tuple[float, float]:
    """(x, y) in [0, 1] of a random point of the scope's content."""
    ys, xs = np.nonzero(_mucosa(_lab(image)))
    if not len(xs):
        return float(rng.uniform(0, 1)), float(rng.uniform(0, 1))
    i = int(rng.integers(len(xs)))
    return (xs[i] + rng.uniform(0, 1)) / _SALIENCY_SIDE, (ys[i] + rng.uniform(0, 1)) / _SALIENCY_SIDE


def region_crop(image: Image.Image, area: float, centre: tuple[float, float]) -> Image.Image:
    """The square of `area` (fraction of the frame) around `centre`, shifted inside, enlarged to REGION_SIDE."""
    side = np.sqrt(area * image.width * image.height)
    x = min(max(centre[0] * image.width - side / 2, 0), image.width - side)
    y = min(max(centre[1] * image.height - side / 2, 0), image.height - side)
    box = (x, y, x + side, y + side)
    return image.resize((REGION_SIDE, REGION_SIDE), Image.Resampling.BICUBIC, box=box)


def _lesion(area: float) -> Edit:
    return lambda image, rng: region_crop(image, area, lesion_centre(image, area))


def _region(area: float) -> Edit:
    return lambda image, rng: region_crop(image, area, random_centre(image, rng))


def _flip(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    return image.transpose(Image.FLIP_LEFT_RIGHT if rng.uniform() < 0.5 else Image.FLIP_TOP_BOTTOM)


def region_edits(areas: tuple[int, ...] = (30, 20, 10)) -> dict[str, Edit]:
    """Lesion and random-place crops of `areas` (% of the frame), each also flipped and JPEG-compressed."""
    edits: dict[str, Edit] = {}
    for kind, crop in (("lesion", _lesion), ("region", _region)):
        for area in areas:
            edits[f"{kind}{area}"] = crop(area / 100)
            edits[f"{kind}{area}+flip+jpeg"] = _chain(crop(area / 100), _flip, _jpeg)
    edits["lesion20+rot+jitter+noise"] = _chain(_lesion(0.2), _rotate, _jitter, _noise)
    edits["lesion20+blur+jpeg"] = _chain(_lesion(0.2), _blur, _jpeg)
    return edits


EDITS: dict[str, Edit] = {
    "resize": _resize,
    "crop75": _crop75,
    "hflip": lambda image, rng: image.transpose(Image.FLIP_LEFT_RIGHT),
    "vflip": lambda image, rng: image.transpose(Image.FLIP_TOP_BOTTOM),
    "rot12": _rotate,
    "jpeg25": _jpeg,
    "noise": _noise,
    "blur": _blur,
    "jitter": _jitter,
    "crop+flip+jpeg": _chain(_crop75, lambda image, rng: image.transpose(Image.FLIP_LEFT_RIGHT), _jpeg),
    "rot+jitter+noise": _chain(_rotate, _jitter, _noise),
    "resize+blur+jpeg": _chain(_resize, _blur, _jpeg),
}
REGION_EDITS: dict[str, Edit] = region_edits()


def stamp_overlay(image: Image.Image) -> Image.Image:
    """The same recording-system furniture on every image: a text box and a coloured marker, fixed position."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    w, h = image.size
    draw.rectangle((4, 4, 4 + w * 0.45, 4 + h * 0.15), fill=(0, 0, 0))
    draw.text((8, 8), "OLYMPUS CV-190  ID 004217", fill=(255, 255, 255))
    draw.text((8, 8 + h * 0.06), "12/03/2021 10:42:07", fill=(255, 255, 255))
    draw.rectangle((w * 0.8, h * 0.86, w * 0.97, h * 0.97), fill=(40, 180, 120))
    return image


def build_copyset(
    root: Path,
    *,
    n_train: int | None = None,
    n_edit: int = 100,
    n_novel: int | None = None,
    seed: int = 0,
    edits: dict[str, Edit] | None = None,
    overlay: bool = False,
) -> CopySet:
    """Train / positives / negatives from the imagefolder at `root` (sizes capped by random subsampling)."""
    rng = np.random.default_rng(seed)
    train_rows, novel_rows = split_rows(read_rows(root))
    train_rows = _subsample(train_rows, n_train, rng)
    novel_rows = _subsample(novel_rows, n_novel, rng)

    def load(row: dict[str, str]) -> Image.Image:
        with Image.open(root / row["file_name"]) as image:
            return stamp_overlay(image.convert("RGB")) if overlay else image.convert("RGB")

    train = [(row["file_name"], load(row)) for row in train_rows]
    positives: dict[str, list[tuple[str, Image.Image]]] = {}
    for name, edit in (edits or EDITS).items():
        chosen = rng.choice(len(train), size=min(n_edit, len(train)), replace=False)
        positives[name] = [(train[i][0], edit(train[i][1], rng)) for i in sorted(chosen)]
    negatives = [(row["file_name"], load(row)) for row in novel_rows]
    return CopySet(train, positives, negatives, {"train": len(train), "novel": len(negatives)})


def _subsample(rows: list[dict[str, str]], n: int | None, rng: np.random.Generator) -> list[dict[str, str]]:
    if n is None or n >= len(rows):
        return rows
    return [rows[i] for i in sorted(rng.choice(len(rows), size=n, replace=False))]
