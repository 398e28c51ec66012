"""Resuming refuses a folder whose finished shards have another layout (an older synthgen's columns).

The folders are made cheaply: the recipe's folder is claimed and its shards written by `ShardSet` (no model);
an older synthgen is simulated by rewriting a finished Parquet shard without a column and dropping the
marker's layout record, as markers from before the record have none. Only the real resume trains a model.
"""

from __future__ import annotations

import io
import json
import tarfile
from dataclasses import asdict, replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_build import build_interrupted_after_first_shard, write_recipe
from test_shards import make_samples
from typer.testing import CliRunner

from synthgen.build import build
from synthgen.cli import app
from synthgen.errors import SynthgenError
from synthgen.output.folder import OutputFolder
from synthgen.output.layout import check_resume_layout, shard_layout
from synthgen.output.shard_set import ShardRecord, ShardSet
from synthgen.provenance import sha256_file
from synthgen.recipe import LoadedRecipe, load_recipe

LABELS = ("polyp", "ulcer", "normal")  # test_build.TINY's classes


def started(tmp_path: Path, **overrides) -> tuple[LoadedRecipe, Path]:
    """A claimed output folder of the tiny recipe with shard 0 finished (as an interrupted build leaves it)."""
    loaded = load_recipe(write_recipe(tmp_path, **overrides))
    folder = OutputFolder(loaded.output_dir())
    folder.claim(loaded, overwrite=False)
    output = loaded.recipe.output
    shard_set = ShardSet(folder.path, output.formats, output.image_format, classes=list(loaded.recipe.classes))
    shard_set.write_shard(0, make_samples(4, labels=LABELS))
    return loaded, folder.path


def as_older_version(out: Path, drop: str = "sampling_numerics") -> None:
    """Rewrite finished shard 0 as a synthgen without column `drop` wrote it: no such Parquet column, no such
    `.json` key, and a marker without the layout record (its files' sha256 and sizes updated)."""
    marker = OutputFolder(out).marker(0)
    record = ShardRecord.from_dict(json.loads(marker.read_text()))
    for file in record.files:
        path = out / file.path
        if file.format == "parquet":
            pq.write_table(pq.read_table(path).drop_columns([drop]), path)
        else:
            _drop_json_key(path, drop)
    record.files = [
        replace(f, sha256=sha256_file(out / f.path), bytes=(out / f.path).stat().st_size) for f in record.files
    ]
    marker.write_text(json.dumps({k: v for k, v in asdict(record).items() if k != "layout"}))


def _drop_json_key(tar_path: Path, drop: str) -> None:
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in members:
            if member.name.endswith(".json"):
                data = json.dumps({k: v for k, v in json.loads(data).items() if k != drop}).encode()
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def snapshot(out: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns) for p in out.rglob("*") if p.is_file()}


def test_older_shard_without_a_column_is_refused_and_nothing_touched(tmp_path: Path) -> None:
    loaded, out = started(tmp_path)
    as_older_version(out)
    before = snapshot(out)
    with pytest.raises(SynthgenError) as error:
        build(loaded)
    message = str(error.value)
    assert "\n" not in message and str(out) in message and "data/shard-00000.parquet" in message
    assert "columns added: sampling_numerics" in message and "new folder" in message
    assert snapshot(out) == before
    result = CliRunner().invoke(app, ["build", str(loaded.path)])  # the CLI: one line, exit 2, no traceback
    assert result.exit_code == 2 and "columns added: sampling_numerics" in result.output
    assert "Traceback" not in result.output
    assert snapshot(out) == before


def test_recorded_layout_of_another_version_is_refused(tmp_path: Path) -> None:
    loaded, out = started(tmp_path)
    marker = OutputFolder(out).marker(0)
    data = json.loads(marker.read_text())
    data["layout"]["columns"] = [
        c if c[0] != "steps" else ["steps", "int64 not null"] for c in data["layout"]["columns"]
    ]
    data["layout"]["columns"].append(["old_field", "string"])
    marker.write_text(json.dumps(data))
    with pytest.raises(SynthgenError, match=r"columns removed: old_field; column types changed: steps \(int64 not"):
        OutputFolder(out).check(loaded)


def test_webdataset_only_older_shard_is_compared_by_its_json_keys(tmp_path: Path) -> None:
    loaded, out = started(tmp_path, **{"output.formats": ["webdataset"]})
    marker = OutputFolder(out).marker(0)
    marker.write_text(json.dumps({k: v for k, v in json.loads(marker.read_text()).items() if k != "layout"}))
    assert "resumes" in OutputFolder(out).check(loaded)  # the same members and .json keys
    as_older_version(out)
    with pytest.raises(SynthgenError, match=r"webdataset/shard-00000.tar .*columns added: sampling_numerics\)"):
        OutputFolder(out).check(loaded)


def test_same_layout_resumes_with_and_without_the_record(tmp_path: Path) -> None:
    loaded, out = started(tmp_path)
    assert "resumes" in OutputFolder(out).check(loaded)  # recorded layout, the same
    marker = OutputFolder(out).marker(0)
    data = json.loads(marker.read_text())
    assert data["layout"] == shard_layout("png", LABELS)
    del data["layout"]  # an older marker of the same layout: read from the Parquet footer, the same
    marker.write_text(json.dumps(data))
    assert "resumes" in OutputFolder(out).check(loaded)
    # a shard the build redoes anyway (its file is gone) is not held against the folder
    as_older_version(out)
    (out / "data" / "shard-00000.parquet").unlink()
    check_resume_layout(out, OutputFolder(out).markers(), ["parquet", "webdataset"], "png", LABELS)


def test_image_format_change_is_refused(tmp_path: Path) -> None:
    loaded, out = started(tmp_path)
    with pytest.raises(SynthgenError, match="image format png -> jpeg"):
        check_resume_layout(out, OutputFolder(out).markers(), ["parquet", "webdataset"], "jpeg", LABELS)
    with pytest.raises(SynthgenError, match="finished shards also have webdataset"):
        check_resume_layout(out, OutputFolder(out).markers(), ["parquet"], "png", LABELS)


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_cache")
def test_interrupted_build_of_the_same_layout_resumes_from_an_older_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loaded = load_recipe(write_recipe(tmp_path))
    build_interrupted_after_first_shard(loaded, monkeypatch)
    out = loaded.output_dir()
    marker = OutputFolder(out).marker(0)
    data = json.loads(marker.read_text())
    del data["layout"]  # as a synthgen before the layout record wrote it
    marker.write_text(json.dumps(data))
    shard = out / "data" / "shard-00000.parquet"
    stamp = shard.stat().st_mtime_ns
    result = build(loaded)
    assert (result.shards_written, result.shards_resumed) == (1, 1)
    assert shard.stat().st_mtime_ns == stamp
    assert json.loads(OutputFolder(out).marker(1).read_text())["layout"] == shard_layout("png", LABELS)
    assert pq.read_table(out / "data").num_rows == 8
