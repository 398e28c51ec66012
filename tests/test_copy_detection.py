"""The default copy detector (copydetect): edited copies flagged and traced to their source; novel images of the
same kind, shared overlays and texture-less images handled; `threshold: auto` calibrated and recorded."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

from synthgen.audit import Auditor, run_audit
from synthgen.audit.detection.calibrate import SequenceNeighbours, calibrate
from synthgen.audit.detection.copydetect import CopyDetector
from synthgen.audit.detection.detector import parse_threshold
from synthgen.errors import SynthgenError
from synthgen.sample import Sample
from synthgen.sources.memory import MemorySource

REPO = Path(__file__).resolve().parent.parent


def texture(seed: int, size: int = 160) -> Image.Image:
    """Multi-scale value noise: structure at several scales, like tissue, and unique per seed."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros((size, size, 3), np.float32)
    for cells, weight in ((4, 1.0), (8, 0.7), (16, 0.5), (32, 0.35)):
        grid = Image.fromarray((rng.uniform(0, 1, (cells, cells, 3)) * 255).astype(np.uint8))
        canvas += weight * np.asarray(grid.resize((size, size), Image.Resampling.BICUBIC), np.float32) / 255
    canvas = (canvas - canvas.min()) / (canvas.max() - canvas.min())
    return Image.fromarray((30 + 195 * canvas).astype(np.uint8))


def overlay(image: Image.Image) -> Image.Image:
    """The same burnt-in text box on every image, like a recording system's."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    draw.rectangle((2, 2, 90, 30), fill=(0, 0, 0))
    draw.text((5, 5), "SCOPE 190 ID 4217", fill=(255, 255, 255))
    draw.text((5, 17), "12/03/21 10:42", fill=(255, 255, 255))
    return image


def jpeg(image: Image.Image, quality: int = 25) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def noisy(image: Image.Image, sigma: float = 0.07 * 255) -> Image.Image:
    pixels = np.asarray(image, np.float32) + np.random.default_rng(0).normal(0, sigma, (image.height, image.width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def jitter(image: Image.Image) -> Image.Image:
    image = ImageEnhance.Brightness(ImageEnhance.Contrast(image).enhance(0.7)).enhance(1.3)
    hsv = np.asarray(ImageEnhance.Color(image).enhance(1.3).convert("HSV")).copy()
    hsv[..., 0] += 15
    return Image.fromarray(hsv, "HSV").convert("RGB")


EDITS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "exact": lambda im: im,
    "resize": lambda im: im.resize((100, 100), Image.Resampling.BICUBIC),
    "crop75": lambda im: im.crop((30, 10, 150, 130)).resize(im.size),
    "hflip": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "vflip": lambda im: im.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
    "rot12": lambda im: im.rotate(-12, Image.Resampling.BILINEAR),
    "jpeg25": jpeg,
    "noise": noisy,
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(1.3)),
    "jitter": jitter,
}


TRAIN = [(f"tex_{i:03d}", texture(i)) for i in range(40)]


@pytest.fixture(scope="module")
def detector() -> CopyDetector:
    fitted = CopyDetector()
    fitted.fit(MemorySource(TRAIN))
    return fitted


@pytest.mark.parametrize("edit", list(EDITS))
def test_edited_copies_are_flagged_and_traced(detector: CopyDetector, edit: str) -> None:
    sources = [TRAIN[i] for i in (3, 17, 31)]
    results = detector.match([EDITS[edit](image) for _, image in sources])
    for (key, _), (similarity, nearest) in zip(sources, results, strict=True):
        assert similarity >= CopyDetector.default_threshold, (edit, key, similarity)
        assert nearest == key


def test_novel_images_of_the_same_kind_are_not_copies(detector: CopyDetector) -> None:
    scores = [similarity for similarity, _ in detector.match([texture(1000 + i) for i in range(24)])]
    assert max(scores) < CopyDetector.default_threshold
    assert all(0.0 <= s <= 1.0 for s in scores)


def test_exclusions_skip_the_source(detector: CopyDetector) -> None:
    ((similarity, nearest),) = detector.match([TRAIN[5][1]], exclude=[{TRAIN[5][0]}])
    assert nearest != TRAIN[5][0] and similarity < CopyDetector.default_threshold


def test_a_shared_overlay_does_not_make_images_copies() -> None:
    stamped = CopyDetector()
    stamped.fit(MemorySource([(key, overlay(image)) for key, image in TRAIN]))
    assert len(stamped.common) > 0  # the text box was learnt as common structure
    novel = [overlay(texture(2000 + i)) for i in range(16)]
    assert max(s for s, _ in stamped.match(novel)) < CopyDetector.default_threshold
    ((similarity, nearest),) = stamped.match([EDITS["rot12"](overlay(TRAIN[8][1]))])
    assert nearest == TRAIN[8][0] and similarity >= CopyDetector.default_threshold


def smooth(seed: int) -> Image.Image:
    """A texture-less image (soft colour blobs): SIFT finds no keypoints, the pixel channel must decide."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:64, 0:64].astype(np.float32)
    canvas = np.zeros((64, 64, 3), np.float32)
    for _ in range(4):
        cy, cx = rng.uniform(0, 64, 2)
        canvas += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(6, 16) ** 2))[..., None] * rng.uniform(
            -1, 1, 3
        )
    canvas = (canvas - canvas.min()) / (canvas.max() - canvas.min() + 1e-6)
    return Image.fromarray((40 + 160 * canvas).astype(np.uint8))


def test_textureless_copies_are_caught_by_pixels() -> None:
    smooth_detector = CopyDetector()
    smooth_detector.fit(MemorySource([(f"blob_{i}", smooth(i)) for i in range(20)]))
    exact, flipped, other = smooth_detector.match(
        [smooth(4), smooth(7).transpose(Image.Transpose.FLIP_LEFT_RIGHT), smooth(999)]
    )
    assert exact == (pytest.approx(1.0, abs=1e-5), "blob_4")
    assert flipped[1] == "blob_7" and flipped[0] >= 0.9
    assert other[0] < CopyDetector.default_threshold


def test_auto_threshold_is_calibrated_and_recorded(tmp_path: Path) -> None:
    candidates = MemorySource([("copy", EDITS["crop75"](TRAIN[2][1])), ("new", texture(3000))], "candidates")
    summary = run_audit(MemorySource(TRAIN, "train"), candidates, tmp_path)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    calibration = on_disk["detector"]["calibration"]
    assert on_disk["embedder"] == "copydetect" and on_disk["detector"]["threshold_mode"] == "auto"
    assert calibration["n"] == len(TRAIN) and calibration["target_fpr"] == 0.01
    assert calibration["floor"] <= summary["threshold"] == calibration["threshold"] <= calibration["cap"]
    assert on_disk["n_flagged"] == 1


def test_fixed_threshold_and_pixel_detector_remain_available() -> None:
    source = MemorySource(TRAIN[:10])
    fixed = Auditor.from_source(source, threshold=0.6)
    assert fixed.threshold == 0.6 and fixed.calibration is None and fixed.detector.name == "copydetect"
    pixel = Auditor.from_source(source, "pixel", "0.95")
    assert pixel.detector.name == "pixel" and pixel.threshold == 0.95
    (verdict,) = pixel.check([Sample("c", TRAIN[4][1])])
    assert verdict.flagged and verdict.nearest_train_key == TRAIN[4][0]


def test_threshold_parsing() -> None:
    assert parse_threshold("auto") == "auto" and parse_threshold(" AUTO ") == "auto"
    assert parse_threshold("0.7") == 0.7 and parse_threshold(0.5) == 0.5
    for bad in ("high", 1.5, "-2"):
        with pytest.raises(SynthgenError, match="audit threshold"):
            parse_threshold(bad)


def test_sequence_neighbours_from_file_names() -> None:
    keys = [f"cvc__{i}.jpg" for i in range(1, 201)] + ["seq12_f0895.jpg", "seq12_f0979.jpg", "seq13_f0900.jpg"]
    neighbours = SequenceNeighbours(keys, window=50)
    assert neighbours("cvc__100.jpg") == {f"cvc__{i}.jpg" for i in range(50, 151)}  # big group: a window
    assert neighbours("seq12_f0895.jpg") == {"seq12_f0895.jpg", "seq12_f0979.jpg"}  # small group: all of it
    assert neighbours("no-digits.png") == {"no-digits.png"}


def test_sequence_neighbours_from_embeddings() -> None:
    """Numbered like one big video: shots are found where consecutive embeddings stop looking alike."""
    rng = np.random.default_rng(0)
    keys = [f"frame_{i:03d}.png" for i in range(120)]
    shots = np.repeat(rng.normal(size=(12, 16)), 10, axis=0)  # 12 shots of 10 near-identical frames
    video = shots + 0.1 * rng.normal(size=shots.shape)
    video /= np.linalg.norm(video, axis=1, keepdims=True)
    near = SequenceNeighbours(keys, video, window=5)("frame_045.png")
    assert {f"frame_{i:03d}.png" for i in range(30, 60)} == near  # its shot and the shots either side
    independent = rng.normal(size=(120, 16))
    independent /= np.linalg.norm(independent, axis=1, keepdims=True)
    assert SequenceNeighbours(keys, independent)("frame_045.png") == {"frame_045.png"}


class StubDetector:
    """Leave-one-out scores fixed per key: 0.1 .. 0.6 for 200 images, plus two near-duplicates at 0.99."""

    threshold_bounds = (0.2, 0.75)

    def __init__(self) -> None:
        self.keys = [f"img-{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(202)]  # no numbers: no sequences
        self.scores = dict(zip(self.keys, [*np.linspace(0.1, 0.6, 200), 0.99, 0.99], strict=True))

    def match(self, images: list[Image.Image], exclude: list[set[str]] | None = None) -> list[tuple[float, str]]:
        assert exclude is not None
        return [(self.scores[skip.pop()], "x") for skip in exclude]  # each image excludes only itself


def test_calibration_quantile_bounds_and_near_duplicates() -> None:
    stub = StubDetector()
    tiny = Image.new("RGB", (4, 4))
    source = MemorySource([(key, tiny) for key in stub.keys])
    threshold, info = calibrate(stub, source, target_fpr=0.01)  # type: ignore[arg-type]
    chance = np.linspace(0.1, 0.6, 200)
    assert info["n"] == 202 and info["n_near_duplicates"] == 2
    assert info["quantile"] == pytest.approx(chance[-3], abs=1e-6)  # 2 of 200 may reach the threshold
    assert threshold == pytest.approx(chance[-3] + 1e-6, abs=1e-6) and info["bounded_by"] is None
    assert np.mean(chance >= threshold) <= 0.01
    stub.threshold_bounds = (0.2, 0.5)  # at or above the cap counts as a copy regardless: never above it
    capped, info = calibrate(stub, source, target_fpr=0.01)  # type: ignore[arg-type]
    assert capped <= 0.5 and info["n_near_duplicates"] == 2 + int((chance >= 0.5).sum())
    stub.threshold_bounds = (0.7, 0.75)
    assert calibrate(stub, source)[0] == 0.7  # type: ignore[arg-type]  # the floor


def _covered(box: tuple[int, int, int, int], region: tuple[int, int, int, int]) -> float:
    """Share of `region`'s area inside `box`."""
    width = max(0, min(box[2], region[2]) - max(box[0], region[0]))
    height = max(0, min(box[3], region[3]) - max(box[1], region[1]))
    return width * height / ((region[2] - region[0]) * (region[3] - region[1]))


@pytest.mark.parametrize(("crop", "angle", "mirror"), [((40, 50, 100, 110), 12, False), ((70, 20, 150, 100), -8, True)])
def test_evidence_gives_the_transform_and_the_source_region(
    detector: CopyDetector, crop: tuple[int, int, int, int], angle: float, mirror: bool
) -> None:
    """A crop of 14-25% of a training image, enlarged to 256 px, (mirrored,) rotated: the evidence names the copy
    operation and the box on the training image covers the crop's source."""
    copy = TRAIN[11][1].crop(crop).resize((256, 256), Image.Resampling.BICUBIC)
    copy = copy.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else copy
    copy = copy.rotate(angle, Image.Resampling.BILINEAR)  # anticlockwise, as the evidence counts
    ((score, key, evidence),) = detector.match_evidence([copy])
    assert key == TRAIN[11][0] and score >= CopyDetector.default_threshold and evidence is not None
    assert evidence.matches >= 8 and evidence.mirrored == mirror
    assert evidence.zoom == pytest.approx(256 / (crop[2] - crop[0]), rel=0.08)
    assert evidence.rotation == pytest.approx(angle, abs=2.0)
    assert evidence.train_box is not None and _covered(evidence.train_box, crop) >= 0.95
    box_area = (evidence.train_box[2] - evidence.train_box[0]) * (evidence.train_box[3] - evidence.train_box[1])
    assert box_area <= 2.0 * (crop[2] - crop[0]) * (crop[3] - crop[1])  # the region, not the whole image
    assert evidence.candidate_box == (0, 0, 256, 256)  # all of the candidate is the copy
    words = evidence.words
    assert f"{evidence.matches} consistent matches" in words and f"zoom {evidence.zoom:.1f}×" in words
    assert f"rotated {abs(angle)}° {'anticlockwise' if angle > 0 else 'clockwise'}" in words
    assert ("mirrored" in words) == mirror


def test_evidence_of_whole_image_copies_and_unrelated_images(detector: CopyDetector) -> None:
    exact, flipped, novel = detector.match_evidence([TRAIN[5][1], EDITS["vflip"](TRAIN[6][1]), texture(4000)])
    assert exact[2] is not None and exact[2].train_box == (0, 0, 160, 160) and exact[2].words.endswith("same framing")
    assert flipped[2] is not None and "flipped upside down" in flipped[2].words
    assert novel[0] < CopyDetector.default_threshold and (novel[2] is None or novel[2].matches < 8)
    assert [(s, k) for s, k, _ in (exact, flipped, novel)] == detector.match(
        [TRAIN[5][1], EDITS["vflip"](TRAIN[6][1]), texture(4000)]
    )


def test_demo_phantoms_planted_copies_flagged_fresh_ones_not() -> None:
    """The demo's setting (copydetect, threshold auto, phantoms of one procedural kind): planted copies are
    flagged, fresh phantoms are not (recipes/demo.yaml uses these defaults)."""
    from synthgen.sources.demo import DEMO_CLASSES, draw_phantom

    def phantoms(seed: int, n: int) -> list[tuple[str, Image.Image]]:
        return [(f"phantom-{seed}-{i}", draw_phantom(DEMO_CLASSES[i % 3], seed, i, 64)[0]) for i in range(n)]

    train = phantoms(0, 45)
    auditor = Auditor.from_source(MemorySource(train, "phantoms"))  # the defaults
    assert auditor.detector.name == "copydetect" and auditor.calibration is not None
    planted = [
        train[3][1],
        train[7][1].transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        train[11][1].crop((8, 8, 56, 56)).resize((64, 64), Image.Resampling.BICUBIC),
        train[20][1].rotate(12, Image.Resampling.BILINEAR),
        jpeg(train[40][1], 40),
    ]
    copies = auditor.check([Sample(f"copy-{i}", image) for i, image in enumerate(planted)])
    assert [v.nearest_train_key for v in copies] == [train[i][0] for i in (3, 7, 11, 20, 40)]
    assert all(v.flagged and v.evidence is not None for v in copies), [v.similarity for v in copies]
    fresh = auditor.check([Sample(key, image) for key, image in phantoms(1, 24)])
    assert not any(v.flagged for v in fresh), max(v.similarity for v in fresh)


# --- real data --------------------------------------------------------------------------------------------


def _copyset_module():
    spec = importlib.util.spec_from_file_location("copyset", REPO / "bench" / "copyset.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules.setdefault("copyset", module)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.mark.real_data
def test_real_colonoscopy_copies_at_the_default_threshold(real_data_dir: Path) -> None:
    """150 training frames, 5 copies per edit kind (60), 150 frames of other sequences and centres."""
    copyset = _copyset_module()
    data = copyset.build_copyset(real_data_dir / "colonoscopy-real", n_train=150, n_edit=5, n_novel=150, seed=1)
    auditor = Auditor.from_source(MemorySource(data.train, "train"))  # the defaults: copydetect, threshold auto
    positives = [(source, image) for items in data.positives.values() for source, image in items]
    copies = auditor.check([Sample(f"copy_{i}", image) for i, (_, image) in enumerate(positives)])
    novel = auditor.check([Sample(key, image) for key, image in data.negatives])
    recall = np.mean([v.flagged for v in copies])
    false_positive_rate = np.mean([v.flagged for v in novel])
    traced = np.mean([v.nearest_train_key == source for v, (source, _) in zip(copies, positives, strict=True)])
    assert recall >= 0.95 and false_positive_rate <= 0.02 and traced >= 0.9, (recall, false_positive_rate, traced)


@pytest.mark.real_data
def test_real_colonoscopy_region_crops_at_the_default_threshold(real_data_dir: Path) -> None:
    """Crops of 10-30% of a frame (around the most lesion-like spot, or at random), enlarged to 256 px."""
    copyset = _copyset_module()
    kinds = ("lesion10", "lesion20+flip+jpeg", "region10", "region30+flip+jpeg")
    edits = {kind: copyset.REGION_EDITS[kind] for kind in kinds}
    data = copyset.build_copyset(
        real_data_dir / "colonoscopy-real", n_train=120, n_edit=4, n_novel=80, seed=2, edits=edits
    )
    detector = CopyDetector()
    detector.fit(MemorySource(data.train, "train"))
    positives = [(source, image) for items in data.positives.values() for source, image in items]
    copies = detector.match([image for _, image in positives])
    novel = detector.match([image for _, image in data.negatives])
    recall = np.mean([score >= CopyDetector.default_threshold for score, _ in copies])
    traced = np.mean([key == source for (score, key), (source, _) in zip(copies, positives, strict=True)])
    false_positives = sum(score >= CopyDetector.default_threshold for score, _ in novel)
    assert recall >= 0.85 and traced >= 0.85 and false_positives <= 1, (recall, traced, false_positives)
