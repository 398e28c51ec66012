"""Shard writers: Parquet in the Hugging Face Image layout and WebDataset tars, behind one small interface.

Like img2dataset's sample writers, each format is a class with `write(sample)`, `close()` and `abort()`;
a writer writes into a temp file beside its final path, so a reader never sees half a shard. Which shards
are complete, and the all-or-nothing writing of one shard in every format, are `shard_set.py`'s job.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from synthgen.atomic import atomic_path
from synthgen.provenance import PROVENANCE_FIELDS, PROVENANCE_SCHEMA, provenance_record, sha256_file
from synthgen.sample import Sample

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]+$")
FORMATS = ("parquet", "webdataset")
EXTENSIONS = {"png": "png", "jpeg": "jpg"}
_ROW_GROUP = 100  # small row groups keep image Parquet streamable (Hugging Face viewer advice)

IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
_HF_DTYPE_NAMES = {"float": "float32", "double": "float64"}  # arrow names that differ from `datasets`'


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """The class names in recipe order; a label is stored as its index in this list."""
    names = tuple(classes)
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise ValueError(f"classes must be distinct non-empty names, got {list(names)}")
    return names


def hf_features(classes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Hugging Face `datasets` features of the Parquet shards (also used by the dataset card).

    `label` is a `ClassLabel` (the class index; names in recipe order), as image-classification datasets on
    the hub have it; `label_name` keeps the name readable for pyarrow, pandas or DuckDB, which ignore
    the `datasets` metadata.
    """
    features: dict[str, dict[str, Any]] = {"key": {"dtype": "string", "_type": "Value"}, "image": {"_type": "Image"}}
    for f in PROVENANCE_SCHEMA:
        if f.name == "label":
            features["label"] = {"names": list(check_classes(classes)), "_type": "ClassLabel"}
            features["label_name"] = {"dtype": "string", "_type": "Value"}
        else:
            features[f.name] = {"dtype": _HF_DTYPE_NAMES.get(str(f.type), str(f.type)), "_type": "Value"}
    return features


@functools.lru_cache(maxsize=16)
def _parquet_schema(classes: tuple[str, ...]) -> pa.Schema:
    fields = [pa.field("key", pa.string(), nullable=False), pa.field("image", IMAGE_TYPE)]
    for f in PROVENANCE_SCHEMA:
        if f.name == "label":
            # nullable: `datasets` takes a column's feature from the metadata only when the arrow field equals
            # the feature's own (nullable) field; a non-null `label` would load as a plain int64.
            fields += [pa.field("label", pa.int64()), pa.field("label_name", pa.string(), nullable=False)]
        else:
            fields.append(f)
    metadata = {b"huggingface": json.dumps({"info": {"features": hf_features(classes)}}).encode()}
    return pa.schema(fields, metadata=metadata)


def parquet_schema(classes: Sequence[str]) -> pa.Schema:
    """The Parquet shards' schema: key, image, `label` (class index) + `label_name`, the other provenance."""
    return _parquet_schema(check_classes(classes))


def labelled_row(key: str, record: dict[str, Any], class_index: dict[str, int]) -> dict[str, Any]:
    """A `sample_provenance` record as a shard stores it: `label` the class index, then `label_name`."""
    name = record["label"]
    if name not in class_index:
        raise ValueError(f"sample {key}: label {name!r} is not one of the classes {list(class_index)}")
    row: dict[str, Any] = {}
    for field, value in record.items():
        if field == "label":
            row["label"], row["label_name"] = class_index[name], name
        else:
            row[field] = value
    return row


def open_temp(path: Path) -> IO[bytes]:
    """The one place a shard's bytes reach the disk (tests swap it for a file that fills up, like a full disk)."""
    return open(path, "wb")  # noqa: SIM115 - closed by the writer's `_close_file`


@dataclass(frozen=True)
class ShardFile:
    """One written shard file; `path` is relative to the output folder (posix)."""

    format: str
    path: str
    sha256: str
    num_samples: int
    bytes: int


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


def _encoding_key(fmt: str, quality: int) -> str:
    return "png" if fmt == "png" else f"{fmt}:{int(quality)}"


def pre_encode(sample: Sample, fmt: str, quality: int = 95) -> None:
    """Encode `sample.image` now (a build does it on its finishing thread) and keep the bytes on the sample."""
    sample.encoded[_encoding_key(fmt, quality)] = encode_image(sample.image, fmt, quality)


def encoded_bytes(sample: Sample, fmt: str, quality: int = 95) -> bytes:
    """The sample's image in `fmt`: the bytes `pre_encode` kept, else encoded now (the same function, same bytes)."""
    kept = sample.encoded.get(_encoding_key(check_image_format(fmt), quality))
    return kept if kept is not None else encode_image(sample.image, fmt, quality)


def sample_provenance(sample: Sample) -> dict[str, Any]:
    """The sample's validated provenance; only PROVENANCE_FIELDS leave `metadata` (see provenance.py)."""
    values = {k: v for k, v in sample.metadata.items() if k in PROVENANCE_FIELDS}
    for name, attribute in (("label", sample.label), ("prompt", sample.text)):
        if values.get(name) is None:
            values[name] = attribute
        elif attribute and attribute != values[name]:
            raise ValueError(f"sample {sample.key}: {name} {attribute!r} != metadata {values[name]!r}")
    return provenance_record(**values)


class ShardWriter:
    """Writes into a temp file beside the final path; `finish` + `commit` (= `close`) make it visible.

    The split lets `ShardSet` finish every format before renaming any, so one failing format
    leaves no file of the shard.
    """

    format = folder = suffix = ""  # set by subclasses

    def __init__(
        self,
        out_dir: str | Path,
        shard_index: int,
        image_format: str = "png",
        jpeg_quality: int = 95,
        *,
        classes: Sequence[str],
    ) -> None:
        self.class_index = {name: i for i, name in enumerate(check_classes(classes))}
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
            with self._naming_errors():
                self._open()
        except BaseException:
            self.abort()  # do not leave the temp file behind
            raise

    def write(self, sample: Sample) -> None:
        data = encoded_bytes(sample, self.image_format, self.jpeg_quality)
        self.write_encoded(sample.key, data, sample_provenance(sample))

    def write_encoded(self, key: str, image_bytes: bytes, record: dict[str, Any]) -> None:
        """Write an already encoded image (in `image_format`) with its `sample_provenance` record."""
        if check_key(key) in self._keys:
            raise ValueError(f"duplicate sample key {key!r} in {self.relpath}")
        row = labelled_row(key, record, self.class_index)
        self._keys.add(key)
        with self._naming_errors():
            self._write(key, image_bytes, row)
        self.num_samples += 1

    def finish(self) -> ShardFile:
        """Complete the temp file (not yet visible) and describe it."""
        if self._finished is None:
            with self._naming_errors():
                self._close_file()
            digest, size = sha256_file(self._tmp), self._tmp.stat().st_size
            self._finished = ShardFile(self.format, self.relpath, digest, self.num_samples, size)
        return self._finished

    @contextlib.contextmanager
    def _naming_errors(self) -> Iterator[None]:
        """An OSError from writing the temp file (a full disk) names the shard file, not a file handle."""
        try:
            yield
        except OSError as error:
            if error.filename is not None or error.errno is None:
                raise
            raise OSError(error.errno, error.strerror or os.strerror(error.errno), str(self.path)) from error

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


class ParquetShardWriter(ShardWriter):
    """`data/shard-NNNNN.parquet`: key, image{bytes, path}, label (ClassLabel), label_name, provenance."""

    format, folder, suffix = "parquet", "data", "parquet"

    _writer: pq.ParquetWriter | None = None
    _handle: IO[bytes] | None = None

    def _open(self) -> None:
        self._rows: list[dict[str, Any]] = []
        self.schema = parquet_schema(list(self.class_index))
        self._handle = open_temp(self._tmp)
        self._writer = pq.ParquetWriter(self._handle, self.schema)

    def _write(self, key: str, image_bytes: bytes, record: dict[str, Any]) -> None:
        image = {"bytes": image_bytes, "path": f"{key}.{self.ext}"}
        self._rows.append({"key": key, "image": image, **record})
        if len(self._rows) >= _ROW_GROUP and self._writer is not None:
            self._flush_with(self._writer)

    def _close_file(self) -> None:
        writer, self._writer = self._writer, None
        try:
            if writer is not None:
                try:
                    self._flush_with(writer)
                finally:
                    writer.close()  # also after a failed write: a writer left open would write again when freed
        finally:
            if self._handle is not None:
                handle, self._handle = self._handle, None
                handle.close()

    def _flush_with(self, writer: pq.ParquetWriter) -> None:
        rows, self._rows = self._rows, []
        if rows:
            writer.write_table(pa.Table.from_pylist(rows, schema=self.schema))


class WebDatasetShardWriter(ShardWriter):
    """`webdataset/shard-NNNNN.tar`: `{key}.png|jpg`, `.json` (the Parquet row), `.txt`, `.cls`; byte-reproducible.

    `.cls` is the class index as ASCII digits (the webdataset convention: `.to_tuple("png", "cls")`).
    """

    format, folder, suffix = "webdataset", "webdataset", "tar"
    members = ("json", "txt", "cls")  # after the image, in this order (part of the shard layout, `layout.py`)

    _tar: tarfile.TarFile | None = None
    _handle: IO[bytes] | None = None

    def _open(self) -> None:
        # Open across write() calls; closed by finish()/abort(), so no `with` block fits.
        self._handle = open_temp(self._tmp)
        self._tar = tarfile.open(fileobj=self._handle, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115

    def _add(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)  # fixed metadata: identical samples give a byte-identical tar
        info.size, info.mtime, info.mode = len(data), 0, 0o644
        info.uid, info.gid, info.uname, info.gname = 0, 0, "", ""
        assert self._tar is not None
        self._tar.addfile(info, io.BytesIO(data))

    def _write(self, key: str, image_bytes: bytes, record: dict[str, Any]) -> None:
        meta = json.dumps({"key": key, **record}, ensure_ascii=False, separators=(",", ":"))
        parts = {"json": meta.encode("utf-8"), "txt": record["prompt"].encode("utf-8")}
        parts["cls"] = str(record["label"]).encode("ascii")
        self._add(f"{key}.{self.ext}", image_bytes)
        for member in self.members:
            self._add(f"{key}.{member}", parts[member])

    def _close_file(self) -> None:
        try:
            if self._tar is not None:
                tar, self._tar = self._tar, None
                tar.close()
        finally:
            if self._handle is not None:
                handle, self._handle = self._handle, None
                handle.close()


WRITERS: dict[str, type[ShardWriter]] = {"parquet": ParquetShardWriter, "webdataset": WebDatasetShardWriter}
