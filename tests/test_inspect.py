"""Inspecting a finished output folder, and its dataset card."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from rich.console import Console
from test_shards import CLASSES, make_samples

from synthgen.errors import SynthgenError
from synthgen.output.dataset_card import size_category, write_dataset_card
from synthgen.output.manifest import write_manifest
from synthgen.output.shard_set import ShardSet, load_completed
from synthgen.output.verify import inspect_output, render_inspect


@pytest.fixture
def output(tmp_path):
    """A finished two-shard output folder in both formats (labels: polyp 4, normal 3)."""
    shard_set = ShardSet(tmp_path, classes=CLASSES)
    shard_set.write_shard(0, make_samples(4, seed=0))
    shard_set.write_shard(1, make_samples(3, seed=1))
    write_manifest(tmp_path, load_completed(tmp_path), {"recipe_name": "demo", "classes": list(CLASSES)})
    return tmp_path


def render(result) -> str:
    buffer = io.StringIO()
    render_inspect(result, Console(file=buffer, width=200, color_system=None))
    return buffer.getvalue()


def test_clean_output_is_ok(output) -> None:
    result = inspect_output(output)
    assert result.ok, result.problems
    assert result.class_counts == {"normal": 3, "polyp": 4}
    rows = [(r.index, r.format, r.found_samples, r.checksum_ok) for r in result.shards]
    assert rows == [
        (0, "parquet", 4, True),
        (0, "webdataset", 4, True),
        (1, "parquet", 3, True),
        (1, "webdataset", 3, True),
    ]
    text = render(result)
    assert "polyp" in text and "✓" in text and "✗" not in text


def test_tampered_and_missing_shards_are_problems(output) -> None:
    # Relabel one sample of shard 1 in place: the file stays valid Parquet, only the checksum tells.
    path = output / "data/shard-00001.parquet"
    table = pq.read_table(path)
    labels = table.column("label_name").to_pylist()
    labels[0] = "normal" if labels[0] == "polyp" else "polyp"
    relabelled = table.set_column(
        table.schema.get_field_index("label_name"), table.schema.field("label_name"), pa.array(labels, pa.string())
    )
    pq.write_table(relabelled, path)
    (output / "webdataset/shard-00000.tar").unlink()
    result = inspect_output(output)
    assert not result.ok
    assert any("data/shard-00001.parquet" in p and "sha256" in p for p in result.problems)
    assert any("webdataset/shard-00000.tar" in p and "missing" in p for p in result.problems)
    assert any("differ from the manifest" in p for p in result.problems)
    assert result.class_counts == {"normal": 4, "polyp": 3}  # what the data now holds
    bad = {(r.path, r.checksum_ok) for r in result.shards}
    assert ("data/shard-00001.parquet", False) in bad and ("data/shard-00000.parquet", True) in bad
    assert "✗" in render(result)


def test_unreadable_shard_is_a_problem_not_a_crash(output) -> None:
    path = output / "data/shard-00000.parquet"
    path.write_bytes(path.read_bytes()[:-10])  # truncated: the Parquet footer is gone
    result = inspect_output(output)
    assert any("data/shard-00000.parquet: cannot read" in p for p in result.problems)
    assert result.class_counts == {"normal": 1, "polyp": 2}  # shard 1 only


def test_count_mismatch_and_unlisted_files(output) -> None:
    # A shard rewritten with other samples after the manifest: counts and checksums disagree.
    ShardSet(output, ["webdataset"], classes=CLASSES).write_shard(1, make_samples(2, seed=5))
    ShardSet(output, ["parquet"], classes=CLASSES).write_shard(7, make_samples(1, seed=7))
    problems = " | ".join(inspect_output(output).problems)
    assert "webdataset/shard-00001.tar: 2 samples, manifest says 3" in problems
    assert "shard 1: webdataset has 2 samples, parquet has 3" in problems
    assert "data/shard-00007.parquet: not listed in manifest.json" in problems


def test_not_an_output_folder(tmp_path) -> None:
    with pytest.raises(SynthgenError, match="no manifest.json; not a synthgen output folder"):
        inspect_output(tmp_path)
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(SynthgenError, match="not a synthgen manifest"):
        inspect_output(tmp_path)


def card_header(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_dataset_card(output) -> None:
    provenance = {
        "model_id": "tiny-msdm",
        "model_sha256": "m" * 64,
        "recipe_name": "demo",
        "recipe_sha256": "r" * 64,
        "scheduler": "ddim",
        "steps": 20,
        "guidance_scale": 3.5,
    }
    audit = {
        "embedder": "pixel",
        "threshold": 0.95,
        "action": "drop",
        "checked": 9,
        "flagged": 2,
        "dropped": 2,
        "max_similarity": 0.91,
    }
    path = write_dataset_card(
        output,
        name="Demo polyps",
        description="Toy data.",
        domain="colonoscopy",
        class_counts={"polyp": 4, "normal": 3},
        classes=list(CLASSES),
        formats=["parquet", "webdataset"],
        provenance_summary=provenance,
        audit_summary=audit,
        dp=None,
    )
    text = path.read_text(encoding="utf-8")
    header = card_header(text)
    assert header["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}
    ]
    assert header["license"] == "other" and header["size_categories"] == ["n<1K"]
    assert header["tags"] == ["synthetic", "medical-imaging", "synthgen"]
    features = {f["name"]: f["dtype"] for f in header["dataset_info"]["features"]}
    assert features["image"] == "image" and features["seed"] == "int64" and features["prompt"] == "string"
    assert "| 0 | polyp | 4 |" in text and "| 1 | normal | 3 |" in text and "0.95" in text
    assert "load_dataset" in text and "wds.WebDataset" in text and 'sample["cls"]' in text
    label = features["label"]["class_label"]["names"]
    assert label == {"0": "polyp", "1": "normal"} and features["label_name"] == "string"
    assert "not trained with differential privacy: no formal guarantee" in text

    private = write_dataset_card(
        output,
        name="x",
        description="",
        domain="",
        class_counts={"a": 1},
        formats=["webdataset"],
        provenance_summary={},
        audit_summary=None,
        dp={"epsilon": 8.0, "delta": 1e-5},
    ).read_text(encoding="utf-8")
    assert card_header(private)["configs"][0]["data_files"][0]["path"] == "webdataset/*.tar"
    assert "ε = 8.0" in private and "No memorization audit" in private and "load_dataset" not in private


def test_size_categories() -> None:
    assert [size_category(n) for n in (0, 999, 1000, 50_000, 2_000_000)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "10K<n<100K",
        "1M<n<10M",
    ]
