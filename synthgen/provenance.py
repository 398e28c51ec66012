"""Content hashes and the per-sample provenance record written beside every synthetic image.

Provenance says how a sample was made (recipe, model, sampler settings, seed, audit verdict,
privacy budget) so a dataset can be reproduced and judged. Privacy: provenance never includes
training pixels, training file names or any header values (e.g. DICOM tags) from the training
data; the audit contributes only the embedder name, the threshold and the nearest-neighbour
*similarity*, never which training item was nearest. Writers only copy the fields listed in
`PROVENANCE_SCHEMA`, so anything else placed in `Sample.metadata` stays out of the outputs.
"""

from __future__ import annotations

import hashlib
import operator
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

_CHUNK = 1 << 20

PROVENANCE_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("label", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("recipe_name", pa.string(), nullable=False),
        pa.field("recipe_sha256", pa.string(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("model_sha256", pa.string(), nullable=False),
        pa.field("scheduler", pa.string(), nullable=False),
        pa.field("steps", pa.int32(), nullable=False),
        pa.field("guidance_scale", pa.float32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("synthgen_version", pa.string(), nullable=False),
        pa.field("sampling_numerics", pa.string()),  # JSON: batch, device, dtype, attention, versions
        pa.field("created_at", pa.string(), nullable=False),
        pa.field("audit_embedder", pa.string()),
        pa.field("audit_threshold", pa.float32()),
        pa.field("audit_similarity", pa.float32()),
        pa.field("audit_flagged", pa.bool_()),
        pa.field("audit_attempt", pa.int32(), nullable=False),
        pa.field("dp_epsilon", pa.float64()),
        pa.field("dp_delta", pa.float64()),
    ]
)
PROVENANCE_FIELDS: list[str] = [f.name for f in PROVENANCE_SCHEMA]

# Fields with a natural default, so callers need not repeat them.
_DEFAULTS: dict[str, Any] = {"audit_attempt": 0}


def utc_now() -> str:
    """Current time as ISO-8601 UTC with a `Z` suffix (second precision: stable and readable)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file, read in chunks so multi-GB shards and checkpoints do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _is_temp(path: Path, root: Path) -> bool:
    """Leftovers of `synthgen.atomic` writes (`.NAME.XXXX.tmp`) and training checkpoints are not content.

    A trained model folder keeps its last checkpoint (`.checkpoints/`) so training can be extended; it is
    not what generates images, and hashing it would cost gigabytes of reading for a `base` model.
    """
    if path.name.startswith(".") and path.name.endswith(".tmp"):
        return True
    return path.relative_to(root).parts[0] == ".checkpoints"


def content_files(folder: str | os.PathLike) -> list[tuple[str, Path]]:
    """A folder's content as sorted (relative posix path, file) pairs: what `sha256_tree` hashes."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    return sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file() and not _is_temp(p, root))


def sha256_tree(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a folder as sorted (relative posix path, file sha256) pairs.

    Folder hashes depend on names and contents only (not mtimes or walk order), so a model folder
    copied elsewhere hashes the same; half-written temp files are skipped.
    """
    root = Path(path)
    if root.is_file():
        return sha256_file(root)
    digest = hashlib.sha256()
    for relative, file in content_files(root):
        digest.update(f"{relative}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def _coerce(field: pa.Field, value: Any) -> Any:
    """Turn numpy scalars and the like into plain JSON-able Python values of the column's type."""
    kind = field.type
    try:
        if pa.types.is_string(kind):
            if not isinstance(value, str):
                raise TypeError(f"expected a string, got {type(value).__name__}")
            return value
        if pa.types.is_boolean(kind):
            if value not in (True, False):  # also accepts numpy.bool_
                raise TypeError(f"expected a bool, got {value!r}")
            return bool(value)
        if pa.types.is_integer(kind):
            return operator.index(value)
        if pa.types.is_floating(kind):
            # str() of a numpy float32 is its shortest repr (0.95, not 0.949999988...).
            return value if isinstance(value, float) else float(str(value))
    except (TypeError, ValueError) as error:
        raise ValueError(f"provenance field '{field.name}': {error}") from None
    raise AssertionError(f"unhandled provenance type {kind}")  # pragma: no cover


def provenance_record(**values: Any) -> dict[str, Any]:
    """A complete provenance dict in `PROVENANCE_FIELDS` order, validated and type-coerced.

    Unknown or missing required names raise ValueError naming them; missing nullable fields
    become None, `audit_attempt` defaults to 0 and `created_at` to now (UTC).
    """
    unknown = [name for name in values if name not in PROVENANCE_FIELDS]
    if unknown:
        raise ValueError(f"unknown provenance field(s): {', '.join(unknown)}")
    values.setdefault("created_at", utc_now())
    record: dict[str, Any] = {}
    missing: list[str] = []
    for field in PROVENANCE_SCHEMA:
        value = values.get(field.name, _DEFAULTS.get(field.name))
        if value is None:
            if not field.nullable:
                missing.append(field.name)
            record[field.name] = None
        else:
            record[field.name] = _coerce(field, value)
    if missing:
        raise ValueError(f"missing provenance field(s): {', '.join(missing)}")
    return record
