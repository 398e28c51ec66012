"""Parquet readers: plain Parquet files/folders, and synthgen's own output folders (`data/*.parquet`).

The image column holds raw bytes, or a `{bytes, path}` struct (the Hugging Face `datasets` Image layout
used by e.g. Kvasir-VQA and ROCOv2 exports); a null `bytes` with a `path` is read from disk, relative to
the Parquet file's folder. Rows are read in small batches so memory stays bounded on large shards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from synthgen.errors import SynthgenError
from synthgen.sample import Sample
from synthgen.sources.base import (
    Source,
    existing_path,
    fingerprint_of,
    meta_str,
    shard_files,
    spec_settings,
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
        self.columns = {file: self._check_columns(file) for file in self.files}

    def _check_columns(self, file: Path) -> list[str]:
        """Fail early, naming the column and the ones that exist, rather than skip every row."""
        try:
            columns = list(pq.read_schema(file).names)
        except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ...
            raise SynthgenError(f"cannot read Parquet file {file}: {error}") from None
        for role, name in (("image_column", self.spec.image_column), ("key_column", self.spec.key_column)):
            if name and name not in columns:
                raise SynthgenError(f"{file} has no {role} {name!r}; columns: {', '.join(columns)}")
        return columns

    def _file_samples(self, file: Path) -> Iterator[Sample | None]:
        columns = self.columns[file]
        key_column = self.spec.key_column or ("key" if "key" in columns else None)
        with pq.ParquetFile(file) as parquet:
            index = 0
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                for row in batch.to_pylist():
                    key = meta_str(row.get(key_column)) if key_column else f"{file.stem}-{index}"
                    yield self._row_sample(key, row, file.parent)
                    index += 1

    def _row_sample(self, key: str, row: dict[str, Any], folder: Path) -> Sample | None:
        spec = self.spec
        text = meta_str(row.get(spec.text_column)) if spec.text_column else ""
        label = meta_str(row.get(spec.label_column)) if spec.label_column else ""
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
