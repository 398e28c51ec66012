"""`open_source`: turn a recipe `data:` block or a CLI path into a reader, detecting the format if needed."""

from __future__ import annotations

import os
from pathlib import Path

from synthgen.errors import SynthgenError
from synthgen.runtime import tidy_path
from synthgen.sources.base import IMAGE_EXTENSIONS, ColumnError, Skipped, Source, existing_path
from synthgen.sources.demo import DemoSource
from synthgen.sources.dicom import DicomSource, is_dicom
from synthgen.sources.imagefolder import METADATA_FILES, ImageFolderSource, list_images
from synthgen.sources.parquet import ParquetSource, SynthgenSource
from synthgen.sources.spec import DICOM_ONLY, SourceSpec, SourceType
from synthgen.sources.webdataset import WebDatasetSource

READERS = {
    "imagefolder": ImageFolderSource,
    "parquet": ParquetSource,
    "webdataset": WebDatasetSource,
    "synthgen": SynthgenSource,
    "dicom": DicomSource,
}
DICOM_PROBE = 50  # files looked at when telling a DICOM folder from an image folder


def open_source(spec: SourceSpec | str | os.PathLike, base_dir: Path | None = None) -> Source:
    """A reader for `spec`; a str or Path is a path, the string `demo` the built-in phantoms.

    Relative paths resolve against `base_dir` (the recipe's folder), else the working directory.
    """
    if isinstance(spec, os.PathLike):
        spec = SourceSpec(path=os.fspath(spec))
    elif isinstance(spec, str):
        spec = SourceSpec(type="demo") if spec == "demo" else SourceSpec(path=spec)
    if spec.type == "demo":
        return DemoSource(spec)
    if not spec.path:
        raise SynthgenError(f"data source of type {spec.type or 'auto'} needs a `path`")
    path = Path(spec.path).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    path = tidy_path(path)  # messages and descriptions show `data`, not `work/../data`
    kind = spec.type or detect_type(path)
    if spec.split is not None and kind != "imagefolder":
        raise SynthgenError(f"split: only imagefolder sources can be split while reading ({path} is {kind})")
    for name in DICOM_ONLY:
        if kind != "dicom" and name in spec.model_fields_set:
            raise SynthgenError(f"{name}: only dicom sources have it ({path} is {kind})")
    return READERS[kind](spec, path)


def open_readable(spec: SourceSpec | str, base_dir: Path | None, field: str) -> Source:
    """`open_source`, then prove at least one image decodes; errors are prefixed with the recipe `field`.

    A missing column names its spec field (`model.train.data.label_column: ...`).
    """
    try:
        source = open_source(spec, base_dir)
    except ColumnError as error:
        raise SynthgenError(f"{field}.{error}") from None
    except SynthgenError as error:
        raise SynthgenError(f"{field}: {error}") from None
    if next(iter(source), None) is None:
        reasons = f" ({len(source.skipped)} unreadable: {unreadable_note(source.skipped)})" if source.skipped else ""
        raise SynthgenError(f"{field}: no readable images in {source.description}{reasons}")
    return source


def unreadable_note(skipped: list[Skipped], shown: int = 3) -> str:
    """`key: reason; key: reason; and N more`: the first `shown` unreadable items, for one-line messages."""
    listed = "; ".join(f"{item.key}: {item.reason}" for item in skipped[:shown])
    return listed + (f"; and {len(skipped) - shown} more" if len(skipped) > shown else "")


def detect_type(path: Path) -> SourceType:
    """Guess the reader from what is at `path`, in order of the most specific layout."""
    path = existing_path(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".parquet", ".tar"):
            return "parquet" if suffix == ".parquet" else "webdataset"
        if is_dicom(path):
            return "dicom"
    elif (path / "manifest.json").is_file():
        return "synthgen"
    elif _dicom_folder(path):
        return "dicom"
    elif any((path / name).is_file() for name in METADATA_FILES):
        return "imagefolder"
    elif _contains(path, "*.parquet"):
        return "parquet"
    elif _contains(path, "*.tar"):
        return "webdataset"
    elif list_images(path):
        return "imagefolder"
    raise SynthgenError(f"cannot tell what kind of data {path} is; set `type`")


def _dicom_folder(folder: Path) -> bool:
    """DICOM files and no image files among the first `DICOM_PROBE` files below `folder` (found by content)."""
    seen = dicom = 0
    for path in folder.rglob("*"):
        if seen >= DICOM_PROBE:
            break
        if path.name in METADATA_FILES or any(p.startswith(".") for p in path.relative_to(folder).parts):
            continue
        if not path.is_file():
            continue
        seen += 1
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            return False
        dicom += is_dicom(path)
    return dicom > 0


def _contains(folder: Path, pattern: str) -> bool:
    return any(p.is_file() for p in folder.rglob(pattern))
