"""The shard layout (columns and types, image format, WebDataset members) and the resume check on it.

A resumed build keeps the finished shards and writes only the missing ones, so all shards of a folder must
share one layout. A newer synthgen that adds a provenance column or changes a type (as `sampling_numerics`
was added) would otherwise leave a dataset of two schemas: a reader over every shard (pyarrow.dataset,
`datasets`, `synthgen.data`) fails or silently reads nulls, and the WebDataset `.json` records differ too.
So `check_resume_layout` refuses such a resume before anything is written, naming the first mismatch.

Each shard's marker records the layout it was written with (`layout`). Markers written before that record
existed have none; their layout is read back from the shard files instead: the Parquet footer (columns,
types and nullability exactly as written, a few KB: nothing next to the hashing a resume does anyway) and
the first row's image path, or, for a WebDataset-only shard, the first sample's members and `.json` keys
(JSON has no int32/int64, so there only the names are compared). A same-layout old folder thus resumes as
before, an old folder of another layout is refused, and a shard whose files are missing, damaged or lack a
format this build writes is skipped: the build redoes it anyway, in the current layout.
"""

from __future__ import annotations

import functools
import json
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synthgen.errors import SynthgenError
from synthgen.output.writers import EXTENSIONS, WebDatasetShardWriter, parquet_schema

_FORMAT_OF_EXTENSION = {ext: fmt for fmt, ext in EXTENSIONS.items()}


def _type_name(field: pa.Field) -> str:
    return str(field.type) + ("" if field.nullable else " not null")


def _columns(schema: pa.Schema) -> list[list[str]]:
    return [[field.name, _type_name(field)] for field in schema]


@functools.lru_cache(maxsize=16)
def _layout(image_format: str, classes: tuple[str, ...]) -> str:
    layout = {
        "image_format": image_format,
        "columns": _columns(parquet_schema(classes)),
        "webdataset_members": list(WebDatasetShardWriter.members),
    }
    return json.dumps(layout)


def shard_layout(image_format: str, classes: Sequence[str]) -> dict[str, Any]:
    """What this synthgen writes into every shard: the record a marker keeps (`columns`: [name, arrow type])."""
    return json.loads(_layout(image_format, tuple(classes)))


def _parquet_layout(path: Path) -> dict[str, Any]:
    """An older shard's layout from its Parquet footer, plus the first row's image extension."""
    parquet = pq.ParquetFile(path)
    layout: dict[str, Any] = {"columns": _columns(parquet.schema_arrow)}
    if parquet.metadata.num_rows and "image" in parquet.schema_arrow.names:
        first = parquet.read_row_group(0, columns=["image.path"]).column("image")[0].as_py()
        extension = str((first or {}).get("path") or "").rpartition(".")[2]
        layout["image_format"] = _FORMAT_OF_EXTENSION.get(extension, extension or None)
    return layout


def _webdataset_layout(path: Path) -> dict[str, Any]:
    """An older tar's layout from its first sample: its members and `.json` keys (names only: types unknown)."""
    members: list[str] = []
    record: dict[str, Any] = {}
    with tarfile.open(path) as tar:
        first = None
        for member in tar:
            key, _, ext = member.name.partition(".")
            if first is not None and key != first:
                break
            first = key
            members.append(ext)
            if ext == "json":
                record = json.loads(tar.extractfile(member).read())  # type: ignore[union-attr]
    images = [ext for ext in members if ext in _FORMAT_OF_EXTENSION]
    layout: dict[str, Any] = {"columns": [[name, None] for name in record], "names_only": True}
    layout["webdataset_members"] = [ext for ext in members if ext not in images]
    layout["image_format"] = _FORMAT_OF_EXTENSION[images[0]] if images else None
    return layout


def differences(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """What differs from `found` (a finished shard) to `expected` (this build), as short phrases."""
    problems: list[str] = []
    if found.get("image_format") and found["image_format"] != expected["image_format"]:
        problems.append(f"image format {found['image_format']} -> {expected['image_format']}")
    want = {name: kind for name, kind in expected["columns"]}
    if found.get("names_only"):  # a WebDataset .json: every column but the image, types unknown
        want.pop("image", None)
    have = {name: kind for name, kind in found["columns"]}
    added = [name for name in want if name not in have]
    removed = [name for name in have if name not in want]
    changed = [f"{n} ({have[n]} -> {want[n]})" for n in want if have.get(n) not in (None, want[n])]
    for what, names in (("columns added", added), ("columns removed", removed), ("column types changed", changed)):
        if names:
            problems.append(f"{what}: {', '.join(names)}")
    if not (added or removed) and list(want) != list(have):
        problems.append("column order changed")
    members = found.get("webdataset_members")
    if members is not None and members != expected["webdataset_members"]:
        problems.append(f"WebDataset members {members} -> {expected['webdataset_members']}")
    return problems


def _finished_files(out_dir: Path, marker: Path, formats: Iterable[str]) -> tuple[dict[str, Any], list] | None:
    """The marker's data and files when the build would keep that shard (files there in every format); else
    None: a shard it redoes is written in the current layout, whatever its old files hold."""
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
        files = [(str(f["format"]), str(f["path"]), int(f["bytes"])) for f in data["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not set(formats) <= {fmt for fmt, _, _ in files}:
        return None
    for _, path, size in files:
        file = out_dir / path
        if not file.is_file() or file.stat().st_size != size:
            return None
    return data, files


def _well_formed(layout: Any) -> bool:
    """Whether a marker's `layout` is a record `differences` can read (columns as [name, type] string pairs)."""
    if not isinstance(layout, dict) or not isinstance(layout.get("columns"), list):
        return False
    pairs = layout["columns"]
    return all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs)


def _found_layout(out_dir: Path, data: dict[str, Any], files: list) -> tuple[dict[str, Any], str] | None:
    """(the layout a finished shard was written with, the file it describes): the marker's record, else the files."""
    by_format = {fmt: path for fmt, path, _ in files}
    shown = by_format.get("parquet") or next(iter(by_format.values()), "")
    if _well_formed(data.get("layout")):
        return data["layout"], shown  # a damaged record falls back to the files, as an older marker does
    try:
        if "parquet" in by_format:
            return _parquet_layout(out_dir / by_format["parquet"]), by_format["parquet"]
        if "webdataset" in by_format:
            return _webdataset_layout(out_dir / by_format["webdataset"]), by_format["webdataset"]
    except (OSError, ValueError, KeyError, TypeError, tarfile.TarError, pa.ArrowException):
        return None  # unreadable: it fails its hash check too and is redone
    return None


def check_resume_layout(
    out_dir: Path, markers: Iterable[Path], formats: Sequence[str], image_format: str, classes: Sequence[str]
) -> None:
    """Refuse (one line, nothing written) to resume into a folder whose finished shards have another layout."""
    expected = shard_layout(image_format, classes)
    for marker in markers:
        finished = _finished_files(out_dir, marker, formats)
        found = _found_layout(out_dir, *finished) if finished else None
        if finished is None or found is None:
            continue
        layout, shown = found
        problems = differences(expected, layout)
        extra = sorted({fmt for fmt, _, _ in finished[1]} - set(formats))
        if extra:
            problems.append(f"finished shards also have {', '.join(extra)}, this build writes {', '.join(formats)}")
        if problems:
            raise SynthgenError(
                f"output.dir: {out_dir}: finished shard {shown} was written with another shard layout than this "
                f"synthgen writes ({'; '.join(problems)}); resuming would mix two schemas in one dataset: build "
                f"into a new folder (--out) or remove {out_dir} and build again"
            )
