"""Issue 13 (P): validate's data checks (columns, classes against labels, a decoded sample, `--deep`), what the
readers report for them, tidy paths in messages, and progress totals that never read `n/0`.

The one-line errors are in the recipe-error battery (test_validate_cli.py); here are the cases that pass (with
lines or warnings) and the reader-level behaviour behind them.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_validate_cli import (
    BASE,
    BROKEN_ROWS,
    COVID,
    XRAY,
    XRAY_DATA,
    XRAY_ROWS,
    _png_bytes,
    _write_broken,
    _xray_folder,
    case_folder,
    mutate,
    run_cli,
    snapshot,
    write_recipe,
)

from synthgen.errors import SynthgenError
from synthgen.runtime import tidy_path
from synthgen.sources import SourceSpec, open_source
from synthgen.sources.base import spread
from synthgen.sources.checks import SAMPLE_IMAGES, check_data

REPO = Path(__file__).resolve().parents[1]


def stdout_lines(outcome) -> list[str]:
    return [line.strip() for line in outcome.stdout.splitlines()]


def make_images(root: Path, n: int, broken_at: set[int] = frozenset(), label: str = "covid19") -> None:
    """An imagefolder of `n` tiny PNGs (those at `broken_at` are garbage bytes) with a metadata.csv."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = ["file_name,label,text"]
    for i in range(n):
        name = f"images/{i:03d}.png"
        if i in broken_at:
            (root / name).write_bytes(b"not a png")
        else:
            Image.new("RGB", (8, 8), (i % 256, 40, 90)).save(root / name)
        lines.append(f"{name},{label},x")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")


# --- through the CLI: what passes, with its lines ----------------------------------------------------------


def test_demo_recipes_report_per_class_counts(tmp_path: Path) -> None:
    phantoms = "model.train.data: 144 images in demo colonoscopy phantoms; labels: normal 48, polyp 48, ulcer 48"
    for name in ("demo.yaml", "demo-dp.yaml"):
        outcome = run_cli("validate", str(REPO / "recipes" / name), "--out", str(tmp_path / "out"))
        assert outcome.code == 0 and outcome.stderr == "", outcome.stderr
        lines = stdout_lines(outcome)
        assert any(line.startswith("training images per class: polyp ") for line in lines), lines
        if name == "demo.yaml":
            assert "training images per class: polyp 48, ulcer 48, normal 48" in lines and phantoms in lines
        assert any("decoded 32 of" in line and line.endswith("all readable") for line in lines)
    assert not (tmp_path / "out").exists()


def test_class_mapping_fixes_a_class_named_unlike_the_data(tmp_path: Path) -> None:
    folder = case_folder(tmp_path)
    _xray_folder(folder)
    path = write_recipe(folder, mutate(XRAY, classes={"covid": {**COVID, "labels": ["covid19"]}}))
    outcome = run_cli("validate", str(path))
    assert outcome.code == 0, outcome.stderr
    lines = stdout_lines(outcome)
    assert "training images per class: covid 2 (covid19); labels no class generates: pneumonia 1" in lines
    assert any(line.startswith("model.train.data: 3 images in imagefolder ") for line in lines)
    assert "model.train.data: decoded 3 of 3 images (all): all readable" in lines


def test_several_labels_make_one_class(tmp_path: Path) -> None:
    folder = case_folder(tmp_path)
    _xray_folder(folder)
    path = write_recipe(folder, mutate(XRAY, classes={"abnormal": {**COVID, "labels": ["covid19", "pneumonia"]}}))
    outcome = run_cli("validate", str(path))
    assert outcome.code == 0, outcome.stderr
    assert "training images per class: abnormal 3 (covid19, pneumonia)" in stdout_lines(outcome)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({**XRAY_DATA, "label_column": None}, "no labels (label_column: null)"),
        ({"path": "captions"}, "no labels (nothing in a 'label' column)"),
    ],
    ids=["label-column-null", "no-label-column"],
)
def test_data_without_labels_is_allowed(tmp_path: Path, data: dict, why: str) -> None:
    folder = case_folder(tmp_path)
    _xray_folder(folder)
    (folder / "captions" / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "captions" / "images" / "a.png")
    (folder / "captions" / "metadata.csv").write_text("file_name,text\nimages/a.png,a chest X-ray\n")
    path = write_recipe(folder, mutate(XRAY, model__train__data=data, classes={"anything": COVID}))
    outcome = run_cli("validate", str(path))
    assert outcome.code == 0 and outcome.stderr == "", outcome.stderr
    lines = stdout_lines(outcome)
    assert any(line.startswith("model.train.data: ") and line.endswith(why) for line in lines), lines
    assert any(line.startswith("classes: not checked against the training data") for line in lines)


def test_some_unreadable_images_are_a_warning_naming_each(tmp_path: Path) -> None:
    """A truncated JPEG, a garbage file and a listed-but-missing file beside good images: exit 0, one warning."""
    folder = case_folder(tmp_path)
    _xray_folder(folder, XRAY_ROWS + BROKEN_ROWS)
    _write_broken(folder / "xray")
    path = write_recipe(folder, XRAY)
    before = snapshot(folder)
    outcome = run_cli("validate", str(path))
    assert outcome.code == 0, outcome.stderr
    [warning] = outcome.stderr.splitlines()
    assert warning.startswith("warning: model.train.data: 3 of 6 images checked cannot be read and will be skipped")
    for fragment in (
        "images/cut.jpg: cannot decode image: OSError: image file is truncated",
        "images/junk.jpg: cannot decode image: not a recognised image format",
        "images/gone.jpg: file not found",
    ):
        assert fragment in warning
    assert "warning" not in outcome.stdout and "ok:" in outcome.stdout
    assert snapshot(folder) == before


def test_deep_decodes_what_the_sample_skips(tmp_path: Path) -> None:
    total = 101
    unsampled = next(i for i in range(total) if i not in spread(total, SAMPLE_IMAGES))
    folder = case_folder(tmp_path)
    make_images(folder / "many", total, {unsampled})
    path = write_recipe(folder, mutate(XRAY, model__train__data={"path": "many"}))
    quick = run_cli("validate", str(path))
    assert quick.code == 0 and quick.stderr == ""
    assert f"decoded {SAMPLE_IMAGES} of 101 images (a sample spread over the set; --deep decodes all 101)" in (
        quick.stdout
    )
    deep = run_cli("validate", str(path), "--deep")
    assert deep.code == 0
    [warning] = deep.stderr.splitlines()
    assert warning.startswith("warning: model.train.data: 1 of 101 images checked cannot be read")
    assert f"images/{unsampled:03d}.png: cannot decode image" in warning


def test_build_preflight_prints_the_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`synthgen build` validates first and shows the same warnings before it starts (the build is stubbed)."""
    import synthgen.build

    def stop(*args, **kwargs):
        raise SynthgenError("stopped after the preflight")

    monkeypatch.setattr(synthgen.build, "build", stop)
    folder = case_folder(tmp_path)
    _xray_folder(folder, XRAY_ROWS + BROKEN_ROWS)
    _write_broken(folder / "xray")
    outcome = run_cli("build", str(write_recipe(folder, XRAY)))
    lines = outcome.stderr.splitlines()
    assert lines[0].startswith("warning: model.train.data: 3 of 6 images checked cannot be read")
    assert lines[-1] == "error: stopped after the preflight" and outcome.code == 2


def test_paths_in_lines_and_errors_are_tidy(tmp_path: Path) -> None:
    folder = case_folder(tmp_path)
    work = folder / "work"
    work.mkdir()
    _xray_folder(folder)
    path = write_recipe(work, mutate(XRAY, model__train__data={"path": "../xray"}, output={"dir": "../out"}))
    outcome = run_cli("validate", str(path))
    assert outcome.code == 0, outcome.stderr
    assert "/../" not in outcome.stdout and f"imagefolder {folder / 'xray'}" in outcome.stdout
    assert f"output: {folder / 'out'}" in outcome.stdout
    missing = write_recipe(work, mutate(XRAY, model__train__data={"path": "../gone"}), "missing.yaml")
    error = run_cli("validate", str(missing)).stderr
    assert "/../" not in error and f"data path not found: {folder / 'gone'}" in error


def test_tidy_path_keeps_symlinked_parents_correct(tmp_path: Path) -> None:
    (tmp_path / "real" / "inner").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "inner")
    assert tidy_path("work/../data") == Path("data")
    assert tidy_path(tmp_path / "a" / ".." / "b") == tmp_path / "b"
    # link/.. is real/, not tmp_path: folding it textually would name another folder
    assert tidy_path(tmp_path / "link" / ".." / "x") == (tmp_path / "real" / "x").resolve()
    assert os.path.samefile(tidy_path(tmp_path / "link" / ".."), tmp_path / "link" / "..")


# --- the readers behind the checks ---------------------------------------------------------------------------


def test_spread_is_deterministic_and_covers_both_ends() -> None:
    assert spread(5, None) == [0, 1, 2, 3, 4] and spread(5, 10) == [0, 1, 2, 3, 4]
    picked = spread(2146, 32)
    assert len(picked) == 32 and picked[0] == 0 and picked[-1] == 2145 and picked == sorted(set(picked))
    assert spread(2146, 32) == picked and spread(10, 1) == [0] and spread(0, 32) == []


def test_labels_read_without_decoding(tmp_path: Path) -> None:
    _xray_folder(tmp_path)
    (tmp_path / "xray" / "images" / "a.png").write_bytes(b"broken, but labels do not need pixels")
    assert open_source(tmp_path / "xray").labels() == ["covid19", "covid19", "pneumonia"]
    limited = open_source(SourceSpec(path=str(tmp_path / "xray"), limit=2))
    assert limited.labels() == ["covid19", "covid19"]
    for name in ("polyp/1.png", "polyp/2.png", "normal/3.png", "top.png"):
        (tmp_path / "folders" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "folders" / name)
    assert sorted(open_source(tmp_path / "folders").labels()) == ["", "normal", "polyp", "polyp"]
    demo = open_source(SourceSpec(type="demo", per_class=2, classes=["polyp", "normal"]))
    assert demo.labels() == [sample.label for sample in demo]


def test_parquet_labels_and_spread_probe(tmp_path: Path) -> None:
    images = [_png_bytes() if i % 7 else b"garbage" for i in range(40)]  # rows 0, 7, 14, ... are broken
    table = pa.table({"image": images, "label": [f"c{i % 3}" for i in range(40)], "key": [f"k{i}" for i in range(40)]})
    pq.write_table(table.slice(0, 25), tmp_path / "a.parquet", row_group_size=6)
    pq.write_table(table.slice(25), tmp_path / "b.parquet", row_group_size=6)
    source = open_source(tmp_path)
    assert source.labels() == [f"c{i % 3}" for i in range(40)]
    tried, skipped = source.probe(8)
    wanted = spread(40, 8)
    assert tried == 8 and [item.key for item in skipped] == [f"k{i}" for i in wanted if i % 7 == 0]
    tried, skipped = source.probe(None)
    assert tried == 40 and len(skipped) == 6
    unlabelled = open_source(SourceSpec(path=str(tmp_path), label_column=None))
    assert unlabelled.labels() == [""] * 40


def test_webdataset_labels_and_spread_probe(tmp_path: Path) -> None:
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as archive:
        for i in range(10):
            for ext, data in (("png", _png_bytes() if i != 9 else b"junk"), ("cls", f"c{i % 2}".encode())):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    source = open_source(path)
    assert source.labels() == [f"c{i % 2}" for i in range(10)]
    tried, skipped = source.probe(3)
    assert tried == 3 and [item.key for item in skipped] == ["0009"]  # spread includes the last sample


def test_check_data_lines_and_errors(tmp_path: Path) -> None:
    _xray_folder(tmp_path)
    spec = SourceSpec(path="xray")
    lines = check_data(spec, tmp_path, "audit.data")
    assert lines[0] == f"audit.data: 3 images in imagefolder {tmp_path / 'xray'}; labels: covid19 2, pneumonia 1"
    assert lines[1] == "audit.data: decoded 3 of 3 images (all): all readable"
    classes = {"covid": ["covid19"], "pneumonia": ["pneumonia"]}
    assert "training images per class: covid 2 (covid19), pneumonia 1" in check_data(
        spec, tmp_path, "model.train.data", classes=classes
    )
    with pytest.raises(SynthgenError, match=r"^classes.normal: no training image is labelled 'normal'; "):
        check_data(spec, tmp_path, "model.train.data", classes={"normal": ["normal"]})


# --- progress totals --------------------------------------------------------------------------------------------


def test_audit_progress_never_reads_n_of_zero(tmp_path: Path) -> None:
    """`calibrating threshold 500/0`, `privacy metrics 0/0`: every stage now ends at done == total > 0."""
    from synthgen.audit import run_audit
    from synthgen.sample import Sample
    from synthgen.sources.memory import MemorySource

    def image(seed: int) -> Image.Image:
        return Image.effect_noise((32, 32), 20 + seed).convert("RGB").rotate(seed * 7)

    train = MemorySource([Sample(f"t{i}", image(i), label="a") for i in range(30)])
    candidates = MemorySource([Sample(f"c{i}", image(100 + i), label="a") for i in range(4)])
    calls: list[tuple[str, int, int | None]] = []
    run_audit(train, candidates, tmp_path / "audit", threshold="auto", progress=lambda *call: calls.append(call))
    last = {stage: (done, total) for stage, done, total in calls}
    assert "calibrating threshold" in last and "privacy metrics" in last, last
    for stage, (done, total) in last.items():
        assert total is not None and total > 0 and done == total, (stage, done, total)
    assert all(total is None or total >= done for _, done, total in calls)


def test_no_base_recipe_warnings(tmp_path: Path) -> None:
    """The battery's valid baseline stays silent on stderr (the checks add lines, not noise)."""
    folder = case_folder(tmp_path)
    outcome = run_cli("validate", str(write_recipe(folder, BASE)))
    assert outcome.code == 0 and outcome.stderr == ""


# --- the real sets ------------------------------------------------------------------------------------------------


@pytest.mark.real_data
def test_real_radiology_classes_against_labels(real_data_dir: Path, tmp_path: Path) -> None:
    data = str(real_data_dir / "radiology-real")
    recipe = mutate(BASE, model__train__data={"path": data}, classes={"covid": COVID})
    outcome = run_cli("validate", str(write_recipe(tmp_path, recipe)))
    assert outcome.code == 2 and outcome.stdout == ""
    assert "classes.covid: no training image is labelled 'covid'; the data's labels are no_finding (639), " in (
        outcome.stderr
    )
    assert "covid19 (510)" in outcome.stderr and "add `labels: [covid19]`" in outcome.stderr
    wrong = mutate(recipe, model__train__data={"path": data, "label_column": "diagnosis"})
    error = run_cli("validate", str(write_recipe(tmp_path, wrong))).stderr
    assert "model.train.data.label_column: 'diagnosis' is not a column of" in error and "patient_id" in error
    mapped = mutate(recipe, classes={"covid": {**COVID, "labels": ["covid19"]}})
    outcome = run_cli("validate", str(write_recipe(tmp_path, mapped)), "--out", str(tmp_path / "out"))
    assert outcome.code == 0 and outcome.stderr == "", outcome.stderr
    lines = stdout_lines(outcome)
    assert (
        "training images per class: covid 510 (covid19); labels no class generates: no_finding 639, abnormal 500, "
        "pneumonia 199" in lines
    )
    assert any(line.startswith("model.train.data: decoded 32 of 1,848 images") for line in lines)


@pytest.mark.real_data
def test_real_colonoscopy_deep_decodes_every_image(real_data_dir: Path, tmp_path: Path) -> None:
    data = str(real_data_dir / "colonoscopy-real")
    classes = {"polyp": COVID, "normal": {**COVID, "labels": ["no_polyp"]}}
    path = write_recipe(tmp_path, mutate(BASE, model__train__data={"path": data}, classes=classes))
    outcome = run_cli("validate", str(path), "--deep", "--out", str(tmp_path / "out"))
    assert outcome.code == 0 and outcome.stderr == "", outcome.stderr
    lines = stdout_lines(outcome)
    assert "training images per class: polyp 2,143, normal 3 (no_polyp)" in lines
    assert "model.train.data: decoded 2,146 of 2,146 images (all): all readable" in lines


def test_paper_recipes_validate_against_their_prepared_data(tmp_path: Path) -> None:
    """Kvasir-VQA's labels are its class names; ROCOv2 has captions only. Tiny stand-ins at the recipes' paths."""
    (tmp_path / "recipes").mkdir()
    for name in ("kvasir-vqa-msdm.yaml", "rocov2-msdm.yaml"):
        (tmp_path / "recipes" / name).write_text((REPO / "recipes" / name).read_text())
    labels = ["polyp", "esophagitis", "ulcerative-colitis", "normal-cecum", "normal-pylorus", "normal-z-line"]
    kvasir = tmp_path / "data" / "kvasir-vqa"
    kvasir.mkdir(parents=True)
    n = len(labels)
    columns = {"key": [f"k{i}" for i in range(n)], "image": [_png_bytes()] * n, "text": ["x"] * n, "label": labels}
    pq.write_table(pa.table(columns), kvasir / "captions.parquet")
    outcome = run_cli("validate", str(tmp_path / "recipes" / "kvasir-vqa-msdm.yaml"))
    assert outcome.code == 0 and outcome.stderr == "", outcome.stderr
    assert "training images per class: polyp 1, esophagitis 1, ulcerative-colitis 1, normal-cecum 1, " in outcome.stdout
    rocov2 = tmp_path / "data" / "rocov2" / "data"
    rocov2.mkdir(parents=True)
    table = pa.table({"image_id": ["r0"], "image": [{"bytes": _png_bytes(), "path": "r0.png"}], "caption": ["CT"]})
    pq.write_table(table, rocov2 / "train-0.parquet")
    outcome = run_cli("validate", str(tmp_path / "recipes" / "rocov2-msdm.yaml"))
    assert outcome.code == 0 and outcome.stderr == "", outcome.stderr
    assert "no labels (label_column: null)" in outcome.stdout and "classes: not checked" in outcome.stdout


def test_numeric_labels_map_to_named_classes(tmp_path: Path) -> None:
    """A Parquet label column of integers reads as text; `labels: [0]` (unquoted YAML) names it."""
    table = pa.table({"image": [_png_bytes()] * 3, "label": [0, 1, 1], "text": ["x"] * 3})
    pq.write_table(table, tmp_path / "digits.parquet")
    classes = {"healthy": {**COVID, "labels": [0]}, "sick": {**COVID, "labels": [1]}}
    path = write_recipe(tmp_path, mutate(BASE, model__train__data={"path": "digits.parquet"}, classes=classes))
    outcome = run_cli("validate", str(path))
    assert outcome.code == 0, outcome.stderr
    assert "training images per class: healthy 1 (0), sick 2 (1)" in stdout_lines(outcome)
