"""bench/bench_samplers.py changes only what it says it changes in the recipe it builds (no timings here)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from bench_samplers import Variant, parse_variants, variant_recipe  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def test_variants_parse_and_bad_ones_are_refused() -> None:
    variants = parse_variants("ddim:25, dpm-solver++:12")
    assert [(v.scheduler, v.steps) for v in variants] == [("ddim", 25), ("dpm-solver++", 12)]
    for bad in ("ddim", "ddim:0", ":12", ""):
        with pytest.raises(SystemExit, match="--variants"):
            parse_variants(bad)


def test_variant_recipe_changes_only_the_sampler_counts_audit_and_output(tmp_path: Path) -> None:
    source = REPO / "recipes" / "radiology-real.yaml"
    original = yaml.safe_load(source.read_text())
    data = variant_recipe(source, Variant("dpm-solver++", 12), 5, tmp_path / "out")
    assert data["sampling"]["scheduler"] == "dpm-solver++" and data["sampling"]["steps"] == 12
    assert {name: config["count"] for name, config in data["classes"].items()} == dict.fromkeys(original["classes"], 5)
    assert data["audit"]["enabled"] is False and data["output"]["dir"] == str(tmp_path / "out")
    for block, original_block in (
        (data["model"]["train"]["data"], original["model"]["train"]["data"]),
        (data["eval"]["test"], original["eval"]["test"]),
    ):
        moved = Path(block["path"])  # paths stay those of the recipe's folder when the recipe is written elsewhere
        assert moved.is_absolute() and moved == (source.parent / original_block["path"]).resolve()
    assert data["eval"].keys() == original["eval"].keys()
    untouched = {key: value for key, value in original["sampling"].items() if key not in ("scheduler", "steps")}
    assert {key: data["sampling"][key] for key in untouched} == untouched
