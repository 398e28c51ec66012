"""A recipe's `eval:` block runs after the build writes its set: eval/eval.json + report.html, reused when the
set and recipe are unchanged, and a test set that is the model's own training data is refused.

The generator draws demo phantoms (the rest of the build is real), so the synthetic images are, by construction,
fresh phantoms of the right class (`swap=False`) or of another class (`swap=True`): label fidelity and TSTR are
then known to be high or low.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_build import write_recipe

from synthgen.build import build
from synthgen.errors import SynthgenError
from synthgen.recipe import load_recipe
from synthgen.sources.demo import draw_phantom

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("isolated_cache")]

OTHER = {"polyp": "ulcer", "ulcer": "normal", "normal": "polyp"}
EVAL = {
    "real": {"type": "demo", "per_class": 30, "resolution": 32, "seed": 0},
    "test": {"type": "demo", "per_class": 20, "resolution": 32, "seed": 7},
    "seeds": 2,
    "bootstrap": 20,
    "classifier_resolution": 32,
    "classifier_steps": 40,
}
SETTINGS = {
    "classes.polyp.count": 16,
    "classes.ulcer.count": 16,
    "classes.normal.count": 16,
    "audit.enabled": False,
    "output.shard_size": 24,
    "eval": EVAL,
}


def phantom_generator(mp: pytest.MonkeyPatch, swap: bool) -> None:
    """`Generator.generate` draws a fresh phantom of the job's class (or, with `swap`, of another class)."""
    from synthgen.generate import Generator

    def generate(self, jobs, progress=None):
        kind = (lambda label: OTHER[label]) if swap else (lambda label: label)
        return [self._sample(job, draw_phantom(kind(job.label), 99, job.seed % 100_000, 32)[0]) for job in jobs]

    mp.setattr(Generator, "generate", generate)
    mp.delattr(Generator, "generate_groups")  # so the build samples shard by shard, through `generate`


def test_build_writes_the_eval_and_reuses_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    phantom_generator(monkeypatch, swap=False)
    recipe = load_recipe(write_recipe(tmp_path, **SETTINGS))
    result = build(recipe)
    summary = json.loads((result.out_dir / "eval" / "eval.json").read_text())
    assert result.eval_summary == summary
    assert summary["n_synthetic"] == 48 and set(summary["per_class"]) == {"polyp", "ulcer", "normal"}
    assert summary["recipe"]["name"] == "tiny" and len(summary["build_key"]) == 64
    assert summary["label_fidelity"]["agreement"] > 0.8  # fresh phantoms of the right class
    assert summary["utility"]["tstr"]["balanced_accuracy"]["mean"] > 0.7
    assert (result.out_dir / "eval" / "report.html").is_file()
    stamp = (result.out_dir / "eval" / "eval.json").stat().st_mtime_ns
    build(recipe)  # finished set, same recipe: the eval is up to date
    assert (result.out_dir / "eval" / "eval.json").stat().st_mtime_ns == stamp


def test_labels_that_lie_show_in_the_build_eval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    phantom_generator(monkeypatch, swap=True)
    result = build(load_recipe(write_recipe(tmp_path, **{**SETTINGS, "eval": {**EVAL, "utility": True}})))
    summary = result.eval_summary
    assert summary is not None and summary["label_fidelity"]["agreement"] < 0.3
    assert summary["utility"]["tstr"]["balanced_accuracy"]["mean"] < 0.5


def test_eval_on_the_training_data_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    phantom_generator(monkeypatch, swap=False)
    training = {"type": "demo", "per_class": 4, "resolution": 32}  # write_recipe's model.train.data
    settings = {**SETTINGS, "eval": {**EVAL, "real": None, "test": training, "utility": True}}
    with pytest.raises(SynthgenError, match="is the model's training data"):
        build(load_recipe(write_recipe(tmp_path, **settings)))
