"""The full privacy report (copy audit + metrics + membership): self-contained, privacy-safe, and it renders."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from browser import EXTERNAL, chromium_or_skip, screenshot
from PIL import Image

from synthgen.audit import entry
from synthgen.audit.entry import run_audit
from synthgen.audit.privacy.membership import MIAConfig, ScoreSet, membership_summary
from synthgen.audit.report.gallery import OUTLINE
from synthgen.sample import Sample
from synthgen.sources.demo import DEMO_CLASSES, draw_phantom
from synthgen.sources.memory import MemorySource


def phantoms(start: int, n: int, prefix: str) -> list[Sample]:
    out = []
    for i in range(start, start + n):
        kind = DEMO_CLASSES[i % 3]
        image, caption, _ = draw_phantom(kind, 7, i, 48)
        out.append(Sample(f"{prefix}-{i}", image, caption, kind))
    return out


@pytest.fixture(scope="module")
def sets() -> dict[str, MemorySource]:
    train = phantoms(0, 60, "train")
    copies = [Sample(f"copy-{s.key}", s.image, s.text, s.label) for s in train[:4]]
    return {
        "train": MemorySource(train, description="train"),
        "holdout": MemorySource(
            phantoms(1000, 45, "holdout"), unreadable=("holdout/broken.png",), description="holdout"
        ),
        "candidates": MemorySource(copies + phantoms(2000, 41, "new"), description="candidates"),
    }


def fake_membership(*args, **kwargs) -> tuple[dict, ScoreSet, ScoreSet]:
    """Stands in for `run_membership` (no model to train): constructed scores, members somewhat lower."""
    rng = np.random.default_rng(0)
    members = ScoreSet([f"m{i}" for i in range(60)], rng.normal(0.4, 0.1, 60).tolist(), rng.normal(3, 1, 60).tolist())
    nonmembers = ScoreSet(
        [f"n{i}" for i in range(45)], rng.normal(0.5, 0.1, 45).tolist(), rng.normal(3, 1, 45).tolist()
    )
    info = {"model": "model-dir", "resolution": 48, "prediction_type": "epsilon", "device": "cpu"}
    return membership_summary(members, nonmembers, MIAConfig(), info), members, nonmembers


def test_report_holds_every_section_and_no_training_image(sets, tmp_path: Path) -> None:
    summary = run_audit(
        sets["train"], sets["candidates"], tmp_path, holdout=sets["holdout"], embedder="pixel", threshold=0.995
    )
    json.dumps(summary, allow_nan=False)
    assert summary["n_flagged"] == 4 and summary["metrics"]["computed"]
    metrics = summary["metrics"]
    assert metrics["n_train"] == 60 and metrics["n_synthetic"] == 45 and metrics["n_holdout"] == 45
    assert metrics["counts"]["holdout"] == {"seen": 45, "used": 45}
    assert summary["holdout"]["n"] == 45 and summary["holdout"]["skipped"]["count"] == 1
    html = (tmp_path / "report.html").read_text()
    assert not EXTERNAL.search(html) and "<script" not in html and "<link" not in html
    assert 'alt="training ' not in html and html.count("training image hidden") == 4
    for text in ("Privacy metrics", "Holdout share", "C_T", "Distance to the closest training record", "Per class"):
        assert text in html
    with_images = tmp_path / "shown"
    run_audit(
        sets["train"], sets["candidates"], with_images, embedder="pixel", threshold=0.995, show_training_images=True
    )
    shown = (with_images / "report.html").read_text()
    assert shown.count('alt="training train-') == 4 and "training image hidden" not in shown


def test_report_renders_in_headless_chromium(sets, tmp_path: Path, monkeypatch) -> None:
    chromium_or_skip()
    monkeypatch.setattr(entry, "run_membership", fake_membership)
    summary = run_audit(
        sets["train"],
        sets["candidates"],
        tmp_path,
        holdout=sets["holdout"],
        model="model-dir",
        embedder="pixel",
        threshold=0.995,
    )
    assert summary["membership"]["n_members"] == 60 and (tmp_path / "membership.parquet").is_file()
    html = (tmp_path / "report.html").read_text()
    assert not EXTERNAL.search(html) and "ROC curves" in html and html.count("training image hidden") == 4
    pixels = screenshot(tmp_path / "report.html", tmp_path)
    assert pixels.shape == (2000, 1200) and pixels.std() > 10  # text, tables and charts, not a blank page


# --- explainable verdicts: the matched region outlined, the matches and the transform in words ---------------


def _pngs(html: str, alt_prefix: str) -> dict[str, np.ndarray]:
    """The inline images whose alt text starts with `alt_prefix`, decoded, by the rest of their alt text."""
    found = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="' + re.escape(alt_prefix) + '([^"]*)"', html)
    return {alt: np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")) for data, alt in found}


def _outlined(pixels: np.ndarray) -> bool:
    """The report's outline colour (yellow) is present."""
    return bool(np.any(np.all(np.abs(pixels.astype(int) - OUTLINE) <= 8, axis=-1)))


@pytest.fixture(scope="module")
def copies() -> dict[str, MemorySource]:
    """Textures for training; a zoomed, rotated crop of one, a patch of another pasted into a novel texture, and
    two novel textures as candidates."""
    from test_copy_detection import texture

    train = [Sample(f"tex-{i}", texture(i)) for i in range(30)]
    crop = train[3].image.crop((40, 50, 100, 110)).resize((256, 256), Image.Resampling.BICUBIC).rotate(12)
    pasted = texture(5000, 256)
    pasted.paste(train[8].image.crop((60, 40, 140, 120)), (150, 20))
    candidates = [Sample("crop-copy", crop), Sample("patch-copy", pasted)]
    candidates += [Sample(f"novel-{i}", texture(6000 + i)) for i in range(2)]
    return {"train": MemorySource(train, description="train"), "candidates": MemorySource(candidates)}


def test_flagged_pairs_show_why_with_and_without_training_images(copies, tmp_path: Path) -> None:
    summary = run_audit(copies["train"], copies["candidates"], tmp_path / "hidden", threshold=0.5)
    assert summary["n_flagged"] == 2
    rows = {r["key"]: r for r in pq.read_table(tmp_path / "hidden" / "audit.parquet").to_pylist()}
    crop, patch = rows["crop-copy"], rows["patch-copy"]
    assert crop["nearest_train_key"] == "tex-3" and crop["matches"] >= 8 and crop["zoom"] == pytest.approx(4.27, 0.08)
    assert crop["rotation"] == pytest.approx(12, abs=2) and "zoom 4.3×, rotated 12° anticlockwise" in crop["transform"]
    assert crop["candidate_box"] == [0, 0, 256, 256] and crop["match_kind"] in ("keypoints", "region")
    x0, y0, x1, y1 = patch["candidate_box"]  # a local match: the pasted patch, not the whole candidate
    assert patch["nearest_train_key"] == "tex-8" and x0 >= 120 and y1 <= 130 and (x1 - x0) * (y1 - y0) < 0.3 * 256**2
    tx0, ty0, tx1, ty1 = patch["train_box"]
    assert abs(tx0 - (60 + x0 - 150)) <= 3 and abs(ty1 - (40 + y1 - 20)) <= 3  # the same region, in its pixels
    html = (tmp_path / "hidden" / "report.html").read_text()
    assert f"{crop['matches']} consistent matches" in html and "region: candidate x 0–256" in html
    assert 'alt="training ' not in html and html.count("training image hidden") == 2  # no training pixels at all
    thumbnails = _pngs(html, "candidate ")
    assert _outlined(thumbnails["patch-copy"]) and not _outlined(thumbnails["crop-copy"])  # whole image: no box

    run_audit(copies["train"], copies["candidates"], tmp_path / "shown", threshold=0.5, show_training_images=True)
    shown = (tmp_path / "shown" / "report.html").read_text()
    training = _pngs(shown, "training ")
    assert sorted(training) == ["tex-3", "tex-8"] and all(_outlined(pixels) for pixels in training.values())
    assert "training image hidden" not in shown
    pixels = screenshot(tmp_path / "shown" / "report.html", tmp_path)
    assert pixels.std() > 10
