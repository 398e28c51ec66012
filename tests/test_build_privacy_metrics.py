"""The build's audit carries the privacy metrics of `synthgen audit`, and the holdout share when `audit.holdout`
is set: a set that copies the audit data scores ≈ 1, a fresh draw of the same distribution ≈ 0.5.

The generator is replaced by one that draws demo phantoms (the build is otherwise the real one), so the synthetic
images are, by construction, either copies of the training phantoms or fresh phantoms of the same classes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_build import build_interrupted_after_first_shard, write_recipe

from synthgen.build import build
from synthgen.recipe import load_recipe
from synthgen.sources.demo import draw_phantom

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("isolated_cache")]

PER_CLASS = 30  # audit data (T) and holdout (H): 90 phantoms each
AUDIT_SEED, HOLDOUT_SEED, FRESH_SEED = 0, 7, 1234
COUNTS = {"classes.polyp.count": 20, "classes.ulcer.count": 20, "classes.normal.count": 20}
SETTINGS = {
    **COUNTS,
    "audit.data": {"type": "demo", "per_class": PER_CLASS, "resolution": 32, "seed": AUDIT_SEED},
    "audit.holdout": {"type": "demo", "per_class": PER_CLASS, "resolution": 32, "seed": HOLDOUT_SEED},
    "audit.action": "flag",
    "output.shard_size": 32,  # two shards
}


def phantom_generator(mp: pytest.MonkeyPatch, copies: bool) -> None:
    """Make `Generator.generate` draw phantoms: training ones (`copies`) or fresh ones; deterministic per job."""
    from synthgen.generate import Generator

    def generate(self, jobs, progress=None):
        samples = []
        for job in jobs:
            seed, index = (AUDIT_SEED, job.seed % PER_CLASS) if copies else (FRESH_SEED, job.seed % 1_000_000)
            samples.append(self._sample(job, draw_phantom(job.label, seed, index, 32)[0]))
        return samples

    mp.setattr(Generator, "generate", generate)
    mp.delattr(Generator, "generate_groups")  # so the build samples shard by shard, through `generate`


def _build(folder: Path, copies: bool, model_cache: Path) -> Path:
    mp = pytest.MonkeyPatch()
    mp.setenv("SYNTHGEN_CACHE", str(model_cache))
    try:
        phantom_generator(mp, copies)
        result = build(load_recipe(write_recipe(folder, **SETTINGS)))
    finally:
        mp.undo()
    return result.out_dir


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    return _build(tmp_path_factory.mktemp("fresh"), False, model_cache)


@pytest.fixture(scope="module")
def copied(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    return _build(tmp_path_factory.mktemp("copied"), True, model_cache)


def summary_of(out: Path) -> dict:
    return json.loads((out / "audit" / "summary.json").read_text())


def test_fresh_draw_gives_holdout_share_near_half(fresh: Path) -> None:
    summary = summary_of(fresh)
    assert summary["n_candidates"] == 60
    assert summary["holdout"]["n"] == 3 * PER_CLASS and "demo" in summary["holdout"]["description"]
    metrics = summary["metrics"]
    for block in ("nn_similarity", "dcr", "nndr", "authenticity", "data_copying", "holdout"):
        assert block in metrics
    share = metrics["holdout"]["share_nearer_train"]
    assert 0.3 <= share <= 0.7, share
    report = (fresh / "audit" / "report.html").read_text()
    assert "holdout share" in report and "C_T" in report


def test_copied_set_gives_holdout_share_near_one(copied: Path) -> None:
    summary = summary_of(copied)
    assert summary["n_flagged"] == 60  # the copy audit sees them too (action flag: they stay in the set)
    metrics = summary["metrics"]
    assert metrics["holdout"]["share_nearer_train"] >= 0.9
    assert metrics["authenticity"]["share_authentic"] <= 0.1  # copies are never authentic
    assert metrics["dcr"]["p5_ratio"] < 0.5


def test_without_holdout_the_build_still_has_the_metrics(tmp_path: Path) -> None:
    settings = {**COUNTS, "classes.polyp.count": 4, "classes.ulcer.count": 2, "classes.normal.count": 2}
    result = build(load_recipe(write_recipe(tmp_path, **settings)))
    summary = summary_of(result.out_dir)
    assert "holdout" not in summary
    assert "nn_similarity" in summary["metrics"] and summary["metrics"].get("holdout") is None


def test_resumed_build_gives_the_same_metrics(fresh: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    phantom_generator(monkeypatch, copies=False)
    recipe = load_recipe(write_recipe(tmp_path, **SETTINGS))
    build_interrupted_after_first_shard(recipe, monkeypatch)
    result = build(recipe)
    assert (result.shards_written, result.shards_resumed) == (1, 1)
    resumed, whole = summary_of(result.out_dir), summary_of(fresh)
    assert resumed["metrics"] == whole["metrics"]
    assert resumed["holdout"]["n"] == whole["holdout"]["n"]
