"""Readers: lazy decoding, skip-not-crash on bad images, limits, keys, fingerprints, detection, demo."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from synthgen.errors import SynthgenError
from synthgen.sources import DEMO_CLASSES, SourceSpec, detect_type, open_source
from synthgen.sources.demo import draw_phantom

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def encode(color: tuple[int, int, int], fmt: str = "PNG", size: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, fmt)
    return buffer.getvalue()


def noisy_jpeg(size: int = 64) -> bytes:
    """A JPEG big enough that cutting it in half leaves a truncated, undecodable file."""
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


CORRUPT = bytes(np.random.default_rng(1).integers(0, 255, 300, dtype=np.uint8))
TRUNCATED = noisy_jpeg()[: len(noisy_jpeg()) // 2]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_parquet(path: Path, **columns: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=2)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """imagefolder with metadata.csv: 2 good images, one corrupt, one truncated, one missing."""
    root = tmp_path / "folder"
    write(root / "images/a.png", encode((255, 0, 0)))
    write(root / "images/b.jpg", encode((0, 0, 255), "JPEG"))
    write(root / "images/corrupt.jpg", CORRUPT)
    write(root / "images/trunc.jpg", TRUNCATED)
    rows = [
        ("images/a.png", "polyp", "red, round", "A"),
        ("images/corrupt.jpg", "polyp", "bad", "A"),
        ("images/trunc.jpg", "normal", "cut", "B"),
        ("images/gone.png", "normal", "missing", "B"),
        ("images/b.jpg", "normal", "blue", "B"),
    ]
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label", "text", "centre"])
        writer.writerows(rows)
    return root


def test_imagefolder_csv_reads_good_skips_bad(folder: Path) -> None:
    source = open_source(str(folder))
    samples = list(source)
    assert [s.key for s in samples] == ["images/a.png", "images/b.jpg"]
    assert [(s.label, s.text) for s in samples] == [("polyp", "red, round"), ("normal", "blue")]
    assert samples[0].metadata == {
        "file_name": "images/a.png",
        "label": "polyp",
        "text": "red, round",
        "centre": "A",
    }
    assert samples[0].image.mode == "RGB" and samples[0].image.getpixel((3, 3)) == (255, 0, 0)
    reasons = {s.key: s.reason for s in source.skipped}
    assert set(reasons) == {"images/corrupt.jpg", "images/trunc.jpg", "images/gone.png"}
    assert reasons["images/gone.png"] == "file not found"
    assert reasons["images/corrupt.jpg"].startswith("cannot decode image:")
    assert "truncated" in reasons["images/trunc.jpg"]
    assert all("\n" not in r for r in reasons.values())
    assert len(list(source)) == 2 and len(source.skipped) == 3  # re-iterating resets `skipped`


def test_imagefolder_limit_and_columns(folder: Path) -> None:
    spec = SourceSpec(path=str(folder), limit=1, text_column=None, label_column="centre")
    samples = list(open_source(spec))
    assert [(s.key, s.text, s.label) for s in samples] == [("images/a.png", "", "A")]
    # A column the spec names must exist (issue 13: labels used to become "" silently); absent defaults are fine.
    with pytest.raises(SynthgenError, match=r"^label_column: 'grade' is not a column of .*metadata.csv \(columns: "):
        open_source(SourceSpec(path=str(folder), label_column="grade"))
    with pytest.raises(SynthgenError, match=r"^text_column: 'caption' is not a column"):
        open_source(SourceSpec(path=str(folder), text_column="caption"))


def test_imagefolder_jsonl(tmp_path: Path) -> None:
    write(tmp_path / "x.png", encode((0, 255, 0)))
    lines = [{"file_name": "x.png", "label": "ulcer", "text": "t", "age": 61}, {"file_name": "y.png"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    source = open_source(SourceSpec(type="imagefolder", path=str(tmp_path)))
    [sample] = list(source)
    assert (sample.key, sample.label, sample.text, sample.metadata["age"]) == ("x.png", "ulcer", "t", "61")
    assert [s.key for s in source.skipped] == ["y.png"]


def test_imagefolder_without_metadata_uses_parent_folder_as_label(tmp_path: Path) -> None:
    write(tmp_path / "polyp/1.png", encode((1, 2, 3)))
    write(tmp_path / "normal/sub/2.JPG", encode((1, 2, 3), "JPEG"))
    write(tmp_path / "top.png", encode((1, 2, 3)))
    write(tmp_path / ".hidden/3.png", encode((1, 2, 3)))
    write(tmp_path / "notes.txt", b"not an image")
    got = {(s.key, s.label) for s in open_source(tmp_path)}
    assert got == {("polyp/1.png", "polyp"), ("normal/sub/2.JPG", "sub"), ("top.png", "")}


def test_fingerprint_tracks_changes(folder: Path) -> None:
    source = open_source(str(folder))
    first = source.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", first) and open_source(str(folder)).fingerprint() == first
    image = folder / "images/a.png"
    image.write_bytes(encode((250, 0, 0), size=20))
    os.utime(image, ns=(1, 1))
    second = open_source(str(folder)).fingerprint()
    assert second != first
    with (folder / "metadata.csv").open("a") as handle:
        handle.write("images/b.jpg,polyp,again,C\n")
    assert open_source(str(folder)).fingerprint() not in (first, second)
    assert open_source(SourceSpec(path=str(folder), limit=1)).fingerprint() != open_source(str(folder)).fingerprint()


def struct_parquet(tmp_path: Path) -> Path:
    """HF `datasets` Image layout: bytes, path-only (relative to the file), corrupt, null."""
    write(tmp_path / "pq/img/side.png", encode((0, 255, 0)))
    images = [
        {"bytes": encode((255, 0, 0)), "path": "ignored.png"},
        {"bytes": None, "path": "img/side.png"},
        {"bytes": CORRUPT, "path": None},
        {"bytes": None, "path": "img/absent.png"},
        None,
    ]
    image, question = pa.array(images, type=IMAGE_STRUCT), [f"q{i}" for i in range(5)]
    answer, centre = ["polyp", "normal", "x", "y", "z"], [1, 2, 3, 4, 5]
    return write_parquet(tmp_path / "pq/kvasir.parquet", image=image, question=question, answer=answer, centre=centre)


def test_parquet_struct_images(tmp_path: Path) -> None:
    path = struct_parquet(tmp_path)
    source = open_source(SourceSpec(path=str(path), text_column="question", label_column="answer"))
    samples = list(source)
    assert [(s.key, s.text, s.label) for s in samples] == [
        ("kvasir-0", "q0", "polyp"),
        ("kvasir-1", "q1", "normal"),
    ]
    assert samples[1].image.getpixel((0, 0)) == (0, 255, 0)
    assert samples[0].metadata == {"question": "q0", "answer": "polyp", "centre": "1"}
    assert [(s.key, s.reason.split(":")[0]) for s in source.skipped] == [
        ("kvasir-2", "cannot decode image"),
        ("kvasir-3", "file not found"),
        ("kvasir-4", "no image data"),
    ]


def test_parquet_raw_bytes_folder_key_column_and_lazy_limit(tmp_path: Path) -> None:
    for name, colors in (("b", [(0, 0, 9)]), ("sub/a", [(9, 0, 0), (0, 9, 0)])):
        keys = [f"{name}-{i}" for i in range(len(colors))] + ["bad"]
        write_parquet(tmp_path / f"{name}.parquet", key=keys, img=[encode(c) for c in colors] + [CORRUPT])
    spec = SourceSpec(path=str(tmp_path), image_column="img")
    assert [s.key for s in open_source(spec)] == ["b-0", "sub/a-0", "sub/a-1"]  # sorted paths
    limited = open_source(spec.model_copy(update={"limit": 1}))
    assert [s.key for s in limited] == ["b-0"] and limited.skipped == []  # stopped before the bad row


def test_parquet_missing_column_is_one_line_error(tmp_path: Path) -> None:
    path = struct_parquet(tmp_path)
    message = r"image_column: 'pixels' is not a column of .* \(columns: image, question, answer"
    with pytest.raises(SynthgenError, match=message) as error:
        open_source(SourceSpec(path=str(path), image_column="pixels"))
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    with pytest.raises(SynthgenError, match="key_column: .id."):
        open_source(SourceSpec(path=str(path), key_column="id"))


def test_parquet_written_by_hf_datasets(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    write(tmp_path / "p.png", encode((7, 8, 9)))
    ds = datasets.Dataset.from_dict({"image": [str(tmp_path / "p.png")], "label": ["polyp"]})
    ds.cast_column("image", datasets.Image()).to_parquet(tmp_path / "hf.parquet")
    [sample] = list(open_source(str(tmp_path / "hf.parquet")))
    assert (sample.label, sample.image.getpixel((1, 1))) == ("polyp", (7, 8, 9))


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def test_webdataset_tar(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "shard-0.tar", "w") as archive:
        add_member(archive, "0001.png", encode((255, 0, 0)))
        add_member(archive, "0001.txt", b"a red polyp\n")
        add_member(archive, "0001.json", json.dumps({"label": "polyp", "centre": "A"}).encode())
        add_member(archive, "0002.jpg", encode((0, 0, 255), "JPEG"))
        add_member(archive, "0002.json", json.dumps({"label": "normal", "prompt": "blue"}).encode())
        add_member(archive, "0003.txt", b"caption without image")
        add_member(archive, "0004.jpg", TRUNCATED)
        add_member(archive, "0004.json", b"{not json")
    write(tmp_path / "shard-1.tar", b"this is not a tar archive")
    source = open_source(str(tmp_path))
    samples = list(source)
    assert [(s.key, s.text, s.label) for s in samples] == [
        ("0001", "a red polyp", "polyp"),
        ("0002", "blue", "normal"),
    ]
    assert samples[0].metadata == {"label": "polyp", "centre": "A"}
    assert [s.key for s in source.skipped] == ["0003", "0004", "shard-1.tar"]
    assert source.skipped[0].reason == "no image in sample"
    assert [s.key for s in open_source(SourceSpec(path=str(tmp_path / "shard-0.tar"), limit=1))] == ["0001"]


def test_synthgen_output_folder(tmp_path: Path) -> None:
    write(tmp_path / "out/manifest.json", b"{}")
    image = pa.array([{"bytes": encode((5, 6, 7)), "path": "polyp-00000.png"}], type=IMAGE_STRUCT)
    data = {"key": ["polyp-00000"], "image": image, "prompt": ["a polyp"], "label": ["polyp"], "seed": [3]}
    write_parquet(tmp_path / "out/data/shard-00000.parquet", **data)
    source = open_source("out", base_dir=tmp_path)
    assert detect_type(tmp_path / "out") == "synthgen"
    [sample] = list(source)
    assert (sample.key, sample.text, sample.label, sample.metadata["seed"]) == (
        "polyp-00000",
        "a polyp",
        "polyp",
        "3",
    )
    before = source.fingerprint()
    (tmp_path / "out/manifest.json").write_text('{"x": 1}')
    assert source.fingerprint() != before


def test_fingerprint_follows_content_not_timestamps(folder: Path, tmp_path: Path) -> None:
    """Copied or re-timestamped data keeps its fingerprint (and its cached models); any rewrite changes it."""
    first = open_source(str(folder)).fingerprint()
    image = folder / "images/a.png"
    os.utime(image, ns=(5, 5))  # touched: same bytes
    assert open_source(str(folder)).fingerprint() == first
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)  # fresh mtimes, other inodes, another path
    assert open_source(str(copy)).fingerprint() == first
    data = bytearray(image.read_bytes())
    data[-20] ^= 1  # same size, and the old mtime put back: the ctime still betrays the rewrite
    image.write_bytes(bytes(data))
    os.utime(image, ns=(5, 5))
    assert open_source(str(folder)).fingerprint() != first


def test_detection_and_path_errors(tmp_path: Path, folder: Path) -> None:
    assert detect_type(folder) == "imagefolder"
    assert detect_type(struct_parquet(tmp_path)) == "parquet" and detect_type(tmp_path / "pq") == "parquet"
    write(tmp_path / "wds/x.tar", b"")
    assert detect_type(tmp_path / "wds") == "webdataset"
    write(tmp_path / "odd/readme.txt", b"hi")
    errors = [
        (lambda: open_source(str(tmp_path / "odd")), "cannot tell what kind of data .*odd is; set `type`"),
        (lambda: open_source(str(tmp_path / "nope")), "data path not found: .*nope"),
        (lambda: open_source(SourceSpec(type="parquet")), "needs a `path`"),
        (lambda: open_source(SourceSpec(type="imagefolder", path=str(tmp_path / "odd"))), "no image files"),
        (lambda: open_source(SourceSpec(type="webdataset", path=str(tmp_path / "odd"))), r"no \.tar files"),
        (lambda: open_source(SourceSpec(type="demo", classes=["tumour"])), "valid: polyp, ulcer, normal"),
    ]
    (folder / "metadata.jsonl").write_text("{}\n")
    errors.append((lambda: open_source(str(folder)), "both metadata.csv and metadata.jsonl"))
    write(tmp_path / "nofile/metadata.csv", b"path,label\nx.png,a\n")
    errors.append((lambda: open_source(str(tmp_path / "nofile")), "no file_name column 'file_name'; columns: path"))
    for call, pattern in errors:
        with pytest.raises(SynthgenError, match=pattern) as error:
            call()
        assert "\n" not in str(error.value)


def redness_and_whiteness(image: Image.Image) -> tuple[float, float]:
    pixels = np.asarray(image, dtype=np.float32)
    red, green = pixels[..., 0], pixels[..., 1]
    return float(((red > 90) & (green < 0.4 * red)).mean()), float(((green > 0.75 * red) & (green > 110)).mean())


def test_demo_phantoms() -> None:
    source = open_source("demo")
    assert source.fingerprint() == open_source("demo").fingerprint()
    spec = SourceSpec(type="demo", per_class=8, resolution=32, seed=4)
    samples = list(open_source(spec))
    assert len(samples) == 24 and {s.label for s in samples} == set(DEMO_CLASSES)
    assert samples[0].key == "demo-polyp-0000" and samples[0].image.size == (32, 32)
    pattern = r"colonoscopy phantom showing (a (small|large) (polyp|ulcer) in the "
    pattern += r"(upper left|upper right|lower left|lower right|centre)|normal mucosa)"
    assert all(re.fullmatch(pattern, s.text) and s.label in s.text for s in samples)
    again = list(open_source(spec))
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(samples, again, strict=True))
    other_seed = list(open_source(spec.model_copy(update={"seed": 5})))
    assert not np.array_equal(np.asarray(samples[0].image), np.asarray(other_seed[0].image))
    assert open_source(spec).fingerprint() != open_source(spec.model_copy(update={"seed": 5})).fingerprint()
    limited = list(open_source(spec.model_copy(update={"limit": 4, "classes": ["ulcer", "normal"]})))
    assert [s.key for s in limited] == [
        "demo-ulcer-0000",
        "demo-normal-0000",
        "demo-ulcer-0001",
        "demo-normal-0001",
    ]


def test_demo_classes_differ_visibly() -> None:
    stats = {
        k: np.mean([redness_and_whiteness(draw_phantom(k, 0, i, 64)[0]) for i in range(12)], 0) for k in DEMO_CLASSES
    }
    assert stats["polyp"][0] > 0.05 and stats["polyp"][0] > 5 * stats["normal"][0]
    assert stats["ulcer"][1] > 0.02 and stats["ulcer"][1] > 10 * max(stats["normal"][1], stats["polyp"][1], 1e-4)


REAL_SETS = {
    "colonoscopy-real": {"polyp", "no_polyp"},
    "radiology-real": {"covid19", "pneumonia", "no_finding", "abnormal"},
}


@pytest.mark.real_data
@pytest.mark.parametrize("name", sorted(REAL_SETS))
def test_real_imagefolders(real_data_dir: Path, name: str) -> None:
    root = real_data_dir / name
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    with (root / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        expected = [row["file_name"] for row in itertools.islice(csv.DictReader(handle), 50)]
    source = open_source(str(root))
    samples = list(itertools.islice(source, 50))
    assert [s.key for s in samples] == expected and source.skipped == []
    assert {s.label for s in samples} <= REAL_SETS[name]
    assert all(s.image.mode == "RGB" and s.image.width > 0 and s.text for s in samples)
    assert "dataset" in samples[0].metadata and re.fullmatch(r"[0-9a-f]{64}", source.fingerprint())
