"""`threshold: auto` on novel patients: leave-one-out leaves out exactly the image's own group (patient column,
the split's grouping) when the data has one, reports its own false-positive rate with an exact interval, and the
recipe and `synthgen audit` paths pass the group column through."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_copy_detection import texture
from typer.testing import CliRunner

from synthgen.audit import Auditor, run_audit
from synthgen.audit.detection.calibrate import DUPLICATE, calibrate, clopper_pearson, fpr_estimate
from synthgen.audit.detection.grouping import Grouping, training_groups
from synthgen.cli import app
from synthgen.errors import SynthgenError
from synthgen.recipe import AuditConfig
from synthgen.sample import Sample
from synthgen.sources import open_source
from synthgen.sources.groups import source_groups
from synthgen.sources.memory import MemorySource
from synthgen.sources.spec import SourceSpec

REPO = Path(__file__).resolve().parent.parent


def name(i: int) -> str:
    """A key part without digits (digits would make file-name sequences)."""
    return chr(97 + i // 26) + chr(97 + i % 26)


class PairStub:
    """Detector stub: each image's score is its best pair score over the training keys it may see."""

    threshold_bounds = (0.2, 0.75)

    def __init__(self, keys: list[str], pair: dict[tuple[str, str], float], other: dict[str, float]) -> None:
        self.keys, self.pair, self.other = keys, pair, other

    def match(self, images: list[Image.Image], exclude: list[set[str]] | None = None) -> list[tuple[float, str]]:
        assert exclude is not None
        results = []
        for image, skip in zip(images, exclude, strict=True):
            key = image.info["key"]
            seen = [(self.pair.get((key, other), self.other[key]), other) for other in self.keys if other not in skip]
            results.append(max(seen))
        return results


def twins(n: int = 100, twin_score: float = 0.7) -> tuple[PairStub, MemorySource]:
    """n patients with two images each: same-patient images score `twin_score`, other patients 0.1 .. 0.4."""
    keys, pair, other, samples = [], {}, {}, []
    chance = np.linspace(0.1, 0.4, 2 * n)
    for i in range(n):
        a, b = f"case-{name(i)}-front", f"case-{name(i)}-side"
        pair[(a, b)] = pair[(b, a)] = twin_score
        for key in (a, b):
            other[key] = float(chance[len(keys)])
            image = Image.new("RGB", (4, 4))
            image.info["key"] = key
            samples.append(Sample(key, image, metadata={"patient_id": f"P{name(i)}"}))
            keys.append(key)
    return PairStub(keys, pair, other), MemorySource(samples)


def test_groups_leave_out_the_patient_and_keep_the_floor() -> None:
    stub, source = twins()
    grouping = training_groups(source)  # auto: the patient_id column
    assert grouping is not None and grouping.by == "patient_id" and grouping.ungrouped == 0
    threshold, info = calibrate(stub, source, grouping=grouping)  # type: ignore[arg-type]
    assert info["mean_excluded_neighbours"] == 1.0 and info["groups"]["n_groups"] == 100
    assert info["n"] == 200 and info["n_near_duplicates"] == 0
    assert threshold == pytest.approx(0.4 - 0.3 * 2 / 199 + 1e-6, abs=1e-6)  # 2 of 200 cross-patient scores above
    assert info["fpr_estimate"]["flagged"] == 2 and info["fpr_estimate"]["n"] == 200
    # Without the column, file-name sequences see nothing in these keys: the twin is the nearest, and the
    # quantile rises to the same-patient score, so novel patients (0.1 .. 0.4) are judged against 0.7.
    legacy, info = calibrate(stub, source)  # type: ignore[arg-type]
    assert legacy == pytest.approx(0.7 + 1e-6) and info["mean_excluded_neighbours"] == 0.0
    assert info["groups"]["by"] == "sequence"


def test_duplicates_across_groups_are_listed_and_the_cap_does_not_bind_with_groups() -> None:
    stub, source = twins(twin_score=0.3)
    stub.pair[("case-aa-front", "case-ab-front")] = stub.pair[("case-ab-front", "case-aa-front")] = 1.0
    for i in range(2, 12):  # 10 images whose nearest other patient scores 0.8, above the cap (0.75)
        stub.other[f"case-{name(i)}-front"] = 0.8
    threshold, info = calibrate(stub, source, grouping=training_groups(source))  # type: ignore[arg-type]
    assert info["n_near_duplicates"] == 2 and info["near_duplicate_level"] == DUPLICATE
    assert sorted(row[0] for row in info["near_duplicates"]) == ["case-aa-front", "case-ab-front"]
    assert threshold == pytest.approx(0.8 + 1e-6) and info["cap_applies"] is False and info["bounded_by"] is None
    capped, info = calibrate(stub, source)  # type: ignore[arg-type]  # sequences: untrusted null, capped
    assert capped <= 0.75 and info["cap_applies"] is True and info["n_near_duplicates"] == 12


def test_clopper_pearson_exact_values() -> None:
    assert clopper_pearson(0, 10) == (0.0, pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-9))
    assert clopper_pearson(10, 10) == (pytest.approx(0.025 ** (1 / 10), abs=1e-9), 1.0)
    low, high = clopper_pearson(5, 500)  # scipy.stats.beta.ppf(0.025, 5, 496), beta.ppf(0.975, 6, 495)
    assert low == pytest.approx(0.0032547214, abs=1e-8) and high == pytest.approx(0.0231813881, abs=1e-8)
    assert clopper_pearson(0, 0) == (0.0, 1.0)


def test_fpr_estimate_counts_scores_at_or_above_the_threshold() -> None:
    scores = np.linspace(0.0, 0.99, 100)
    estimate = fpr_estimate(scores, 0.95)
    assert estimate["flagged"] == int((scores >= 0.95).sum()) == 5 and estimate["n"] == 100
    assert estimate["rate"] == 0.05 and estimate["ci95"] == [round(v, 6) for v in clopper_pearson(5, 100)]


def write_folder(root: Path, rows: list[dict[str, str]]) -> Path:
    (root / "images").mkdir(parents=True)
    for i, row in enumerate(rows):
        Image.new("L", (8, 8), 10 * i).save(root / row["file_name"])
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_grouping_follows_the_split_and_its_name_pattern(tmp_path: Path) -> None:
    rows = [{"file_name": f"images/covid__{name(i)}.png", "patient_id": f"p{i % 5}"} for i in range(10)]
    rows += [{"file_name": f"images/nih__000{p}_00{f}.png", "patient_id": ""} for p in range(4) for f in range(3)]
    folder = write_folder(tmp_path / "data", rows)
    pattern = r"nih__(\d{4})_"
    split = {"by": "patient_id", "holdout": 0.3, "seed": 0, "side": "train", "name_pattern": pattern}
    train = open_source(SourceSpec(type="imagefolder", path=str(folder), split=split))
    grouping = training_groups(train)
    assert grouping is not None and (grouping.by, grouping.name_pattern) == ("patient_id", pattern)
    assert grouping.origin == "the data's split.by" and grouping.ungrouped == 0
    assert set(grouping.groups) == {row["file_name"] for row in train.rows}  # keys as the reader makes them
    nih = [key for key in grouping.groups if key.startswith("images/nih__")]
    assert nih and all(len(grouping(key)) == 3 for key in nih)  # the patient's three films, named in the file
    plain = open_source(SourceSpec(type="imagefolder", path=str(folder)))
    unnamed = training_groups(plain)  # auto without a split: the patient_id column, NIH films each on their own
    assert unnamed is not None and unnamed.ungrouped == 12 and unnamed.origin == "the data's patient_id column"
    assert training_groups(plain, "patient_id", pattern).ungrouped == 0
    assert training_groups(plain, "sequence") is None
    with pytest.raises(SynthgenError, match="audit.group_by: .* no column 'site'"):
        training_groups(plain, "site")


def test_source_groups_reads_memory_sources_and_no_column_means_sequences() -> None:
    samples = [Sample(f"k{name(i)}", Image.new("RGB", (4, 4)), metadata={"site": "AB"[i % 2]}) for i in range(6)]
    groups, ungrouped = source_groups(MemorySource(samples), "site")
    assert ungrouped == 0 and len(set(groups.values())) == 2
    bare = MemorySource([(f"k{name(i)}", Image.new("RGB", (4, 4))) for i in range(6)])
    assert training_groups(bare) is None  # no patient column: video sequences from file-name numbering
    grouping = Grouping("site", None, "test", groups)
    assert grouping("kaa") == {"kaa", "kac", "kae"} and grouping("unknown") == {"unknown"}


def recompressed(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=60)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def patients(n: int = 10) -> list[Sample]:
    """n patients with two near-identical films each (the second re-encoded)."""
    samples = []
    for i in range(n):
        film = texture(100 + i, 128)
        for view, image in (("front", film), ("again", recompressed(film))):
            samples.append(Sample(f"case-{name(i)}-{view}", image, metadata={"site": f"S{name(i)}"}))
    return samples


def test_recipe_group_by_reaches_the_real_detector() -> None:
    """copydetect end to end: with the group column each film's re-encoded twin is left out, so nothing is a
    near-duplicate; with sequences (no numbers in these keys) every twin is."""
    source = MemorySource(patients())
    audit = AuditConfig(group_by="site")
    auditor = Auditor.from_recipe(source, audit)
    calibration = auditor.calibration
    assert calibration is not None and calibration["groups"]["by"] == "site"
    assert calibration["groups"]["from"] == "audit.group_by" and calibration["mean_excluded_neighbours"] == 1.0
    assert calibration["n_near_duplicates"] == 0 and auditor.threshold == calibration["floor"]
    legacy = Auditor.from_recipe(source, AuditConfig(group_by="sequence")).calibration
    assert legacy is not None and legacy["n_near_duplicates"] == 20 and legacy["groups"]["by"] == "sequence"
    with pytest.raises(ValueError, match="group_pattern"):
        AuditConfig(group_pattern="(unclosed")


def patient_folder(root: Path, samples: list[Sample]) -> Path:
    """An imagefolder of `samples` with a patient_id and a site column (both the sample's `site`)."""
    (root / "images").mkdir(parents=True)
    rows = []
    for sample in samples:
        sample.image.save(root / "images" / f"{sample.key}.png")
        group = sample.metadata["site"]
        rows.append({"file_name": f"images/{sample.key}.png", "patient_id": group, "site": group})
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "patient_id", "site"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_synthgen_audit_passes_the_group_column(tmp_path: Path) -> None:
    """`synthgen audit --train FOLDER`: a patient_id column is the calibration's grouping; --group-by names another."""
    train_dir = patient_folder(tmp_path / "train", patients(6))
    candidates = MemorySource([("new", texture(999, 128))], "candidates")
    run_audit(open_source(train_dir), candidates, tmp_path / "auto")
    calibration = json.loads((tmp_path / "auto" / "summary.json").read_text())["detector"]["calibration"]
    assert calibration["groups"]["by"] == "patient_id" and calibration["mean_excluded_neighbours"] == 1.0
    assert set(calibration["fpr_estimate"]) >= {"flagged", "n", "rate", "ci95"}
    candidate_dir = tmp_path / "candidates"
    candidate_dir.mkdir()
    texture(998, 128).save(candidate_dir / "new.png")
    arguments = ["audit", "--train", str(train_dir), "--candidates", str(candidate_dir), "--out", str(tmp_path / "cli")]
    result = CliRunner().invoke(app, [*arguments, "--group-by", "site", "--group-pattern", "case-(\\w+)-"])
    assert result.exit_code == 0, result.output
    calibration = json.loads((tmp_path / "cli" / "summary.json").read_text())["detector"]["calibration"]
    assert calibration["groups"]["by"] == "site" and calibration["groups"]["from"] == "audit.group_by"
    assert calibration["groups"]["name_pattern"] == "case-(\\w+)-"


def test_group_options_in_the_schema() -> None:
    schema = json.loads((REPO / "recipes" / "recipe.schema.json").read_text())
    audit = schema["$defs"]["AuditConfig"]["properties"]
    assert audit["group_by"]["default"] == "auto" and "group_pattern" in audit
