"""`synthgen audit` on real images with corrupt files mixed in: copies flagged, corrupt files skipped and named."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from synthgen.cli import app


def _imagefolder(folder: Path, rows: list[tuple[str, str]], real: Path) -> None:
    """An imagefolder in tmp space: copies of real images (never into the repo) plus the given files."""
    (folder / "images").mkdir(parents=True)
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "label"])
        for file_name, label in rows:
            writer.writerow([file_name, label])
            if (real / file_name).exists():
                shutil.copyfile(real / file_name, folder / file_name)


@pytest.mark.real_data
def test_audit_cli_on_real_colonoscopy_with_corrupt_files(real_data_dir: Path, tmp_path: Path) -> None:
    real = real_data_dir / "colonoscopy-real"
    with open(real / "metadata.csv", newline="") as handle:
        names = [row["file_name"] for row in csv.DictReader(handle)]
    train_names, novel_names = names[:40], names[-300:-295]
    _imagefolder(tmp_path / "train", [(n, "polyp") for n in train_names], real)
    candidates = [(n, "polyp") for n in train_names[:5] + novel_names]
    candidates += [("images/corrupt.jpg", "polyp"), ("images/truncated.jpg", "polyp"), ("images/gone.jpg", "polyp")]
    _imagefolder(tmp_path / "cand", candidates, real)
    (tmp_path / "cand" / "images" / "corrupt.jpg").write_bytes(b"\x00not a jpeg" * 50)
    (tmp_path / "cand" / "images" / "truncated.jpg").write_bytes((real / train_names[6]).read_bytes()[:3000])

    result = CliRunner().invoke(
        app,
        [
            "audit",
            "--train",
            str(tmp_path / "train"),
            "--candidates",
            str(tmp_path / "cand"),
            "--out",
            str(tmp_path / "audit"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "5 of 10 candidates flagged" in result.output
    assert "skipped 3 unreadable image(s) in --candidates" in result.output
    rows = pq.read_table(tmp_path / "audit" / "audit.parquet").to_pylist()
    flagged = {r["key"]: r["nearest_train_key"] for r in rows if r["flagged"]}
    assert flagged == {n: n for n in train_names[:5]}
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    skipped = {item["key"]: item["reason"] for item in summary["skipped"]["candidates"]["items"]}
    assert set(skipped) == {"images/corrupt.jpg", "images/truncated.jpg", "images/gone.jpg"}
    assert "not found" in skipped["images/gone.jpg"]
    assert "truncated" in skipped["images/truncated.jpg"]


def test_audit_cli_missing_source_is_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["audit", "--train", str(tmp_path / "nope"), "--candidates", "demo", "--out", str(tmp_path / "a")]
    )
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "nope" in lines[0]
    assert not (tmp_path / "a").exists()


def test_audit_cli_out_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("x")
    result = CliRunner().invoke(
        app, ["audit", "--train", "demo", "--candidates", "demo", "--out", str(tmp_path / "taken")]
    )
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: --out:") and "Traceback" not in result.output


def test_filesystem_errors_are_one_line(tmp_path: Path, monkeypatch) -> None:
    """Any OSError inside a command (here: a read-only output folder) is one line, not a traceback."""
    from synthgen.audit.report import audit_log

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "a" / "audit.parquet"))

    monkeypatch.setattr(audit_log.AuditLog, "write", refuse)
    result = CliRunner().invoke(app, ["audit", "--train", "demo", "--candidates", "demo", "--out", str(tmp_path / "a")])
    assert result.exit_code == 2
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error:") and "Permission denied" in last and "audit.parquet" in last
