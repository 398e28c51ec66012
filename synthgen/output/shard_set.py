"""Resumable shard sets: shard `i` written in every format, all or nothing, and proof of which are complete.

`ShardSet.write_shard` writes a shard through every format's writer (temp files), renames them into place,
then writes a small JSON marker (`write_files` then `write_marker`: a Ray worker writes the files, the driver the
marker). A shard counts as done only when its marker exists and every recorded
file still has the recorded sha256, so an interrupted or tampered run redoes exactly the shards that are
not provably complete.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from synthgen.atomic import DISK_FULL, write_json
from synthgen.errors import SynthgenError
from synthgen.output.folder import OutputFolder
from synthgen.output.layout import shard_layout
from synthgen.output.writers import (
    FORMATS,
    WRITERS,
    ShardFile,
    ShardWriter,
    check_classes,
    check_image_format,
    encoded_bytes,
    sample_provenance,
)
from synthgen.provenance import sha256_file
from synthgen.sample import Sample


@dataclass
class ShardRecord:
    """What the completion marker of one shard holds."""

    index: int
    files: list[ShardFile]
    keys: list[str]
    class_counts: dict[str, int] = field(default_factory=dict)
    layout: dict[str, Any] | None = None  # what the files were written with (`layout.py`); None: older markers

    @property
    def formats(self) -> set[str]:
        return {f.format for f in self.files}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardRecord:
        files = [ShardFile(**f) for f in data["files"]]
        counts = {str(k): int(v) for k, v in data["class_counts"].items()}
        layout = data.get("layout")
        return cls(int(data["index"]), files, list(data["keys"]), counts, layout if isinstance(layout, dict) else None)


def _valid_record(out_dir: Path, marker: Path) -> ShardRecord | None:
    """The marker's record if it parses and every file it names still matches; else None."""
    try:
        record = ShardRecord.from_dict(json.loads(marker.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if files_match(out_dir, record) else None


def files_match(out_dir: Path, record: ShardRecord) -> bool:
    """Whether every file `record` names is on disk with the recorded size and sha256."""
    for shard in record.files:
        path = out_dir / shard.path
        if not path.is_file() or path.stat().st_size != shard.bytes or sha256_file(path) != shard.sha256:
            return False
    return True


def load_completed(out_dir: str | Path) -> dict[int, ShardRecord]:
    """Shards with a valid marker whose files still hash as recorded, by index."""
    out_dir = Path(out_dir)
    completed: dict[int, ShardRecord] = {}
    for marker in OutputFolder(out_dir).markers():
        record = _valid_record(out_dir, marker)
        if record is not None and marker.name == f"shard-{record.index:05d}.json":
            completed[record.index] = record
    return completed


class ShardSet:
    """Writes shards in every requested format, all-or-nothing, and knows which are complete."""

    def __init__(
        self,
        out_dir: str | Path,
        formats: Iterable[str] = FORMATS,
        image_format: str = "png",
        jpeg_quality: int = 95,
        *,
        classes: Sequence[str],
    ) -> None:
        """`classes`: the recipe's class names in order; a sample's label is stored as its index there."""
        self.out_dir = Path(out_dir)
        self.classes = check_classes(classes)
        self.formats = list(dict.fromkeys(formats))
        unknown = [f for f in self.formats if f not in WRITERS]
        if unknown or not self.formats:
            raise ValueError(f"unknown output format(s) {unknown}: use {list(FORMATS)}")
        self.image_format = check_image_format(image_format)
        self.jpeg_quality = jpeg_quality
        self.layout = shard_layout(self.image_format, self.classes)  # recorded in every marker

    def is_complete(self, index: int, record: ShardRecord | None = None) -> bool:
        """Whether shard `index` is on disk in every format; pass a `load_completed` record to skip re-hashing."""
        if record is None:
            record = _valid_record(self.out_dir, OutputFolder(self.out_dir).marker(index))
        return record is not None and record.index == index and set(self.formats) <= record.formats

    def write_shard(self, index: int, samples: list[Sample]) -> ShardRecord:
        """Write shard `index` in every format, then its marker; on any error no file of this shard and no
        marker remain. Returns the record its marker holds (files with sha256, keys, class counts).

        The same as `write_files` (a Ray worker's half) followed by `write_marker` (the driver's half).
        """
        OutputFolder(self.out_dir).marker(index).unlink(missing_ok=True)  # it no longer describes what is on disk
        record = self.write_files(index, samples)
        self.write_marker(record)
        return record

    def write_files(self, index: int, samples: list[Sample]) -> ShardRecord:
        """Write shard `index`'s files (all formats, renamed into place together) and return their record; no
        marker: until one is written the shard counts as not done. On any error none of its files remain.

        A full disk is a one-line SynthgenError naming the file and the folder (a rerun, once there is space,
        resumes)."""
        try:
            return self._write_files(index, samples)
        except OSError as error:
            if error.errno not in DISK_FULL:
                raise
            raise self._disk_full(error, index) from None

    def write_marker(self, record: ShardRecord) -> None:
        """Write the marker that makes shard `record.index` complete (last, after its files); if that fails,
        the shard's files go too, so no file without a marker is left from this run."""
        try:
            write_json(OutputFolder(self.out_dir).marker(record.index), asdict(record))
        except BaseException as error:
            OutputFolder(self.out_dir).marker(record.index).unlink(missing_ok=True)
            for file in record.files:
                (self.out_dir / file.path).unlink(missing_ok=True)
            if isinstance(error, OSError) and error.errno in DISK_FULL:
                raise self._disk_full(error, record.index) from None
            raise

    def _disk_full(self, error: OSError, index: int) -> SynthgenError:
        """A full disk as one line naming the file and the folder."""
        files = [f"{WRITERS[fmt].folder}/shard-{index:05d}.{WRITERS[fmt].suffix}" for fmt in self.formats]
        where = os.path.relpath(error.filename, self.out_dir) if error.filename else " and ".join(files)
        return SynthgenError(
            f"output.dir: no space left on device writing {where} (shard {index}) in {self.out_dir}; "
            "free some space and run the same command again: finished shards are kept"
        )

    def _write_files(self, index: int, samples: list[Sample]) -> ShardRecord:
        writers: list[ShardWriter] = []
        try:
            for fmt in self.formats:
                writers.append(
                    WRITERS[fmt](self.out_dir, index, self.image_format, self.jpeg_quality, classes=self.classes)
                )
            labels: Counter[str] = Counter()
            for sample in samples:
                data = encoded_bytes(sample, self.image_format, self.jpeg_quality)
                record = sample_provenance(sample)
                labels[record["label"]] += 1
                for writer in writers:
                    writer.write_encoded(sample.key, data, record)
            files = [writer.finish() for writer in writers]
        except BaseException:
            for writer in writers:
                writer.abort()
            self._remove_files(writers)
            raise
        try:
            for writer in writers:
                writer.commit()
        except BaseException:
            self._remove_files(writers)
            raise
        return ShardRecord(index, files, [s.key for s in samples], dict(sorted(labels.items())), self.layout)

    @staticmethod
    def _remove_files(writers: list[ShardWriter]) -> None:
        """Files of a shard that has no marker are stale (an earlier run's); none may survive a failure."""
        for writer in writers:
            writer.path.unlink(missing_ok=True)
