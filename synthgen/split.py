"""`synthgen split`: cut an imagefolder into train and holdout folders with no patient or sequence on both sides.

The holdout metrics, membership inference and any evaluation need real images the model never saw, and an image
of the same patient (or the next frame of the same video) is not "never seen". So whole groups move: a metadata
column (`--by patient_id`; an empty value makes the image its own group) or `--by sequence` (video frames inferred
from file-name numbering, `synthgen.sources.groups`). The split is deterministic: each group's side follows from
sha256(seed, group), not from the order the rows are read in.

DIR/train and DIR/holdout are Hugging Face imagefolders (the original metadata rows and columns, the original
relative paths) whose images are hard links to the originals, symlinks where hard links are impossible (another
file system), copies only when neither works; DIR/split.json records the column, seed and counts. DIR is built
beside its final place and renamed into it, so an interrupted split leaves nothing half-written.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthgen.atomic import write_json
from synthgen.errors import SynthgenError
from synthgen.runtime import tidy_path
from synthgen.sources.groups import SEQUENCE, holdout_mask, row_groups
from synthgen.sources.imagefolder import find_metadata, list_images, read_metadata

SIDES = ("train", "holdout")
SPLIT_FILE = "split.json"


@dataclass
class SplitResult:
    """What `split_imagefolder` wrote: split.json's contents and how the images got there."""

    out_dir: Path
    record: dict[str, Any]
    links: Counter = field(default_factory=Counter)  # hardlink / symlink / copy -> count
    copy_reason: str = ""

    def lines(self) -> list[str]:
        """What the command line prints: each side's images, groups and labels, ungrouped images, links."""
        record, lines = self.record, []
        for side in SIDES:
            labels = ", ".join(f"{name or '(none)'} {n}" for name, n in record["labels"][side].items())
            lines.append(
                f"{side}: {record['images'][side]} images, {record['groups'][side]} groups"
                + (f" ({labels})" if labels else "")
                + f" -> {self.out_dir / side}"
            )
        if record.get("images_without_group"):
            lines.append(f"{record['images_without_group']} images have no {record['by']}: each is its own group")
        links = ", ".join(f"{n} {kind}s" for kind, n in self.links.items())
        lines.append(f"images placed as {links}; record: {self.out_dir / SPLIT_FILE}")
        return lines


@dataclass
class _Table:
    """The source's rows: metadata (raw lines for jsonl) or, without metadata, one row per image file."""

    root: Path
    metadata: Path | None
    rows: list[dict[str, str]]
    columns: list[str]
    lines: list[str] | None = None  # jsonl: each row's original line, written back unchanged


def split_imagefolder(
    src: Path, by: str, holdout: float, out_dir: Path, seed: int = 0, name_pattern: str | None = None
) -> SplitResult:
    """Split the imagefolder `src` by `by` (a column or `sequence`) into `out_dir`/train and /holdout.

    `name_pattern`: a regex whose first capture group in the file name is the group where the column is empty.
    """
    if not 0.0 < holdout < 1.0:
        raise SynthgenError(f"--holdout: must be between 0 and 1 (a share of the images), got {holdout:g}")
    out_dir = tidy_path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SynthgenError(f"--out: {out_dir} is not an empty folder; choose a new or empty one")
    table = _read_table(tidy_path(src))
    groups, ungrouped = _groups(table, by, name_pattern)
    held = holdout_mask(groups, holdout, seed)
    sides = {"train": np.flatnonzero(~held), "holdout": np.flatnonzero(held)}
    for side, rows in sides.items():
        if not len(rows):
            raise SynthgenError(
                f"--holdout: {holdout:g} of {len(groups)} images leaves the {side} side empty when whole groups "
                f"({len(set(groups))} by {by}) stay together; change --holdout or --by"
            )
    label = "label" if "label" in table.columns else None
    record: dict[str, Any] = {
        "source": str(table.root),
        "by": by,
        "seed": seed,
        "holdout": holdout,
        "name_pattern": name_pattern,
        "images": {side: len(rows) for side, rows in sides.items()},
        "groups": {side: len({groups[i] for i in rows}) for side, rows in sides.items()},
        "labels": {side: _label_counts(table, rows, label) for side, rows in sides.items()},
    }
    if by != SEQUENCE:
        record["images_without_group"] = ungrouped
    result = SplitResult(out_dir, record)
    _write(table, sides, result)
    return result


def _read_table(src: Path) -> _Table:
    if not src.is_dir():
        raise SynthgenError(f"SRC: {src} is not a folder (synthgen split reads an imagefolder)")
    metadata = find_metadata(src)
    if metadata is None:
        rows = [{"file_name": p.relative_to(src).as_posix()} for p in list_images(src)]
        if not rows:
            raise SynthgenError(f"SRC: no metadata.csv/metadata.jsonl and no image files in {src}")
        return _Table(src, None, rows, ["file_name"])
    rows = read_metadata(metadata)
    if not rows:
        raise SynthgenError(f"SRC: {metadata} has no rows")
    if metadata.suffix == ".csv":
        with metadata.open(newline="", encoding="utf-8-sig") as handle:
            columns = list(csv.DictReader(handle).fieldnames or [])
        lines = None
    else:
        columns = list(dict.fromkeys(name for row in rows for name in row))
        lines = [line for line in metadata.read_text(encoding="utf-8").splitlines() if line.strip()]
    if "file_name" not in columns:
        raise SynthgenError(f"SRC: {metadata} has no file_name column; columns: {', '.join(columns)}")
    return _Table(src, metadata, rows, columns, lines)


def _groups(table: _Table, by: str, name_pattern: str | None = None) -> tuple[list[str], int]:
    """The group of every row, and how many rows had an empty value (each then its own group)."""
    if by != SEQUENCE and by not in table.columns:
        where = table.metadata or f"{table.root} (no metadata file)"
        raise SynthgenError(f"--by: no column {by!r} in {where}; columns: {', '.join(table.columns)}, or sequence")
    if name_pattern:
        try:
            re.compile(name_pattern)
        except re.error as error:
            raise SynthgenError(f"--name-pattern: not a valid regular expression: {error}") from None
    return row_groups(table.root, table.rows, by, name_pattern)


def _label_counts(table: _Table, rows: np.ndarray, label: str | None) -> dict[str, int]:
    """Images per label on one side: the label column, else the class folder (imagefolder without metadata)."""
    if label is not None:
        names = [table.rows[i].get(label, "") for i in rows]
    elif table.metadata is None:
        names = [Path(table.rows[i]["file_name"]).parent.name for i in rows]
    else:
        return {}
    return dict(sorted(Counter(names).items()))


def _write(table: _Table, sides: dict[str, np.ndarray], result: SplitResult) -> None:
    """Build the split in a temporary folder beside DIR, then rename it into place (all or nothing)."""
    out_dir = result.out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; a split is meant to be shared like any folder
    try:
        for side, rows in sides.items():
            folder = staging / side
            folder.mkdir()
            for i in rows:
                name = table.rows[i]["file_name"]
                _place(table.root / name, folder / name, result)
            if table.metadata is not None:
                _write_metadata(table, rows, folder / table.metadata.name)
        result.record["links"] = dict(result.links)
        write_json(staging / SPLIT_FILE, result.record)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked); the rename needs the name free
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _place(source: Path, target: Path, result: SplitResult) -> None:
    """A hard link to `source`, else a symlink, else a copy (counted, with the first reason linking failed)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():  # the same file listed twice
        return
    if not source.is_file():
        raise SynthgenError(f"SRC: {source} is listed in the metadata but is not a file")
    try:
        os.link(source, target)
        result.links["hardlink"] += 1
        return
    except OSError as error:
        reason = error.strerror or str(error)
    try:
        os.symlink(source.resolve(), target)
        result.links["symlink"] += 1
        return
    except OSError as error:
        result.copy_reason = result.copy_reason or f"{reason}; symlink: {error.strerror or error}"
    shutil.copy2(source, target)
    result.links["copy"] += 1


def _write_metadata(table: _Table, rows: np.ndarray, path: Path) -> None:
    """The side's rows in the source's own format, columns and order (jsonl lines unchanged)."""
    if table.lines is not None:  # read_metadata keeps one row per non-blank line, in order
        path.write_text("".join(table.lines[i] + "\n" for i in sorted(rows)), encoding="utf-8")
        return
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=table.columns, extrasaction="ignore")
        writer.writeheader()
        for i in sorted(rows):
            writer.writerow(table.rows[i])
