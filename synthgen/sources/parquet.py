"""Parquet readers: plain Parquet files/folders, and synthgen's own output folders (`data/*.parquet`).

The image column holds raw bytes, or a `{bytes, path}` struct (the Hugging Face `datasets` Image layout
used by e.g. Kvasir-VQA and ROCOv2 exports); a null `bytes` with a `path` is read from disk, relative to
the Parquet file's folder. A label column that is a Hugging Face `ClassLabel` (class indices, names in the
file's `huggingface` schema metadata, as synthgen's own shards store it) yields the class name.
Rows are read in small batches so memory stays bounded on large shards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from synthgen.errors import SynthgenError
from synthgen.sample import Sample
from synthgen.sources.base import (
    ColumnError,
    Skipped,
    Source,
    existing_path,
    fingerprint_of,
    meta_str,
    named_columns,
    shard_files,
    spec_settings,
    spread,
    take,
)
from synthgen.sources.spec import SourceSpec

BATCH_ROWS = 16


def image_data(cell: Any, folder: Path) -> bytes | Path | None:
    """Bytes or a file path from an image cell: raw bytes, a path string, or a `{bytes, path}` struct."""
    if isinstance(cell, dict):
        cell = cell.get("bytes") if cell.get("bytes") is not None else cell.get("path")
    if isinstance(cell, (bytes, bytearray, memoryview)):
        return bytes(cell)
    if isinstance(cell, str) and cell:
        return folder / cell  # an absolute `cell` stays absolute
    return None


def class_label_names(schema: pa.Schema, column: str | None) -> list[str] | None:
    """The names of `column` if the file's `datasets` metadata declares it a `ClassLabel`; else None."""
    try:
        info = json.loads((schema.metadata or {}).get(b"huggingface", b"{}")).get("info") or {}
        feature = (info.get("features") or {}).get(column) if column else None
    except (ValueError, AttributeError):  # metadata that is not what `datasets` writes: no names
        return None
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list):
        return [str(name) for name in feature["names"]]
    return None


class ParquetSource(Source):
    """Reads Parquet rows lazily; undecodable or missing images are skipped, not fatal."""

    reader = "parquet"

    def __init__(self, spec: SourceSpec, path: Path, files: list[Path] | None = None) -> None:
        super().__init__(description=f"{self.reader} {path}")
        self.spec = spec
        self.root = existing_path(path)
        self.files = shard_files(self.root, "*.parquet") if files is None else files
        if not self.files:
            raise SynthgenError(f"no .parquet files in {self.root}")
        self.class_names: dict[Path, list[str] | None] = {}
        self.columns = {file: self._check_columns(file) for file in self.files}

    def _check_columns(self, file: Path) -> list[str]:
        """Fail early, naming the column and the ones that exist, rather than skip every row."""
        try:
            schema = pq.read_schema(file)
        except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ...
            raise SynthgenError(f"cannot read Parquet file {file}: {error}") from None
        columns = list(schema.names)
        self.class_names[file] = class_label_names(schema, self.spec.label_column)
        for role, name in (("image_column", self.spec.image_column), *named_columns(self.spec)):
            if name not in columns:
                raise ColumnError(role, name, file, columns)
        return columns

    def _file_samples(self, file: Path) -> Iterator[Sample | None]:
        columns = self.columns[file]
        key_column = self.spec.key_column or ("key" if "key" in columns else None)
        with pq.ParquetFile(file) as parquet:
            index = 0
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                for row in batch.to_pylist():
                    key = meta_str(row.get(key_column)) if key_column else f"{file.stem}-{index}"
                    yield self._row_sample(key, row, file.parent, self.class_names.get(file))
                    index += 1

    def labels(self) -> list[str]:
        """The label column alone (no image bytes read); '' for the rows of files without one."""
        column, limit = self.spec.label_column, self.spec.limit
        labels: list[str] = []
        for file in self.files:
            if limit is not None and len(labels) >= limit:
                break
            if not column or column not in self.columns[file]:
                labels += [""] * pq.ParquetFile(file).metadata.num_rows
                continue
            names = self.class_names.get(file) or []
            for value in pq.read_table(file, columns=[column]).column(column).to_pylist():
                labels.append(names[value] if isinstance(value, int) and 0 <= value < len(names) else meta_str(value))
        return labels[:limit]

    def probe(self, count: int | None = None) -> tuple[int, list[Skipped]]:
        """Decode `count` rows spread over the files (within `limit`), reading only the row groups they are in."""
        self.skipped = []
        sizes = [pq.ParquetFile(file).metadata.num_rows for file in self.files]
        positions = spread(min(sum(sizes), self.spec.limit or sum(sizes)), count)
        start = 0
        for file, size in zip(self.files, sizes, strict=True):
            here = [p - start for p in positions if start <= p < start + size]
            if here:
                self._probe_file(file, here)
            start += size
        return len(positions), list(self.skipped)

    def _probe_file(self, file: Path, indices: list[int]) -> None:
        key_column = self.spec.key_column or ("key" if "key" in self.columns[file] else None)
        with pq.ParquetFile(file) as parquet:
            first = 0
            for group in range(parquet.metadata.num_row_groups):
                size = parquet.metadata.row_group(group).num_rows
                local = [i - first for i in indices if first <= i < first + size]
                rows = parquet.read_row_group(group).take(local).to_pylist() if local else []
                for offset, row in zip(local, rows, strict=True):
                    key = meta_str(row.get(key_column)) if key_column else f"{file.stem}-{first + offset}"
                    self._row_sample(key, row, file.parent, self.class_names.get(file))
                first += size

    def _row_sample(self, key: str, row: dict[str, Any], folder: Path, names: list[str] | None) -> Sample | None:
        spec = self.spec
        text = meta_str(row.get(spec.text_column)) if spec.text_column else ""
        value = row.get(spec.label_column) if spec.label_column else None
        if names is not None and isinstance(value, int) and 0 <= value < len(names):
            value = names[value]  # a ClassLabel index -> its name
        label = meta_str(value) if spec.label_column else ""
        metadata = {name: meta_str(value) for name, value in row.items() if name != spec.image_column}
        return self._sample(key, image_data(row.get(spec.image_column), folder), text, label, metadata)

    def _iter_samples(self) -> Iterator[Sample]:
        return take((s for file in self.files for s in self._file_samples(file)), self.spec.limit)

    def fingerprint(self) -> str:
        return fingerprint_of(spec_settings(self.spec, self.reader), self.root, self.files, self._contents())

    def _contents(self) -> list[Path]:
        return []


class SynthgenSource(ParquetSource):
    """A synthgen output folder (`manifest.json` + `data/*.parquet`), e.g. to re-audit a dataset."""

    reader = "synthgen"

    def __init__(self, spec: SourceSpec, path: Path) -> None:
        root = existing_path(path)
        if not (root / "manifest.json").is_file():
            raise SynthgenError(f"{root} is not a synthgen output folder (no manifest.json)")
        columns = {"key_column": "key", "text_column": "prompt", "label_column": "label"}
        files = sorted(p for p in (root / "data").glob("*.parquet") if p.is_file())
        if not files:
            raise SynthgenError(f"no data/*.parquet files in synthgen output folder {root}")
        super().__init__(spec.model_copy(update=columns), root, files)

    def _contents(self) -> list[Path]:
        return [self.root / "manifest.json"]
