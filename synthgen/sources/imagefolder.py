"""Hugging Face `imagefolder` layout: a folder of images with an optional `metadata.csv` / `metadata.jsonl`.

With metadata, each row's `file_name` (path relative to the folder) is one image; all columns go into
`sample.metadata` as strings so audits can group by e.g. `centre` or `patient_id`. Without metadata,
every image file below the folder is read and the immediate parent folder names the class.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from synthgen.errors import SynthgenError
from synthgen.sample import Sample
from synthgen.sources.base import (
    IMAGE_EXTENSIONS,
    ColumnError,
    Skipped,
    Source,
    existing_path,
    fingerprint_of,
    meta_str,
    named_columns,
    spec_settings,
    spread,
    take,
)
from synthgen.sources.groups import SEQUENCE, holdout_mask, row_groups
from synthgen.sources.spec import SourceSpec, SplitSpec

METADATA_FILES = ("metadata.csv", "metadata.jsonl")


def find_metadata(folder: Path) -> Path | None:
    """The folder's metadata file; two of them is ambiguous, as in Hugging Face `datasets`."""
    found = [folder / name for name in METADATA_FILES if (folder / name).is_file()]
    if len(found) > 1:
        raise SynthgenError(f"{folder} has both metadata.csv and metadata.jsonl; keep one")
    return found[0] if found else None


def list_images(folder: Path) -> list[Path]:
    """Image files below `folder`, sorted, ignoring hidden files and folders (.git, .ipynb_checkpoints)."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        and path.is_file()
    )


def read_metadata(path: Path) -> list[dict[str, str]]:
    """Rows of metadata.csv (csv module: quoted commas) or metadata.jsonl (one JSON object a line)."""
    try:
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8-sig") as handle:
                return [{k: meta_str(v) for k, v in row.items() if k is not None} for row in csv.DictReader(handle)]
        rows = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"line {number} is not a JSON object")
                rows.append({str(k): meta_str(v) for k, v in row.items()})
        return rows
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as error:
        raise SynthgenError(f"cannot read {path}: {error}") from None


class ImageFolderSource(Source):
    """Reads an imagefolder lazily; a corrupt, truncated or missing image is skipped, not fatal."""

    def __init__(self, spec: SourceSpec, path: Path) -> None:
        super().__init__(description=f"imagefolder {path}")
        self.spec = spec
        self.root = existing_path(path)
        if not self.root.is_dir():
            raise SynthgenError(f"imagefolder path is not a folder: {self.root}")
        self.metadata_path = find_metadata(self.root)
        if self.metadata_path is not None:
            self.rows = read_metadata(self.metadata_path)
            self._check_columns()
        else:
            for role, name in named_columns(spec):  # labels come from folder names; there are no columns
                why = "(it has no metadata.csv or metadata.jsonl; labels are its folder names)"
                raise ColumnError(role, name, self.root, [], why)
            self.rows = [{"file_name": p.relative_to(self.root).as_posix()} for p in list_images(self.root)]
            if not self.rows:
                raise SynthgenError(f"no metadata.csv/metadata.jsonl and no image files in {self.root}")
        if spec.split is not None:
            self.rows = self._split_side(spec.split)

    def _split_side(self, split: SplitSpec) -> list[dict[str, str]]:
        """The rows on `split.side`: whole groups, decided as `synthgen split` decides them."""
        columns = getattr(self, "columns", ["file_name"])
        if split.by != SEQUENCE and split.by not in columns:
            where = self.metadata_path or f"{self.root} (no metadata file)"
            raise SynthgenError(f"split.by: no column {split.by!r} in {where}; columns: {', '.join(columns)}")
        groups, _ = row_groups(self.root, self.rows, split.by, split.name_pattern)
        held = holdout_mask(groups, split.holdout, split.seed)
        rows = [row for row, is_held in zip(self.rows, held, strict=True) if is_held == (split.side == "holdout")]
        if not rows:
            raise SynthgenError(f"split: the {split.side} side of {self.root} by {split.by} is empty")
        where = f"split by {split.by}, holdout {split.holdout:g}, seed {split.seed}"
        self.description += f" ({split.side} side of a {where})"
        return rows

    def _check_columns(self) -> None:
        if not self.rows:
            raise SynthgenError(f"{self.metadata_path} has no rows")
        self.columns = list(dict.fromkeys(name for row in self.rows for name in row))  # jsonl rows may differ
        if "file_name" not in self.columns:
            listed = ", ".join(self.columns)
            raise SynthgenError(f"{self.metadata_path} has no file_name column 'file_name'; columns: {listed}")
        for role, name in named_columns(self.spec):
            if name not in self.columns:
                raise ColumnError(role, name, self.metadata_path, self.columns)

    def __len__(self) -> int:
        """Rows that will be read (within `limit`), without opening an image: the audit checks its memory and
        progress shows a total before reading. An upper bound: unreadable images are skipped while reading."""
        return len(self.rows[: self.spec.limit])

    def labels(self) -> list[str]:
        """Labels from the metadata (or the folder names) without opening an image."""
        rows = self.rows[: self.spec.limit]
        if self.metadata_path is None:
            return [_folder_label(row["file_name"]) for row in rows]
        column = self.spec.label_column
        return [row.get(column, "") if column else "" for row in rows]

    def probe(self, count: int | None = None) -> tuple[int, list[Skipped]]:
        """Decode `count` rows spread evenly over the folder (within `limit`)."""
        self.skipped = []
        rows = self.rows[: self.spec.limit]
        positions = spread(len(rows), count)
        for position in positions:
            self._row_sample(rows[position])
        return len(positions), list(self.skipped)

    def _row_sample(self, row: dict[str, str]) -> Sample | None:
        file_name = row.get("file_name", "")
        if self.metadata_path is None:  # class-per-folder convention
            key = file_name
            label, text = _folder_label(file_name), ""
        else:
            key = row.get(self.spec.key_column, "") if self.spec.key_column else file_name
            label = row.get(self.spec.label_column, "") if self.spec.label_column else ""
            text = row.get(self.spec.text_column, "") if self.spec.text_column else ""
        data = self.root / file_name if file_name else None
        return self._sample(key, data, text, label, dict(row))

    def _iter_samples(self) -> Iterator[Sample]:
        return take(map(self._row_sample, self.rows), self.spec.limit)

    def fingerprint(self) -> str:
        files = [self.root / row["file_name"] for row in self.rows if row.get("file_name")]
        contents = [self.metadata_path] if self.metadata_path else []
        return fingerprint_of(spec_settings(self.spec, "imagefolder"), self.root, files, contents)


def _folder_label(file_name: str) -> str:
    """Without metadata the immediate parent folder names the class ('' for images at the top level)."""
    parent = Path(file_name).parent
    return "" if parent == Path(".") else parent.name
