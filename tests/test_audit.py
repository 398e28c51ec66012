"""Memorization audit: embedder, index, verdicts, and the three outputs (parquet, summary, HTML report)."""

from __future__ import annotations

import csv
import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthgen.audit import AuditLog, Auditor, PixelEmbedder, TrainIndex, get_embedder, run_audit
from synthgen.errors import SynthgenError
from synthgen.sample import Sample
from synthgen.sources import open_source
from synthgen.sources.memory import MemorySource

COLUMNS = ["key", "label", "nearest_train_key", "similarity", "flagged", "dropped", "attempt"]
EVIDENCE = ["match_kind", "matches", "transform", "zoom", "rotation", "mirrored", "candidate_box", "train_box"]


def blob_image(seed: int, size: int = 64) -> Image.Image:
    """A smooth random image (coloured Gaussian blobs) with values in 40..200, so offsets do not clip."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    canvas = np.zeros((size, size, 3), np.float32)
    for _ in range(4):
        cy, cx = rng.uniform(0, size, 2)
        radius = rng.uniform(size / 10, size / 4)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2))
        canvas += blob[..., None] * rng.uniform(-1, 1, 3)
    canvas = (canvas - canvas.min()) / (canvas.max() - canvas.min() + 1e-6)
    return Image.fromarray((40 + 160 * canvas).astype(np.uint8), "RGB")


def train_source(n: int = 20) -> MemorySource:
    samples = [Sample(f"train_{i}", blob_image(i), label="ab"[i % 2]) for i in range(n)]
    return MemorySource(samples, unreadable=("train_broken",), description="train")


def candidate_source(keys: dict[str, int], bad: tuple[str, ...] = ()) -> MemorySource:
    """Candidates named by key, each drawn with the given seed (a seed < 20 copies that training image)."""
    samples = [Sample(key, blob_image(seed), label="a") for key, seed in keys.items()]
    return MemorySource(samples, unreadable=bad, description="candidates")


def test_pixel_embedder_unit_norm_and_brightness_invariant() -> None:
    embedder = PixelEmbedder()
    image = blob_image(1)
    brighter = Image.fromarray(np.asarray(image).astype(np.uint8) + 30)
    vectors = embedder.embed([image, brighter, blob_image(2)])
    assert vectors.shape == (3, embedder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert float(vectors[0] @ vectors[1]) > 0.9999
    assert float(vectors[0] @ vectors[2]) < 0.9


def test_flat_image_has_zero_embedding_not_nan() -> None:
    vector = PixelEmbedder().embed([Image.new("RGB", (64, 64), (90, 90, 90))])
    assert np.all(np.isfinite(vector)) and not vector.any()


def test_unknown_embedder_is_a_user_error() -> None:
    with pytest.raises(SynthgenError, match="unknown audit embedder 'clipx'.*pixel"):
        get_embedder("clipx")
    with pytest.raises(SynthgenError, match="unknown audit embedder"):
        Auditor.from_source(train_source(), embedder="clipx")


def test_index_returns_top_k_keys_in_order() -> None:
    vectors = np.eye(4, dtype=np.float32)
    index = TrainIndex.build(vectors, ["a", "b", "c", "d"])
    query = np.array([[0.1, 0.9, 0.4, 0.0]], dtype=np.float32)
    similarities, keys = index.search(query, k=2)
    assert keys == [["b", "c"]]
    np.testing.assert_allclose(similarities, [[0.9, 0.4]], atol=1e-6)
    assert index.search(query, k=10)[1] == [["b", "c", "a", "d"]]  # k capped at the index size


def test_copy_flagged_and_unrelated_not() -> None:
    auditor = Auditor.from_source(train_source(), threshold=0.95)
    assert auditor.n_train == 20
    assert [s.key for s in auditor.train_skipped] == ["train_broken"]
    assert auditor.train_fingerprint == train_source().fingerprint()  # content hash: same images, same value
    copy, unrelated = auditor.check([Sample("c", blob_image(7)), Sample("u", blob_image(1000))])
    assert copy.flagged and copy.nearest_train_key == "train_7"
    assert copy.similarity == pytest.approx(1.0, abs=1e-5)
    assert not unrelated.flagged and unrelated.similarity < 0.95
    assert auditor.check([]) == []


def test_empty_training_data_is_a_user_error() -> None:
    with pytest.raises(SynthgenError, match="no readable training images in empty.*train_broken"):
        Auditor.from_source(MemorySource([], unreadable=("train_broken",), description="empty"))


def test_audit_log_keeps_few_thumbnails_flagged_first() -> None:
    auditor = Auditor.from_source(train_source(), threshold=0.95)
    log = AuditLog(auditor, max_thumbnails=3)
    samples = [Sample(f"new_{i}", blob_image(100 + i)) for i in range(8)] + [Sample("copy", blob_image(3))]
    log.extend(samples, auditor.check(samples))
    assert len(log.rows) == 9
    assert [item.row.key for item in log.gallery()] == ["copy"]  # flagged ones only, when there are any

    quiet = AuditLog(auditor, max_thumbnails=3)
    quiet.extend(samples[:8], auditor.check(samples[:8]))
    gallery = quiet.gallery()
    top3 = sorted(quiet.rows, key=lambda r: r.similarity, reverse=True)[:3]
    assert [item.row.key for item in gallery] == [r.key for r in top3]
    assert all(item.thumbnail.startswith(b"\x89PNG") for item in gallery)


def test_audit_log_state_keeps_evidence_and_reads_older_states() -> None:
    """A resumed build rebuilds its log from JSON states: evidence survives; states from before it still load."""
    auditor = Auditor.from_source(train_source(), threshold=0.5)
    samples = [Sample("copy", blob_image(3).transpose(Image.Transpose.FLIP_LEFT_RIGHT)), Sample("new", blob_image(99))]
    log = AuditLog(auditor)
    log.extend(samples, auditor.check(samples))
    assert log.rows[0].mirrored and log.rows[0].train_box == (0, 0, 64, 64) and "mirrored" in log.rows[0].transform
    resumed = AuditLog(auditor)
    resumed.merge(json.loads(json.dumps(log.state())))
    assert resumed.rows == log.rows
    old = {"rows": [{k: v for k, v in row.items() if k in COLUMNS} for row in log.state()["rows"]], "thumbnails": {}}
    older = AuditLog(auditor)
    older.merge(old)
    assert older.rows[0].key == "copy" and older.rows[0].matches is None and older.rows[0].train_box is None


def test_run_audit_writes_consistent_outputs(tmp_path: Path) -> None:
    candidates = candidate_source({"copy_of_5": 5, "copy_of_12": 12, "new_1": 500, "new_2": 501}, bad=("broken",))
    summary = run_audit(train_source(), candidates, tmp_path, threshold=0.95)

    table = pq.read_table(tmp_path / "audit.parquet")
    assert table.column_names == COLUMNS + EVIDENCE and table.num_rows == 4
    rows = {row["key"]: row for row in table.to_pylist()}
    assert rows["copy_of_5"]["flagged"] and rows["copy_of_5"]["nearest_train_key"] == "train_5"
    assert rows["copy_of_12"]["flagged"] and rows["copy_of_12"]["nearest_train_key"] == "train_12"
    assert not rows["new_1"]["flagged"] and not rows["new_2"]["flagged"]
    assert all(not r["dropped"] and r["attempt"] == 0 for r in rows.values())

    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    counts = [on_disk[name] for name in ("n_train", "n_candidates", "n_flagged", "n_dropped")]
    assert counts == [20, 4, 2, 0]
    assert on_disk["flagged_rate"] == 0.5 and on_disk["embedder"] == "copydetect" and on_disk["threshold"] == 0.95
    assert on_disk["detector"]["name"] == "copydetect" and on_disk["detector"]["threshold_mode"] == "fixed"
    assert on_disk["similarity"]["max"] == pytest.approx(1.0, abs=1e-5)
    assert on_disk["similarity"]["min"] == pytest.approx(min(r["similarity"] for r in rows.values()))
    assert on_disk["per_label"]["a"]["n"] == 4 and on_disk["per_label"]["a"]["n_flagged"] == 2
    assert on_disk["skipped"]["candidates"] == {
        "count": 1,
        "items": [{"key": "broken", "reason": "cannot decode image: corrupt"}],
    }
    assert on_disk["skipped"]["train"]["count"] == 1
    assert on_disk["train"]["fingerprint"] == train_source().fingerprint() and on_disk["similarity_meaning"]
    assert on_disk["created_at"] and on_disk["synthgen_version"]

    html = (tmp_path / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html)
    assert "<script" not in html and "<link" not in html
    assert html.count('alt="candidate ') == 2 and "data:image/png;base64," in html
    assert 'alt="training ' not in html and "hidden for privacy" in html
    assert "<svg" in html and "threshold 0.95" in html and "broken" in html


def test_report_shows_training_images_only_when_asked(tmp_path: Path) -> None:
    train = train_source()
    run_audit(train, candidate_source({"copy": 4}), tmp_path, show_training_images=True)
    html = (tmp_path / "report.html").read_text()
    assert html.count('alt="training train_4"') == 1 and "hidden for privacy" not in html


def test_report_escapes_data_strings(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    candidates = MemorySource([Sample(evil, blob_image(2), label="<b>x</b>")], unreadable=("<img onerror=x>",))
    run_audit(train_source(), candidates, tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert evil not in html and "<b>x</b>" not in html and "<img onerror" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert pq.read_table(tmp_path / "audit.parquet").column("key").to_pylist() == [evil]


def test_no_readable_candidates_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(SynthgenError, match="no readable candidate images.*1 skipped"):
        run_audit(train_source(), candidate_source({}, bad=("broken",)), tmp_path)


def test_progress_reports_both_stages(tmp_path: Path) -> None:
    calls: list[tuple[str, int, int | None]] = []
    run_audit(train_source(), candidate_source({"x": 300}), tmp_path, progress=lambda *a: calls.append(a))
    stages = [stage for stage, _, _ in calls]
    assert "embedding training images" in stages and "auditing candidates" in stages
    assert ("auditing candidates", 1, 1) in calls


def test_audit_defaults_are_the_recipes() -> None:
    """The build (recipe), `synthgen audit` and `run_audit` judge alike unless told otherwise."""
    from synthgen.cli_audit import audit_command
    from synthgen.recipe import AuditConfig

    fields = AuditConfig.model_fields
    names = ("embedder", "threshold", "target_fpr", "index", "group_by", "group_pattern")
    expected = {name: fields[name].default for name in names}
    assert expected == {
        "embedder": "copydetect",
        "threshold": "auto",
        "target_fpr": 0.01,
        "index": "auto",
        "group_by": "auto",
        "group_pattern": None,
    }
    for function in (Auditor.from_source, run_audit):
        parameters = inspect.signature(function).parameters
        assert {name: parameters[name].default for name in expected} == expected, function
    command = inspect.signature(audit_command).parameters
    assert (command["embedder"].default, command["threshold"].default) == (expected["embedder"], "auto")
    assert (command["group_by"].default, command["group_pattern"].default) == ("auto", None)


def test_audit_package_imports_cheaply_and_exports_what_it_lists() -> None:
    import synthgen.audit

    code = "import sys, synthgen.audit; print([m for m in ('cv2', 'faiss', 'torch', 'pyarrow') if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
    assert all(getattr(synthgen.audit, name) is not None for name in synthgen.audit.__all__)
    with pytest.raises(AttributeError):
        synthgen.audit.not_a_name  # noqa: B018


# --- real data --------------------------------------------------------------------------------------------


def write_imagefolder(folder: Path, rows: list[dict[str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "label", "text"])
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.real_data
def test_real_colonoscopy_copies_flagged_and_corrupt_skipped(real_data_dir: Path, tmp_path: Path) -> None:
    real = real_data_dir / "colonoscopy-real"
    with (real / "metadata.csv").open(newline="") as handle:
        real_rows = list(csv.DictReader(handle))
    # Spaced out, and unseen ones from another dataset: neighbouring video frames are near-duplicates.
    train_rows = real_rows[0:600:20]
    unseen_rows = [row for row in real_rows if row["dataset"] != real_rows[0]["dataset"]][::300][:5]

    train_dir = tmp_path / "train"
    (train_dir / "images").mkdir(parents=True)
    for row in train_rows:
        shutil.copy(real / row["file_name"], train_dir / row["file_name"])
    write_imagefolder(train_dir, [{k: row[k] for k in ("file_name", "label", "text")} for row in train_rows])

    cand_dir = tmp_path / "candidates"
    (cand_dir / "images").mkdir(parents=True)
    cand_rows: list[dict[str, str]] = []
    for i, row in enumerate(train_rows[:5] + unseen_rows):
        name = f"images/{'copy' if i < 5 else 'unseen'}_{i}.jpg"
        shutil.copy(real / row["file_name"], cand_dir / name)
        cand_rows.append({"file_name": name, "label": row["label"], "text": ""})
    rng = np.random.default_rng(0)
    (cand_dir / "images/random.jpg").write_bytes(rng.bytes(2000))
    jpeg = (real / unseen_rows[0]["file_name"]).read_bytes()
    (cand_dir / "images/truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    corrupt = ["images/random.jpg", "images/truncated.jpg", "images/missing.jpg"]
    cand_rows += [{"file_name": name, "label": "polyp", "text": ""} for name in corrupt]
    write_imagefolder(cand_dir, cand_rows)

    summary = run_audit(open_source(str(train_dir)), open_source(str(cand_dir)), tmp_path / "audit")

    rows = {r["key"]: r for r in pq.read_table(tmp_path / "audit" / "audit.parquet").to_pylist()}
    assert len(rows) == 10 and summary["n_candidates"] == 10 and summary["n_train"] == 30
    for i in range(5):
        copy = rows[f"images/copy_{i}.jpg"]
        assert copy["flagged"] and copy["similarity"] > 0.999
        assert copy["nearest_train_key"] == train_rows[i]["file_name"]
    assert not any(rows[f"images/unseen_{i}.jpg"]["flagged"] for i in range(5, 10))
    skipped = {item["key"]: item["reason"] for item in summary["skipped"]["candidates"]["items"]}
    assert sorted(skipped) == sorted(corrupt) and all(skipped.values())
    assert summary["skipped"]["train"]["count"] == 0
    html = (tmp_path / "audit" / "report.html").read_text()
    assert "images/missing.jpg" in html and 'alt="training ' not in html


@pytest.mark.parametrize("detector", ["pixel", "copydetect"])
def test_each_candidate_is_embedded_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, detector: str) -> None:
    """The copy check and the privacy metrics share one embedding per candidate, with unchanged verdicts."""
    from synthgen.audit import entry
    from synthgen.audit.detection import copydetect
    from synthgen.audit.index import embedders

    keys = {f"c{i}": seed for i, seed in enumerate((3, 50, 51, 52, 7))}
    reference = run_audit(train_source(), candidate_source(keys), tmp_path / "ref", embedder=detector, threshold=0.5)
    upright = [blob_image(seed).convert("RGB").tobytes() for seed in keys.values()]
    phase, embedded = [""], []

    def candidates_phase(*args, **kwargs):  # entry.batched is what the candidate loop reads with
        phase[0] = "candidates"
        return original_batched(*args, **kwargs)

    def counting(original):
        def embed(self, images):
            if phase[0] == "candidates":
                embedded.extend(upright.index(im.tobytes()) for im in images if im.tobytes() in upright)
            return original(self, images)

        return embed

    original_batched = entry.batched
    monkeypatch.setattr(entry, "batched", candidates_phase)
    for cls in (embedders.PixelEmbedder, copydetect.ResidualPixelEmbedder):
        monkeypatch.setattr(cls, "embed", counting(cls.embed))
    summary = run_audit(train_source(), candidate_source(keys), tmp_path / "once", embedder=detector, threshold=0.5)
    assert sorted(embedded) == list(range(len(keys)))  # each candidate embedded once (its flips aside)
    assert summary["n_flagged"] == reference["n_flagged"] and summary["similarity"] == reference["similarity"]
    assert summary["metrics"] == reference["metrics"]
