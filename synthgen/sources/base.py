"""The reader interface: every source yields `Sample`s and counts what it could not read.

Shared helpers live here so every reader decodes, skips and fingerprints the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from synthgen.errors import SynthgenError
from synthgen.sample import Sample
from synthgen.sources.content_hashes import file_hashes
from synthgen.sources.decode import Unreadable, decode_image
from synthgen.sources.spec import DICOM_ONLY, SourceSpec

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


@dataclass
class Skipped:
    """An item a reader could not decode (corrupt, truncated, missing): reported, never fatal."""

    key: str
    reason: str


@dataclass
class Source:
    """Base class of readers. Subclasses implement `_iter_samples`; `skipped` fills while iterating."""

    description: str
    skipped: list[Skipped] = field(default_factory=list)

    def __iter__(self) -> Iterator[Sample]:
        self.skipped = []
        yield from self._iter_samples()

    def _iter_samples(self) -> Iterator[Sample]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A sha256 that changes when the data changes (used to key caches and provenance)."""
        raise NotImplementedError

    def labels(self) -> list[str]:
        """Every item's label in reading order, within `limit` ('' when unlabelled or the data has no labels).

        This default decodes everything; readers override it to read only their metadata.
        """
        return [sample.label for sample in self]

    def probe(self, count: int | None = None) -> tuple[int, list[Skipped]]:
        """Decode `count` items (None: all) and return (items tried, the unreadable ones among them).

        This default tries the first `count`; readers that can seek override it to spread them over the data.
        """
        good = 0
        for _ in self:
            good += 1
            if count is not None and good + len(self.skipped) >= count:
                break
        return good + len(self.skipped), list(self.skipped)

    def _skip(self, key: str, reason: str) -> None:
        self.skipped.append(Skipped(key, _one_line(reason)))

    def _load(self, key: str, data: bytes | Path | None) -> Image.Image | None:
        """Decode one image, or record why not and return None: one bad file never stops a run."""
        if data is None:
            self._skip(key, "no image data")
            return None
        try:
            return decode_image(data)
        except Unreadable as error:  # refused on purpose: empty, not a file, symlink loop, decompression bomb
            self._skip(key, str(error))
        except FileNotFoundError:
            self._skip(key, "file not found")
        except UnidentifiedImageError:
            self._skip(key, "cannot decode image: not a recognised image format")
        except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
            self._skip(key, f"cannot decode image: {type(error).__name__}: {error}")
        return None

    def _sample(
        self, key: str, data: bytes | Path | None, text: str, label: str, metadata: dict[str, Any]
    ) -> Sample | None:
        image = self._load(key, data)
        return None if image is None else Sample(key, image, text, label, metadata)


class ColumnError(SynthgenError):
    """A column the spec names explicitly that the data lacks; `role` is the spec field (e.g. label_column)."""

    def __init__(self, role: str, name: str, where: object, columns: Iterable[str], why: str | None = None) -> None:
        self.role = role
        why = why or f"(columns: {', '.join(columns) or 'none'})"
        super().__init__(f"{role}: {name!r} is not a column of {where} {why}")


def named_columns(spec: SourceSpec) -> list[tuple[str, str]]:
    """(role, column) of the optional columns the user named in the spec; a default that is absent is no error."""
    roles = ("label_column", "text_column", "key_column")
    return [(role, getattr(spec, role)) for role in roles if role in spec.model_fields_set and getattr(spec, role)]


def spread(total: int, count: int | None) -> list[int]:
    """`count` positions spread evenly over `range(total)`, first and last included (all when count is None)."""
    if count is None or count >= total:
        return list(range(total))
    if count <= 1:
        return [0][:count]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def take(samples: Iterable[Sample | None], limit: int | None) -> Iterator[Sample]:
    """Drop failed reads (None) and stop after `limit` good samples, without decoding further."""
    if limit is not None and limit <= 0:
        return
    count = 0
    for sample in samples:
        if sample is not None:
            yield sample
            count += 1
            if limit is not None and count >= limit:
                return


def meta_str(value: Any) -> str:
    """Metadata values as strings (one rule for every reader): None -> '', containers -> JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def fingerprint_of(settings: dict[str, Any], root: Path, files: Iterable[Path], contents: Iterable[Path] = ()) -> str:
    """sha256 of reader settings, the bytes of small `contents` files, and the path and sha256 of each of `files`.

    By content, not timestamps: copied or re-mounted data keeps its fingerprint (and its cached models); each
    file's hash is remembered by stat (`content_hashes`), so only new or rewritten files are read again.
    """
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in contents:
        digest.update(f"\0content:{_relative(path, root)}\0".encode())
        digest.update(path.read_bytes())
    files = list(files)
    for path, content in zip(files, file_hashes(root, files), strict=True):
        digest.update(f"\0{_relative(path, root)}:{content}".encode())
    return digest.hexdigest()


def spec_settings(spec: SourceSpec, reader: str) -> dict[str, Any]:
    """The spec fields that change what a reader yields (not `path`: moved data keeps its identity)."""
    demo_only = {"path", "type", "classes", "per_class", "resolution", "seed"}
    unset = {"split"} if spec.split is None else set()  # added later: absent, it keeps earlier fingerprints
    unset |= {name for name in DICOM_ONLY if name not in spec.model_fields_set}  # likewise
    return {"reader": reader, **spec.model_dump(exclude=demo_only | unset)}


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:300]


def shard_files(path: Path, pattern: str) -> list[Path]:
    """The file itself, or the files matching `pattern` anywhere below the folder, sorted (shard order)."""
    return [path] if path.is_file() else sorted(p for p in path.rglob(pattern) if p.is_file())


def existing_path(path: str | Path) -> Path:
    """The path, or a one-line SynthgenError naming it when it does not exist."""
    path = Path(path)
    if not path.exists():
        raise SynthgenError(f"data path not found: {path}")
    return path
