"""Hashing helpers and the provenance record."""

from __future__ import annotations

import hashlib
from datetime import datetime

import numpy as np
import pyarrow as pa
import pytest

from synthgen.provenance import (
    PROVENANCE_FIELDS,
    PROVENANCE_SCHEMA,
    provenance_record,
    sha256_bytes,
    sha256_file,
    sha256_tree,
)

REQUIRED = dict(
    label="polyp",
    prompt="a polyp",
    seed=7,
    recipe_name="demo",
    recipe_sha256="r" * 64,
    model_id="tiny",
    model_sha256="m" * 64,
    scheduler="ddim",
    steps=30,
    guidance_scale=3.5,
    width=64,
    height=64,
    synthgen_version="0.1.0",
)


def test_schema_order_and_types() -> None:
    assert PROVENANCE_FIELDS[:4] == ["label", "prompt", "seed", "recipe_name"]
    assert PROVENANCE_FIELDS[-3:] == ["audit_attempt", "dp_epsilon", "dp_delta"]
    assert len(PROVENANCE_FIELDS) == 22
    types = {f.name: f.type for f in PROVENANCE_SCHEMA}
    assert types["seed"] == pa.int64() and types["steps"] == pa.int32()
    assert types["guidance_scale"] == pa.float32() and types["dp_epsilon"] == pa.float64()
    assert types["audit_flagged"] == pa.bool_()
    nullable = {f.name for f in PROVENANCE_SCHEMA if f.nullable}
    assert nullable == {
        "sampling_numerics",
        "audit_embedder",
        "audit_threshold",
        "audit_similarity",
        "audit_flagged",
        "dp_epsilon",
        "dp_delta",
    }


def test_record_fills_defaults_and_coerces() -> None:
    record = provenance_record(**REQUIRED, audit_similarity=np.float32(0.95), audit_flagged=np.bool_(True))
    assert list(record) == PROVENANCE_FIELDS
    assert record["dp_epsilon"] is None and record["audit_embedder"] is None
    assert record["audit_attempt"] == 0
    assert record["audit_similarity"] == 0.95 and type(record["audit_similarity"]) is float
    assert record["audit_flagged"] is True
    created = datetime.fromisoformat(record["created_at"].replace("Z", "+00:00"))
    assert created.utcoffset() is not None and created.utcoffset().total_seconds() == 0
    # A plain-typed record fits the Arrow schema as is.
    assert pa.Table.from_pylist([record], schema=PROVENANCE_SCHEMA).num_rows == 1


def test_record_rejects_unknown_missing_and_wrong_types() -> None:
    with pytest.raises(ValueError, match="training_file"):
        provenance_record(**REQUIRED, training_file="patient1.png")
    with pytest.raises(ValueError, match="model_sha256"):
        provenance_record(**{k: v for k, v in REQUIRED.items() if k != "model_sha256"})
    with pytest.raises(ValueError, match="steps"):
        provenance_record(**{**REQUIRED, "steps": 2.5})
    with pytest.raises(ValueError, match="label"):
        provenance_record(**{**REQUIRED, "label": 3})


def test_hashes(tmp_path) -> None:
    data = b"abc" * 1_000_000
    (tmp_path / "a.bin").write_bytes(data)
    assert sha256_bytes(data) == hashlib.sha256(data).hexdigest() == sha256_file(tmp_path / "a.bin")
    assert sha256_tree(tmp_path / "a.bin") == sha256_file(tmp_path / "a.bin")


def test_tree_hash_ignores_temp_files_and_location(tmp_path) -> None:
    for root in (tmp_path / "one", tmp_path / "two"):
        (root / "sub").mkdir(parents=True)
        (root / "config.json").write_text("{}")
        (root / "sub" / "weights.bin").write_bytes(b"\x00\x01")
    (tmp_path / "two" / "sub" / ".weights.bin.abcd.tmp").write_bytes(b"partial")
    first = sha256_tree(tmp_path / "one")
    assert first == sha256_tree(tmp_path / "two")
    (tmp_path / "two" / "sub" / "weights.bin").rename(tmp_path / "two" / "sub" / "other.bin")
    assert sha256_tree(tmp_path / "two") != first  # names matter, not only contents
    with pytest.raises(FileNotFoundError):
        sha256_tree(tmp_path / "missing")
