"""`synthgen inspect`: re-verify an output folder against its manifest before anyone trusts or shares it.

Checks every shard's sha256, recounts samples per shard and per class from the data itself (only
the Parquet `label_name` column is read; WebDataset tars from their small `.json` members), checks that
the Parquet `ClassLabel` names are the manifest's `classes`, re-hashes an exported `model/` folder, and
reports files in the shard folders that the manifest does not list (they would be loaded by `data/*.parquet`).
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from synthgen.errors import SynthgenError
from synthgen.output.writers import WRITERS
from synthgen.provenance import sha256_file, sha256_tree
from synthgen.sources.parquet import class_label_names

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class ShardRow:
    """One shard file as listed in the manifest and as found on disk."""

    index: int
    format: str
    path: str
    num_samples: int
    found_samples: int | None
    bytes: int
    checksum_ok: bool


@dataclass
class InspectResult:
    out_dir: Path
    manifest: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    shards: list[ShardRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _read_manifest(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "manifest.json"
    if not path.is_file():
        raise SynthgenError(f"{out_dir}: no manifest.json; not a synthgen output folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SynthgenError(f"{path}: unreadable manifest ({error})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise SynthgenError(f"{path}: manifest has no 'shards' list; not a synthgen manifest")
    return manifest


def _parquet_labels(path: Path) -> Counter[str]:
    """Class names from `label_name` (older shards: a string `label` column)."""
    column = "label_name" if "label_name" in pq.read_schema(path).names else "label"
    return Counter(pq.read_table(path, columns=[column]).column(column).to_pylist())


def _tar_labels(path: Path) -> Counter[str]:
    """Class names from the `.json` members; samples without readable JSON count under ''."""
    keys: dict[str, str] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            keys.setdefault(key, "")
            if ext == "json":
                handle = tar.extractfile(member)
                info = json.loads(handle.read()) if handle else {}
                keys[key] = str(info.get("label_name", info.get("label", "")))
    return Counter(keys.values())


_COUNTERS = {"parquet": _parquet_labels, "webdataset": _tar_labels}


def inspect_output(out_dir: str | Path) -> InspectResult:
    """Check an output folder against its manifest; problems are collected, never raised."""
    out_dir = Path(out_dir)
    result = InspectResult(out_dir, _read_manifest(out_dir))
    per_format: dict[str, dict[int, Counter[str]]] = {}
    listed: set[str] = set()
    for entry in result.manifest["shards"]:
        try:
            index, fmt, rel = int(entry["index"]), str(entry["format"]), str(entry["path"])
            expected_sha, expected_n = str(entry["sha256"]), int(entry["num_samples"])
        except (KeyError, TypeError, ValueError):
            result.problems.append(f"manifest: malformed shard entry {entry!r}")
            continue
        listed.add(rel)
        path = out_dir / rel
        row = ShardRow(index, fmt, rel, expected_n, None, int(entry.get("bytes", 0)), False)
        result.shards.append(row)
        if not path.is_file():
            result.problems.append(f"{rel}: file missing")
            continue
        row.checksum_ok = sha256_file(path) == expected_sha
        if not row.checksum_ok:
            result.problems.append(f"{rel}: sha256 does not match the manifest (modified or corrupt)")
        counter = _COUNTERS.get(fmt)
        if counter is None:
            result.problems.append(f"{rel}: unknown format {fmt!r}")
            continue
        try:
            labels = counter(path)
        except Exception as error:  # any decode failure of a damaged file is a finding, not a crash
            result.problems.append(f"{rel}: cannot read ({type(error).__name__}: {error})")
            continue
        row.found_samples = sum(labels.values())
        per_format.setdefault(fmt, {})[index] = labels
        if row.found_samples != expected_n:
            result.problems.append(f"{rel}: {row.found_samples} samples, manifest says {expected_n}")
        if fmt == "parquet":
            _check_class_label(result, path, rel)
    _check_formats_agree(result, per_format)
    _check_model(result)
    _check_unlisted(result, listed)
    return result


def _check_formats_agree(result: InspectResult, per_format: dict[str, dict[int, Counter[str]]]) -> None:
    """Class counts come from Parquet when present; other formats must match it shard by shard."""
    if not per_format:
        return
    reference = "parquet" if "parquet" in per_format else sorted(per_format)[0]
    totals: Counter[str] = Counter()
    for labels in per_format[reference].values():
        totals.update(labels)
    result.class_counts = dict(sorted(totals.items()))
    for fmt, shards in per_format.items():
        for index, labels in shards.items():
            theirs = per_format[reference].get(index)
            if fmt != reference and theirs is not None and sum(labels.values()) != sum(theirs.values()):
                result.problems.append(
                    f"shard {index}: {fmt} has {sum(labels.values())} samples, {reference} has {sum(theirs.values())}"
                )
    expected = result.manifest.get("class_counts")
    if isinstance(expected, dict) and {k: int(v) for k, v in expected.items()} != result.class_counts:
        result.problems.append(f"class counts {result.class_counts} differ from the manifest's {expected}")


def _check_class_label(result: InspectResult, path: Path, rel: str) -> None:
    """The `label` ClassLabel names must be the manifest's `classes`, or indices would mean other classes."""
    classes = result.manifest.get("classes")
    if not isinstance(classes, list):
        return  # an output from before labels were class indices
    names = class_label_names(pq.read_schema(path), "label")
    if names != classes:
        result.problems.append(f"{rel}: label ClassLabel names {names} differ from the manifest's classes {classes}")


def _check_model(result: InspectResult) -> None:
    """An exported model folder must still hash as recorded (it is what `--model` and the card point at)."""
    model = result.manifest.get("model")
    exported = model.get("exported_path") if isinstance(model, dict) else None
    if not exported:
        return
    folder = result.out_dir / str(exported)
    if not (folder / "model_index.json").is_file():
        result.problems.append(f"{exported}: exported model folder missing or incomplete")
    elif sha256_tree(folder) != model.get("sha256"):
        result.problems.append(f"{exported}: model sha256 does not match the manifest (modified or corrupt)")


def _check_unlisted(result: InspectResult, listed: set[str]) -> None:
    for writer in WRITERS.values():
        folder = result.out_dir / writer.folder
        for path in sorted(folder.glob(f"*.{writer.suffix}")) if folder.is_dir() else []:
            rel = path.relative_to(result.out_dir).as_posix()
            if rel not in listed:
                result.problems.append(f"{rel}: not listed in manifest.json")


def render_inspect(result: InspectResult, console: Console) -> None:
    """Print per-class counts, per-shard checksums and the problems as rich tables."""
    from rich.markup import escape
    from rich.table import Table

    total = sum(result.class_counts.values()) or 1
    classes = Table(title="Samples per class")
    classes.add_column("class")
    classes.add_column("samples", justify="right")
    classes.add_column("share", justify="right")
    for label, count in result.class_counts.items():
        classes.add_row(escape(label), str(count), f"{100 * count / total:.1f}%")
    console.print(classes)

    shards = Table(title="Shards")
    for name, justify in [
        ("index", "right"),
        ("format", "left"),
        ("path", "left"),
        ("samples", "right"),
        ("bytes", "right"),
        ("sha256", "center"),
    ]:
        shards.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in result.shards:
        found = "?" if row.found_samples is None else str(row.found_samples)
        samples = found if found == str(row.num_samples) else f"{found} (manifest {row.num_samples})"
        mark = "[green]✓[/]" if row.checksum_ok else "[red]✗[/]"
        shards.add_row(str(row.index), escape(row.format), escape(row.path), samples, f"{row.bytes:,}", mark)
    console.print(shards)

    if result.ok:
        console.print(f"[green]OK[/]: {len(result.shards)} shard files match manifest.json")
    else:
        console.print(f"[red]{len(result.problems)} problem(s)[/]:")
        for problem in result.problems:  # one line each, unwrapped, so they can be grepped
            console.print(f"  [red]✗[/] {escape(problem)}", highlight=False, soft_wrap=True)
        damaged = sorted({row.index for row in result.shards if not row.checksum_ok})
        if damaged:
            console.print(
                f"shard(s) {', '.join(map(str, damaged))} differ from what was built: run the same "
                "`synthgen build` again (same recipe and --out) to redo exactly those",
                highlight=False,
                soft_wrap=True,
            )
