"""The full privacy report (copy audit + metrics + membership): self-contained, privacy-safe, and it renders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from browser import EXTERNAL, chromium_or_skip, screenshot

from synthgen.audit import entry
from synthgen.audit.entry import run_audit
from synthgen.audit.privacy.membership import MIAConfig, ScoreSet, membership_summary
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
