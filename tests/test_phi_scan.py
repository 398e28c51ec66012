"""No DICOM header value and no original file name reaches anything synthgen writes (issue 12 item 2).

DICOM files full of identifying (fake) values, under identifying file and folder names, go through a whole build
(validate, train a tiny MSDM, generate, audit with a holdout, evaluate, export the model), then `synthgen audit`
with membership inference. Every byte of every file written (outputs, model cache, log file) and the terminal output
are searched for every value: as written, in any letter case, in UTF-16, inside Parquet cells, zip/npz and gzip
members and base64 images in HTML reports. Zero hits expected.
"""

from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from dicom_files import PHI, blob, phi_dataset, save
from pydicom.uid import JPEG2000Lossless, RLELossless
from typer.testing import CliRunner

from synthgen.cli import app

pytestmark = pytest.mark.slow

FILE_SENTINEL = "PHIFILE_bob_smith"
LABELS = ("clear", "nodule")
RECIPE = {
    "name": "dicom-phi",
    "model": {
        "train": {
            "data": {"type": "dicom", "path": "data", "mask_bands": 0.05},
            "resolution": 32,
            "vae_steps": 2,
            "unet_steps": 2,
            "batch_size": 4,
            "validation_split": 0.3,
            "split_by": "patient_id",
        }
    },
    "classes": {label: {"count": 4, "prompts": [f"chest ct, {label}"]} for label in LABELS},
    "sampling": {"steps": 2, "batch_size": 4},
    "audit": {"threshold": "auto", "holdout": {"type": "dicom", "path": "holdout"}},
    "eval": {
        "test": {"type": "dicom", "path": "holdout"},
        "seeds": 1,
        "bootstrap": 10,
        "max_per_class": 50,
        "classifier_resolution": 16,
        "classifier_steps": 3,
        "show_real_images": True,
    },
    "output": {"dir": "out", "shard_size": 4, "formats": ["parquet", "webdataset"]},
}


COMPRESSED = {1: RLELossless, 3: JPEG2000Lossless}  # every 4th image from the 2nd: RLE; from the 4th: JPEG 2000


def dicom_folder(root: Path, n: int, patients: int, seed: int) -> list[str]:
    """`n` labelled 16-bit images (one a 3-frame file, some MONOCHROME1, some RLE or JPEG 2000 compressed) under
    identifying names, plus a structured report and a truncated file (skipped); a metadata.csv by relative path.
    Returns every UID written."""
    uids, rows = [], []
    for i in range(n):
        label = LABELS[i % 2]
        pixels = blob(seed + i, light=label == "nodule")
        if i == 0:
            pixels = np.stack([pixels, blob(seed + 99, light=False), pixels])
        photometric = "MONOCHROME1" if i % 3 == 2 else "MONOCHROME2"
        ds = phi_dataset(pixels, photometric, PatientID=f"PHIID-77{i // 2 % patients}")
        if i % 4 in COMPRESSED:  # compressed transfer syntaxes in the build too (the header stays plain text)
            ds.compress(COMPRESSED[i % 4])
        ds.SeriesDescription = f"{FILE_SENTINEL} series"
        name = f"{FILE_SENTINEL}_study/{FILE_SENTINEL}_{i:04d}.dcm"
        save(ds, root / name)
        uids += [ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID]
        rows.append({"file_name": name, "label": label})
    report = phi_dataset(blob(0, 8))
    del report.PixelData
    save(report, root / f"{FILE_SENTINEL}_report.dcm")
    uids.append(report.SOPInstanceUID)
    (root / f"{FILE_SENTINEL}_cut.dcm").write_bytes((root / rows[1]["file_name"]).read_bytes()[:-600])
    rows += [{"file_name": f"{FILE_SENTINEL}_report.dcm", "label": ""}, {"file_name": f"{FILE_SENTINEL}_cut.dcm"}]
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return uids


def sentinels(uids: list[str]) -> list[str]:
    values = [v for v in PHI.values() if isinstance(v, str)] + [f"PHIID-77{i}" for i in range(10)] + uids
    return sorted({*values, FILE_SENTINEL, "PHISENTINEL", "PHIINST", "PHIDOCTOR", "bob_smith"})


def blobs(path: Path) -> Iterator[tuple[str, bytes]]:
    """The file's bytes, then what compression or encoding could hide inside it."""
    raw = path.read_bytes()
    yield "raw", raw
    if path.suffix == ".parquet":
        yield "parquet cells", repr(pq.read_table(path).to_pylist()).encode()
        yield "parquet metadata", repr(pq.read_metadata(path).metadata).encode()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                yield f"zip member {name}", name.encode() + archive.read(name)
    if raw[:2] == b"\x1f\x8b":
        yield "gzip", gzip.decompress(raw)
    if path.suffix in (".html", ".md", ".json", ".svg"):
        for found in re.finditer(rb"base64,([A-Za-z0-9+/=]+)", raw):
            yield "base64", base64.b64decode(found[1])


def hits(data: bytes, needles: list[str]) -> list[str]:
    found = []
    lowered = data.lower()
    for needle in needles:
        forms = {needle.encode(), needle.encode("utf-16-le"), needle.encode("utf-16-be")}
        if any(form in data for form in forms) or any(form.lower() in lowered for form in forms):
            found.append(needle)
    return found


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], str]:
    """(folder with everything written, the sentinels, the terminal output of every command)."""
    root = tmp_path_factory.mktemp("phi-build")
    uids = dicom_folder(root / "data", 12, 6, seed=0) + dicom_folder(root / "holdout", 4, 2, seed=50)
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    mp = pytest.MonkeyPatch()
    mp.setenv("SYNTHGEN_CACHE", str(root / "written" / "cache"))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.chdir(root)
    log = root / "written" / "synthgen.log"
    runner, terminal = CliRunner(), []
    commands = [
        ["--log-file", str(log), "validate", "recipe.yaml", "--deep"],
        ["--log-file", str(log), "build", "recipe.yaml", "--export-model"],
        ["--log-file", str(log), "audit", "--train", "data", "--candidates", "out", "--holdout", "holdout",
         "--model", "out/model", "--max-images", "4", "--show-training-images", "--out", "written/audit-cli"],
    ]  # fmt: skip
    try:
        for command in commands:
            result = runner.invoke(app, command)
            terminal.append(result.output)
            assert result.exit_code == 0, result.output
    finally:
        mp.undo()
    return root, sentinels(uids), "\n".join(terminal)


def written_files(root: Path) -> list[Path]:
    """Everything synthgen wrote: not the input DICOM folders (nor the recipe, written by the test)."""
    inputs = {root / "data", root / "holdout"}
    return sorted(p for p in root.rglob("*") if p.is_file() and not any(d in p.parents for d in inputs))


def test_the_build_ran_on_the_dicom_files(built: tuple[Path, list[str], str]) -> None:
    root, _, terminal = built
    out = root / "out"
    assert pq.read_table(out / "data").num_rows == 8
    assert (out / "audit" / "summary.json").is_file() and (out / "eval" / "eval.json").is_file()
    data = json.loads((out / "model" / "synthgen_model.json").read_text())["training_data"]
    assert data["images"] + data.get("validation_images", 0) == 14  # 12 files, one of 3 frames; RLE and JPEG 2000 too
    assert (root / "written" / "audit-cli" / "summary.json").is_file()
    log = (root / "written" / "synthgen.log").read_text()
    assert "train" in log.lower() and log.count("\n") > 5
    assert "cannot be read and will be skipped" in terminal  # the report and the cut file, counted by opaque keys
    assert "dcm-" in terminal


def test_no_phi_in_any_written_byte(built: tuple[Path, list[str], str]) -> None:
    root, needles, terminal = built
    files = written_files(root)
    assert len(files) > 30 and any(p.suffix == ".safetensors" for p in files)
    found = {}
    for path in files:
        for where, data in blobs(path):
            for needle in hits(data, needles):
                found.setdefault(f"{path.relative_to(root)} ({where})", []).append(needle)
    for needle in hits(terminal.encode(), needles):
        found.setdefault("terminal output", []).append(needle)
    assert found == {}


def test_the_scan_finds_what_it_looks_for(built: tuple[Path, list[str], str], tmp_path: Path) -> None:
    """The scanner is not blind: it finds the values in the input files and in compressed or encoded copies."""
    root, needles, _ = built
    source = next((root / "data").rglob("*.dcm"))
    assert "PHISENTINEL^ALICE" in hits(source.read_bytes(), needles)
    assert FILE_SENTINEL in hits(str(source).encode(), needles)
    assert "PHIID-7731" in hits("phiid-7731".encode("utf-16-le"), needles)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("x.txt", "x PHIACC-5521 x" * 50)
    path = tmp_path / "probe.npz"
    path.write_bytes(buffer.getvalue())
    assert "PHIACC-5521" in [n for _, data in blobs(path) for n in hits(data, needles)]
