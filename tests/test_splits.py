"""Group-aware splits (issue 13): `split_by` for the validation split, `synthgen split`, one sequence inference.

No patient (a metadata column) or video (file-name numbering) may have images on both sides of a split; sides
follow from sha256(seed, group), so the split does not depend on reading order. Real-data tests read
$SYNTHGEN_REAL_DATA and write links to tmp_path, never copies into the repository.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from synthgen import __version__
from synthgen.cli import app
from synthgen.errors import SynthgenError
from synthgen.recipe import TrainingConfig, load_recipe
from synthgen.sources import open_source
from synthgen.sources.groups import (
    SequenceNeighbours,
    column_groups,
    holdout_mask,
    is_own_group,
    sequence_groups,
    thumbnail_vector,
)
from synthgen.sources.spec import SourceSpec
from synthgen.split import split_imagefolder
from synthgen.training.data import decode_training_data, split_groups
from synthgen.training.model_keys import lora_key, training_key
from synthgen.validate import validate_recipe

ROOT = Path(__file__).resolve().parents[1]


def make_folder(root: Path, patients: list[str], jsonl: bool = False) -> Path:
    """An imagefolder with one 16 px image per entry of `patients` (its patient_id; '' for none)."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i, patient in enumerate(patients):
        name = f"images/scan_{i:03d}.png"
        Image.new("RGB", (16, 16), (i * 7 % 256, 40, 90)).save(root / name)
        rows.append({"file_name": name, "label": "a" if i % 2 else "b", "patient_id": patient, "site": f"s{i % 3}"})
    if jsonl:
        (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        with (root / "metadata.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return root


PATIENTS = [f"p{i // 3}" for i in range(30)] + ["", "", ""]  # ten patients of three images, three without an id


def read_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "metadata.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


# --- the shared group logic -----------------------------------------------------------------------------------


def test_holdout_keeps_groups_whole_and_ignores_order() -> None:
    groups = [f"g{i % 17}" for i in range(200)]
    held = holdout_mask(groups, 0.2, seed=5)
    assert not {g for g, h in zip(groups, held, strict=True) if h} & {
        g for g, h in zip(groups, held, strict=True) if not h
    }
    assert abs(held.sum() - 40) <= 12  # whole groups of ~12 images, as near the target as they fit
    shuffled = groups[:]
    random.Random(1).shuffle(shuffled)
    again = holdout_mask(shuffled, 0.2, seed=5)
    assert {g for g, h in zip(groups, held, strict=True) if h} == {g for g, h in zip(shuffled, again, strict=True) if h}
    other_seed = holdout_mask(groups, 0.2, seed=6)
    assert not np.array_equal(held, other_seed)


def test_one_group_never_fills_a_validation_split() -> None:
    assert not holdout_mask(["same"] * 10, 0.4, seed=0).any()
    train, val = split_groups(["same"] * 10, 0.4, seed=0)
    assert len(train) == 10 and len(val) == 0


def test_empty_values_make_their_own_groups() -> None:
    groups, ungrouped = column_groups(["p1", "", "p1", " "], ["a.png", "b.png", "c.png", "d.png"])
    assert ungrouped == 2 and groups[0] == groups[2] == "p1"
    assert is_own_group(groups[1]) and is_own_group(groups[3]) and groups[1] != groups[3]


def test_sequences_from_numbering_and_shots() -> None:
    keys = [f"seq{s}_frame{f:03d}.jpg" for s in range(3) for f in range(5)] + ["lone.png"]
    groups = sequence_groups(keys)
    assert len(set(groups[:5])) == 1 and groups[0] != groups[5] and is_own_group(groups[-1])
    # a data set numbered 1..n: three videos (alike consecutive frames) are cut at the scene changes
    rng = np.random.default_rng(0)
    scenes = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(3)]
    frames, video_keys = [], []
    for n in range(90):
        noise = rng.integers(-6, 6, (16, 16, 3))
        frames.append(Image.fromarray(np.clip(scenes[n // 30] + noise, 0, 255).astype(np.uint8)))
        video_keys.append(f"set__{n + 1}.jpg")
    vectors = np.stack([thumbnail_vector(frame) for frame in frames])
    video = sequence_groups(video_keys, vectors)
    assert [len(set(video[i : i + 30])) for i in (0, 30, 60)] == [1, 1, 1] and len(set(video)) == 3
    # independent images numbered the same way: each its own group
    independent = np.stack(
        [thumbnail_vector(Image.fromarray(rng.integers(0, 255, (16, 16, 3), np.uint8))) for _ in range(90)]
    )
    assert len(set(sequence_groups(video_keys, independent))) == 90


def test_calibration_uses_the_shared_sequence_inference() -> None:
    from synthgen.audit.detection import calibrate

    assert calibrate.SequenceNeighbours is SequenceNeighbours


# --- training: split_by ----------------------------------------------------------------------------------------


def test_training_split_by_patient_keeps_patients_whole(tmp_path: Path) -> None:
    source = open_source(str(make_folder(tmp_path / "data", PATIENTS)))
    data = decode_training_data(source, 16, "patient_id")
    train, val = split_groups(data.groups, 0.3, seed=0)
    assert len(val) and not {data.groups[i] for i in train} & {data.groups[i] for i in val}
    patients = [PATIENTS[i] for i in val if PATIENTS[i]]
    assert all(PATIENTS.count(p) == patients.count(p) for p in patients)  # a held-out patient: all three images


def test_missing_split_column_is_one_line_naming_the_field(tmp_path: Path) -> None:
    source = open_source(str(make_folder(tmp_path / "data", PATIENTS)))
    with pytest.raises(SynthgenError, match=r"^model\.train\.split_by: .*no column 'patient'.*patient_id"):
        decode_training_data(source, 16, "patient", field="model.train.split_by")
    recipe = {
        "name": "split",
        "model": {"train": {"data": {"path": "data"}, "resolution": 16, "split_by": "patient"}},
        "classes": {"a": {"count": 1, "prompts": ["a scan"]}, "b": {"count": 1, "prompts": ["b scan"]}},
        "audit": {"enabled": False},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(SynthgenError, match=r"model\.train\.split_by: .*no column 'patient'") as raised:
        validate_recipe(load_recipe(tmp_path / "recipe.yaml"))
    assert "\n" not in str(raised.value)
    recipe["model"]["train"]["split_by"] = "patient_id"
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    lines = validate_recipe(load_recipe(tmp_path / "recipe.yaml"))
    assert any("model.train.split_by: 10 groups by patient_id; 3 images without a value" in line for line in lines)


def _old_key(config: TrainingConfig, fingerprint: str) -> str:
    """The key as computed before split_by / channels existed (issue 13): their defaults must not change it."""
    settings = config.model_dump(mode="json", exclude={"data", "split_by", "channels", "max_minutes"})
    blob = {"settings": settings, "data": fingerprint, "version": __version__}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


def test_new_training_fields_at_default_keep_cache_keys() -> None:
    demo = load_recipe(ROOT / "recipes" / "demo.yaml").recipe.model.train
    assert demo is not None and demo.split_by is None and demo.channels == "auto"
    assert training_key(demo, "fp") == _old_key(demo, "fp")
    assert training_key(demo.model_copy(update={"split_by": "patient_id"}), "fp") != _old_key(demo, "fp")
    assert training_key(demo.model_copy(update={"channels": 1}), "fp") != _old_key(demo, "fp")
    from synthgen.recipe import LoRAConfig

    lora = LoRAConfig(data={"type": "demo"})
    assert lora_key(lora, "fp", "base") != lora_key(lora.model_copy(update={"split_by": "sequence"}), "fp", "base")


# --- synthgen split --------------------------------------------------------------------------------------------


def test_split_writes_linked_patient_disjoint_imagefolders(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", PATIENTS)
    result = split_imagefolder(src, "patient_id", 0.3, tmp_path / "out", seed=2)
    train, held = read_rows(tmp_path / "out" / "train"), read_rows(tmp_path / "out" / "holdout")
    assert len(train) + len(held) == len(PATIENTS) and held
    assert list(train[0]) == ["file_name", "label", "patient_id", "site"]  # the original columns, in order
    patients = lambda rows: {r["patient_id"] for r in rows if r["patient_id"]}  # noqa: E731
    assert not patients(train) & patients(held)
    record = json.loads((tmp_path / "out" / "split.json").read_text())
    assert record["by"] == "patient_id" and record["seed"] == 2 and record["images_without_group"] == 3
    assert record["images"] == {"train": len(train), "holdout": len(held)}
    assert sum(record["labels"]["holdout"].values()) == len(held)
    image = tmp_path / "out" / "holdout" / held[0]["file_name"]
    assert image.stat().st_nlink > 1 or image.is_symlink()  # a link to the original, not a copy
    assert sum(result.links.values()) == len(PATIENTS) and not result.links.get("copy")
    # deterministic, and independent of the row order
    rows = read_rows(src)
    random.Random(0).shuffle(rows)
    shuffled = make_folder(tmp_path / "shuffled", PATIENTS)  # the same images, rows in another order
    with (shuffled / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    split_imagefolder(shuffled, "patient_id", 0.3, tmp_path / "again", seed=2)
    names = lambda folder: sorted(r["file_name"] for r in read_rows(folder))  # noqa: E731
    assert names(tmp_path / "again" / "holdout") == names(tmp_path / "out" / "holdout")


def test_split_jsonl_and_class_folders_by_sequence(tmp_path: Path) -> None:
    split_imagefolder(make_folder(tmp_path / "jsonl", PATIENTS, jsonl=True), "patient_id", 0.2, tmp_path / "j")
    sides = [
        [json.loads(line) for line in (tmp_path / "j" / side / "metadata.jsonl").read_text().splitlines()]
        for side in ("train", "holdout")
    ]
    assert (
        sides[1]
        and sum(map(len, sides)) == len(PATIENTS)
        and set(sides[1][0]) == {"file_name", "label", "patient_id", "site"}
    )
    assert not {r["patient_id"] for r in sides[0] if r["patient_id"]} & {
        r["patient_id"] for r in sides[1] if r["patient_id"]
    }
    folders = tmp_path / "classes"
    for label in ("polyp", "normal"):
        (folders / label).mkdir(parents=True)
        for video in range(4):
            for frame in range(3):
                Image.new("RGB", (8, 8), (video * 40, frame, 0)).save(folders / label / f"v{video}_f{frame}.png")
    split_imagefolder(folders, "sequence", 0.25, tmp_path / "seq")
    held = sorted(
        p.relative_to(tmp_path / "seq" / "holdout").as_posix() for p in (tmp_path / "seq" / "holdout").rglob("*.png")
    )
    assert held and not (tmp_path / "seq" / "holdout" / "metadata.csv").exists()
    videos = {name.rsplit("_f", 1)[0] for name in held}
    assert len(held) == 3 * len(videos)  # whole videos only
    record = json.loads((tmp_path / "seq" / "split.json").read_text())
    assert set(record["labels"]["train"]) | set(record["labels"]["holdout"]) == {"polyp", "normal"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--by", "patient"], "--by: no column 'patient'"),
        (["--by", "patient_id", "--holdout", "1"], "--holdout: must be between 0 and 1"),
        (["--by", "patient_id", "--holdout", "0"], "--holdout: must be between 0 and 1"),
    ],
)
def test_split_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    src = make_folder(tmp_path / "src", PATIENTS)
    result = CliRunner().invoke(app, ["split", str(src), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_split_refuses_a_non_empty_out_and_reports_on_success(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", PATIENTS)
    runner = CliRunner()
    ok = runner.invoke(app, ["split", str(src), "--by", "patient_id", "--out", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    assert "3 images have no patient_id: each is its own group" in ok.output and "hardlink" in ok.output
    again = runner.invoke(app, ["split", str(src), "--by", "patient_id", "--out", str(tmp_path / "out")])
    assert again.exit_code == 2 and "--out:" in again.output and "not an empty folder" in again.output


def test_split_real_radiology_by_patient(real_data_dir: Path, tmp_path: Path) -> None:
    src = real_data_dir / "radiology-real"
    result = split_imagefolder(src, "patient_id", 0.2, tmp_path / "r")
    train, held = read_rows(tmp_path / "r" / "train"), read_rows(tmp_path / "r" / "holdout")
    ids = lambda rows: {(r["dataset"], r["patient_id"]) for r in rows if r["patient_id"]}  # noqa: E731
    assert not {p for _, p in ids(train)} & {p for _, p in ids(held)}
    assert 0.15 < len(held) / (len(train) + len(held)) < 0.25
    assert result.record["images_without_group"] > 0 and not result.links.get("copy")


def test_split_real_colonoscopy_by_sequence(real_data_dir: Path, tmp_path: Path) -> None:
    split_imagefolder(real_data_dir / "colonoscopy-real", "sequence", 0.2, tmp_path / "c")
    held = {r["file_name"] for r in read_rows(tmp_path / "c" / "holdout")}
    train = {r["file_name"] for r in read_rows(tmp_path / "c" / "train")}
    for stem in ("polypgen__23_endocv2021_positive_", "polypgen__14_endocv2021_positive_"):  # small sequences
        sides = {name in held for name in train | held if name.startswith(f"images/{stem}")}
        assert len(sides) == 1
    cvc = sorted((int(n.rsplit("__", 1)[1].split(".")[0]), n in held) for n in train | held if "cvcclinicdb" in n)
    switches = sum(a[1] != b[1] for a, b in zip(cvc, cvc[1:], strict=False))
    assert switches <= 30  # whole shots of the 31 videos of CVC-ClinicDB, not scattered frames


def test_split_while_reading_gives_the_sides_of_synthgen_split(tmp_path: Path) -> None:
    """`data: {split: ...}` reads exactly the images `synthgen split` puts on each side, and no patient twice."""
    patients = [f"p{i // 3}" for i in range(30)] + [""] * 4
    src = make_folder(tmp_path / "src", patients)
    split_imagefolder(src, "patient_id", 0.3, tmp_path / "out", seed=5)
    seen: dict[str, set[str]] = {}
    for side in ("train", "holdout"):
        spec = {"path": str(src), "split": {"by": "patient_id", "holdout": 0.3, "seed": 5, "side": side}}
        source = open_source(SourceSpec(**spec))
        keys = {sample.key for sample in source}
        written = {row["file_name"] for row in csv.DictReader((tmp_path / "out" / side / "metadata.csv").open())}
        assert keys == written
        assert f"{side} side of a split by patient_id" in source.description
        seen[side] = {sample.metadata["patient_id"] for sample in source} - {""}
    assert seen["train"] and seen["holdout"] and not seen["train"] & seen["holdout"]


def test_split_while_reading_changes_the_fingerprint_and_rejects_bad_settings(tmp_path: Path) -> None:
    src = make_folder(tmp_path / "src", [f"p{i}" for i in range(10)])
    train = open_source(SourceSpec(path=str(src), split={"by": "patient_id", "side": "train"}))
    held = open_source(SourceSpec(path=str(src), split={"by": "patient_id", "side": "holdout"}))
    assert len({train.fingerprint(), held.fingerprint(), open_source(str(src)).fingerprint()}) == 3
    with pytest.raises(SynthgenError, match="split.by: no column 'ward'"):
        open_source(SourceSpec(path=str(src), split={"by": "ward", "side": "train"}))
    parquet = tmp_path / "x.parquet"
    parquet.write_bytes(b"")
    with pytest.raises(SynthgenError, match="only imagefolder sources can be split"):
        open_source(SourceSpec(path=str(parquet), split={"by": "patient_id", "side": "train"}))


def test_name_pattern_groups_images_whose_column_is_empty(tmp_path: Path) -> None:
    """NIH-style names carry the patient: with `name_pattern` its films stay on one side; without, they scatter."""
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    rows = []
    for patient in range(12):
        for film in range(4):
            name = f"images/nih__{patient:08d}_{film:03d}.png"
            Image.new("L", (8, 8), patient * 20).save(src / name)
            rows.append({"file_name": name, "label": "a", "patient_id": ""})
    with (src / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    pattern = r"nih__(\d{8})_"

    def patients(side: str, name_pattern: str | None) -> set[str]:
        split = {"by": "patient_id", "holdout": 0.25, "side": side, "name_pattern": name_pattern}
        return {sample.key.split("__")[1][:8] for sample in open_source(SourceSpec(path=str(src), split=split))}

    assert not patients("train", pattern) & patients("holdout", pattern)
    assert patients("train", None) & patients("holdout", None)  # each film its own group: patients on both sides
    result = split_imagefolder(src, "patient_id", 0.25, tmp_path / "out", name_pattern=pattern)
    assert result.record["images_without_group"] == 0 and result.record["groups"]["holdout"] == 3
    with pytest.raises(Exception, match="name_pattern"):
        SourceSpec(path=str(src), split={"by": "patient_id", "side": "train", "name_pattern": "("})
