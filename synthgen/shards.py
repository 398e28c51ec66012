"""Shard writers (Parquet in the Hugging Face Image layout, WebDataset tars) and resumable shard sets.

A shard is the unit of work and of resumption: `ShardSet.write_shard` writes it in every format
through temp files, renames them into place, then writes a small JSON marker. A shard counts as
done only when its marker exists and every recorded file still has the recorded sha256, so an
interrupted or tampered run redoes exactly the shards that are not provably complete.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tarfile
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from synthgen import __version__
from synthgen.atomic import atomic_path, write_json
from synthgen.provenance import PROVENANCE_FIELDS, PROVENANCE_SCHEMA, provenance_record, sha256_file, utc_now
from synthgen.sample import Sample

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
FORMATS = ("parquet", "webdataset")
MARKER_DIR = Path(".synthgen") / "shards"
EXTENSIONS = {"png": "png", "jpeg": "jpg"}
_ROW_GROUP = 100  # small row groups keep image Parquet streamable (Hugging Face viewer advice)

IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
_HF_DTYPE_NAMES = {"float": "float32", "double": "float64"}  # arrow names that differ from `datasets`'


def hf_features() -> dict[str, dict[str, str]]:
    """Hugging Face `datasets` features of the Parquet shards (also used by the dataset card)."""
    features = {"key": {"dtype": "string", "_type": "Value"}, "image": {"_type": "Image"}}
    for f in PROVENANCE_SCHEMA:
        features[f.name] = {"dtype": _HF_DTYPE_NAMES.get(str(f.type), str(f.type)), "_type": "Value"}
    return features


PARQUET_SCHEMA: pa.Schema = pa.schema(
    [pa.field("key", pa.string(), nullable=False), pa.field("image", IMAGE_TYPE), *PROVENANCE_SCHEMA],
    metadata={b"huggingface": json.dumps({"info": {"features": hf_features()}}).encode()},
)


@dataclass(frozen=True)
class ShardFile:
    """One written shard file; `path` is relative to the output folder (posix)."""

    format: str
    path: str
    sha256: str
    num_samples: int
    bytes: int


@dataclass
class ShardRecord:
    """What the completion marker of one shard holds."""

    index: int
    files: list[ShardFile]
    keys: list[str]
    class_counts: dict[str, int] = field(default_factory=dict)

    @property
    def formats(self) -> set[str]:
        return {f.format for f in self.files}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardRecord:
        files = [ShardFile(**f) for f in data["files"]]
        counts = {str(k): int(v) for k, v in data["class_counts"].items()}
        return cls(int(data["index"]), files, list(data["keys"]), counts)


def check_key(key: str) -> str:
    """Keys become file stems and WebDataset groups on the first dot, so only [A-Za-z0-9_-] is safe."""
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise ValueError(f"invalid sample key {key!r}: use only letters, digits, '_' and '-'")
    return key


def check_image_format(fmt: str) -> str:
    if fmt not in EXTENSIONS:
        raise ValueError(f"unknown image format {fmt!r}: use 'png' or 'jpeg'")
    return fmt


def encode_image(image: Image.Image, fmt: str, quality: int = 95) -> bytes:
    """Encode once per sample for all writers; PNG output is deterministic (no text chunks or times)."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image, got {type(image).__name__}")
    buffer = io.BytesIO()
    if check_image_format(fmt) == "png":
        image.save(buffer, format="PNG", compress_level=6, optimize=False)
    else:
        if image.mode not in ("RGB", "L", "CMYK"):
            image = image.convert("L" if image.mode in ("LA", "I", "I;16", "F") else "RGB")
        image.save(buffer, format="JPEG", quality=int(quality), optimize=False)
    return buffer.getvalue()


def sample_provenance(sample: Sample) -> dict[str, Any]:
    """The sample's validated provenance; only PROVENANCE_FIELDS leave `metadata` (see provenance.py)."""
    values = {k: v for k, v in sample.metadata.items() if k in PROVENANCE_FIELDS}
    for name, attribute in (("label", sample.label), ("prompt", sample.text)):
        if values.get(name) is None:
            values[name] = attribute
        elif attribute and attribute != values[name]:
            raise ValueError(f"sample {sample.key}: {name} {attribute!r} != metadata {values[name]!r}")
    return provenance_record(**values)


class SampleWriter(Protocol):
    """What a pipeline needs from any shard format (img2dataset-style)."""

    def write(self, sample: Sample) -> None: ...
    def close(self) -> ShardFile: ...
    def abort(self) -> None: ...


class _ShardWriter:
    """Writes into a temp file beside the final path; `finish` + `commit` (= `close`) make it visible.

    The split lets `ShardSet` finish every format before renaming any, so one failing format
    leaves no file of the shard.
    """

    format = folder = suffix = ""  # set by subclasses

    def __init__(
        self, out_dir: str | Path, shard_index: int, image_format: str = "png", jpeg_quality: int = 95
    ) -> None:
        self.relpath = f"{self.folder}/shard-{shard_index:05d}.{self.suffix}"
        self.path = Path(out_dir) / self.relpath
        self.image_format = check_image_format(image_format)
        self.ext = EXTENSIONS[image_format]
        self.jpeg_quality = jpeg_quality
        self.num_samples = 0
        self._keys: set[str] = set()
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        self._finished: ShardFile | None = None
        try:
            self._open()
        except BaseException:
            self.abort()  # do not leave the temp file behind
            raise

    def write(self, sample: Sample) -> None:
        data = encode_image(sample.image, self.image_format, self.jpeg_quality)
        self.write_encoded(sample.key, data, sample_provenance(sample))

    def write_encoded(self, key: str, image_bytes: bytes, record: dict[str, Any]) -> None:
        """Write an already encoded image (in `image_format`) with its `sample_provenance` record."""
        if check_key(key) in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in {self.relpath}")
        self._keys.add(key)
        self._write(key, image_bytes, record)
        self.num_samples += 1

    def finish(self) -> ShardFile:
        """Complete the temp file (not yet visible) and describe it."""
        if self._finished is None:
            self._close_file()
            digest, size = sha256_file(self._tmp), self._tmp.stat().st_size
            self._finished = ShardFile(self.format, self.relpath, digest, self.num_samples, size)
        return self._finished

    def commit(self) -> None:
        """Rename the finished temp file onto the final path."""
        if self._finished is None:
            raise RuntimeError("finish() before commit()")
        self._stack.close()

    def close(self) -> ShardFile:
        shard = self.finish()
        self.commit()
        return shard

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._close_file()
        error = RuntimeError("shard aborted")
        self._stack.__exit__(type(error), error, None)  # atomic_path drops the temp file

    def _open(self) -> None:  # pragma: no cover - subclasses open `self._tmp`
        raise NotImplementedError

    def _write(self, key: str, image_bytes: bytes, record: dict[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError

    def _close_file(self) -> None:  # pragma: no cover - must be idempotent
        raise NotImplementedError


class ParquetShardWriter(_ShardWriter):
    """`data/shard-NNNNN.parquet`: key, image{bytes, path}, provenance columns; loads with `datasets`."""

    format, folder, suffix = "parquet", "data", "parquet"

    _writer: pq.ParquetWriter | None = None

    def _open(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self._writer = pq.ParquetWriter(self._tmp, PARQUET_SCHEMA)

    def _write(self, key: str, image_bytes: bytes, record: dict[str, Any]) -> None:
        image = {"bytes": image_bytes, "path": f"{key}.{self.ext}"}
        self._rows.append({"key": key, "image": image, **record})
        if len(self._rows) >= _ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._rows and self._writer is not None:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=PARQUET_SCHEMA))
            self._rows = []

    def _close_file(self) -> None:
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None


class WebDatasetShardWriter(_ShardWriter):
    """`webdataset/shard-NNNNN.tar` with `{key}.png|jpg`, `{key}.json`, `{key}.txt`; byte-reproducible."""

    format, folder, suffix = "webdataset", "webdataset", "tar"

    _tar: tarfile.TarFile | None = None

    def _open(self) -> None:
        # Open across write() calls; closed by finish()/abort(), so no `with` block fits.
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)  # fixed metadata: identical samples give a byte-identical tar
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
        assert self._tar is not None
        self._tar.addfile(info, io.BytesIO(data))

    def _write(self, key: str, image_bytes: bytes, record: dict[str, Any]) -> None:
        meta = json.dumps({"key": key, **record}, ensure_ascii=False, separators=(",", ":"))
        self._add(f"{key}.{self.ext}", image_bytes)
        self._add(f"{key}.json", meta.encode("utf-8"))
        self._add(f"{key}.txt", record["prompt"].encode("utf-8"))

    def _close_file(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None


WRITERS: dict[str, type[_ShardWriter]] = {"parquet": ParquetShardWriter, "webdataset": WebDatasetShardWriter}


def marker_path(out_dir: str | Path, index: int) -> Path:
    return Path(out_dir) / MARKER_DIR / f"shard-{index:05d}.json"


def _valid_record(out_dir: Path, marker: Path) -> ShardRecord | None:
    """The marker's record if it parses and every file it names still matches; else None."""
    try:
        record = ShardRecord.from_dict(json.loads(marker.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for shard in record.files:
        path = out_dir / shard.path
        if not path.is_file() or path.stat().st_size != shard.bytes or sha256_file(path) != shard.sha256:
            return None
    return record


def load_completed(out_dir: str | Path) -> dict[int, ShardRecord]:
    """Shards with a valid marker whose files still hash as recorded, by index."""
    out_dir = Path(out_dir)
    completed: dict[int, ShardRecord] = {}
    for marker in sorted((out_dir / MARKER_DIR).glob("shard-*.json")):
        record = _valid_record(out_dir, marker)
        if record is not None and marker.name == f"shard-{record.index:05d}.json":
            completed[record.index] = record
    return completed


class ShardSet:
    """Writes shards in every requested format, all-or-nothing, and knows which are complete."""

    def __init__(
        self, out_dir: str | Path, formats: Iterable[str] = FORMATS, image_format: str = "png", jpeg_quality: int = 95
    ) -> None:
        self.out_dir = Path(out_dir)
        self.formats = list(dict.fromkeys(formats))
        unknown = [f for f in self.formats if f not in WRITERS]
        if unknown or not self.formats:
            raise ValueError(f"unknown output format(s) {unknown}: use {list(FORMATS)}")
        self.image_format = check_image_format(image_format)
        self.jpeg_quality = jpeg_quality

    def is_complete(self, index: int, record: ShardRecord | None = None) -> bool:
        """Whether shard `index` is on disk in every format; pass a `load_completed` record to skip re-hashing."""
        if record is None:
            record = _valid_record(self.out_dir, marker_path(self.out_dir, index))
        return record is not None and record.index == index and set(self.formats) <= record.formats

    def write_shard(self, index: int, samples: list[Sample]) -> ShardRecord:
        """Write shard `index` in every format; on any error no file of this shard and no marker remain.

        Returns the record its marker holds (files with sha256, keys, class counts).
        """
        marker = marker_path(self.out_dir, index)
        marker.unlink(missing_ok=True)  # the old marker no longer describes what is on disk
        writers: list[_ShardWriter] = []
        try:
            for fmt in self.formats:
                writers.append(WRITERS[fmt](self.out_dir, index, self.image_format, self.jpeg_quality))
            labels: Counter[str] = Counter()
            for sample in samples:
                data = encode_image(sample.image, self.image_format, self.jpeg_quality)
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
            done = ShardRecord(index, files, [s.key for s in samples], dict(sorted(labels.items())))
            write_json(marker, asdict(done))
        except BaseException:
            marker.unlink(missing_ok=True)
            self._remove_files(writers)
            raise
        return done

    @staticmethod
    def _remove_files(writers: list[_ShardWriter]) -> None:
        """Files of a shard that has no marker are stale (an earlier run's); none may survive a failure."""
        for writer in writers:
            writer.path.unlink(missing_ok=True)


def write_manifest(
    out_dir: str | Path,
    records: Iterable[ShardRecord] | Mapping[int, ShardRecord],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write `manifest.json`: every shard file with its sha256, totals, class counts, plus `extra`."""
    out_dir = Path(out_dir)
    items = sorted(records.values() if isinstance(records, Mapping) else records, key=lambda r: r.index)
    shards = [{"index": r.index, **asdict(f)} for r in items for f in r.files]
    classes: Counter[str] = Counter()
    per_format: dict[str, Counter[str]] = {}
    for record in items:
        classes.update(record.class_counts)
        for f in record.files:
            counts = per_format.setdefault(f.format, Counter())
            counts.update(num_shards=1, num_samples=f.num_samples, bytes=f.bytes)
    totals = {
        "num_samples": sum(len(r.keys) for r in items),
        "num_shards": len(items),
        "bytes": sum(t["bytes"] for t in per_format.values()),
        "per_format": {fmt: dict(t) for fmt, t in per_format.items()},
    }
    manifest: dict[str, Any] = {
        "synthgen_version": __version__,
        "created_at": utc_now(),
        "formats": sorted(per_format),
        "shards": shards,
        "totals": totals,
        "class_counts": dict(sorted(classes.items())),
    }
    clash = sorted(set(manifest) & set(extra or {}))
    if clash:
        raise ValueError(f"manifest extra keys clash with reserved keys: {', '.join(clash)}")
    manifest.update(extra or {})
    write_json(out_dir / "manifest.json", manifest)
    return out_dir / "manifest.json"
