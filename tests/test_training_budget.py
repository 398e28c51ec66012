"""`max_minutes` (issue 13): a training time budget that stops at a checkpoint, finishes the model there and
says so; reruns never retrain silently; existing recipes keep their model-cache keys. The budget's clock is
replaced by a fake one that advances a fixed amount per reading (nothing sleeps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

import synthgen.training.loop as loop
import synthgen.training.model_keys as model_keys
from synthgen.errors import SynthgenError
from synthgen.recipe import load_recipe
from synthgen.sources import open_source
from synthgen.train import recipe_prompts, train_from_recipe
from synthgen.training.checkpoints import CheckpointStore
from synthgen.training.folder import settings_fingerprint
from synthgen.training.loop import Budget, LoopSettings, Phase, run_phase
from synthgen.training.msdm_run import MSDMRequest, run_settings
from synthgen.training.training_log import TrainingLog

ROOT = Path(__file__).resolve().parents[1]
RECIPE = {
    "name": "budget-test",
    "model": {
        "train": {
            "data": {"type": "demo", "per_class": 2, "resolution": 32},
            "resolution": 32,
            "vae_steps": 2,
            "unet_steps": 6,
            "batch_size": 2,
            "validation_split": 0.0,
            "checkpoint_every": 2,
            "max_minutes": 1,
        }
    },
    "classes": {"polyp": {"count": 1, "prompts": ["colonoscopy phantom showing a small polyp"]}},
}
# Computed before `max_minutes` existed (synthgen version pinned): adding a field must not move these keys.
KEYS_BEFORE = {"demo": "7cd26b251a87d67b", "demo-dp": "f3c5b65614eaf817", "lora": "7968591c828d8c1b"}
RUN_FINGERPRINT_BEFORE = "f49b379498f0a602897c7308caba89e964808fc724a77e39dfe064b551abc8ca"  # demo.yaml


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch):
    """Each reading of the budget's clock is `step` seconds after the last (set `advance[0]`)."""
    advance, now = [25.0], [0.0]

    def clock() -> float:
        now[0] += advance[0]
        return now[0]

    monkeypatch.setattr(loop, "_clock", clock)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return advance


def test_existing_recipes_keep_their_cache_keys_and_resume_fingerprints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_keys, "__version__", "0.0.0-key-test")
    keys = {}
    for name in ("demo", "demo-dp"):
        loaded = load_recipe(ROOT / "recipes" / f"{name}.yaml")
        config, privacy = loaded.recipe.model.train, loaded.recipe.privacy
        keys[name] = model_keys.training_key(config, "data-sha256-fixed", privacy, recipe_prompts(loaded))
        budgeted = config.model_copy(update={"max_minutes": 30.0})
        assert model_keys.training_key(budgeted, "data-sha256-fixed", privacy, recipe_prompts(loaded)) != keys[name]
    lora = load_recipe(ROOT / "recipes" / "kvasir-vqa-sd-lora.yaml").recipe.model.lora
    keys["lora"] = model_keys.lora_key(lora, "data-sha256-fixed", "base-sha")
    assert keys == KEYS_BEFORE
    loaded = load_recipe(ROOT / "recipes" / "demo.yaml")
    request = MSDMRequest(loaded.recipe.model.train, None, Path("x"), prompts=recipe_prompts(loaded))
    assert settings_fingerprint(run_settings(request, "data-sha256-fixed")) == RUN_FINGERPRINT_BEFORE
    budgeted = MSDMRequest(loaded.recipe.model.train.model_copy(update={"max_minutes": 5.0}), None, Path("x"))
    request.prompts = budgeted.prompts = {}
    assert run_settings(budgeted, "d") == run_settings(request, "d")  # a budget change still resumes the run


def _toy(tmp_path: Path, budget: Budget | None, final: bool = False):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    data = torch.randn(16, 3)

    def draw(indices: torch.Tensor, generator: torch.Generator) -> dict:
        return {"x": data[indices]}

    phase = Phase("toy", 10, model, 16, draw, lambda module, batch: module(batch["x"]).pow(2).mean(1), 0.01)
    settings = LoopSettings(4, 4, 3, 0, torch.device("cpu"), budget=budget)
    log = TrainingLog(tmp_path / "log.jsonl", ["toy"])
    return run_phase(phase, settings, CheckpointStore(tmp_path / "ckpt"), log, final=final), log


def test_loop_stops_at_the_checkpoint_where_the_budget_is_spent(tmp_path: Path, fake_clock: list[float]) -> None:
    result, log = _toy(tmp_path, Budget(60.0, spent=10.0))  # readings: start, then each checkpoint (3, 6, 9, 10)
    assert (result.steps, result.planned, result.stopped) == (6, 10, True)  # 10 + 25 < 60 <= 10 + 50
    assert result.elapsed == 50.0 and [r["step"] for r in log.steps("toy")][-1] == 6
    assert [c.step for c in CheckpointStore(tmp_path / "ckpt").all("toy")] == [6]
    again, _ = _toy(tmp_path, Budget(60.0, spent=10.0))  # resumed with the budget spent: no step taken
    assert (again.steps, again.stopped, again.resumed_from) == (6, True, 6)
    closed, _ = _toy(tmp_path, None, final=True)  # a later phase built on it: it stays as it is
    assert (closed.steps, closed.stopped) == (6, True)
    more, _ = _toy(tmp_path, Budget(600.0))  # a larger budget: it trains on to its planned steps
    assert (more.steps, more.stopped, more.elapsed) == (10, False, 100.0)  # 50 + checkpoints 9 and 10


def _write(folder: Path, **train: object) -> Path:
    recipe = json.loads(json.dumps(RECIPE))
    recipe["model"]["train"].update(train)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder / "recipe.yaml"


def _train(recipe: Path, out: Path, notes: list[str] | None = None) -> dict:
    loaded = load_recipe(recipe)
    source = open_source(loaded.recipe.model.train.data, loaded.base_dir)
    train_from_recipe(loaded, source, out, device="cpu", notify=(notes if notes is not None else []).append)
    return json.loads((out / "synthgen_model.json").read_text())


@pytest.mark.slow
def test_budget_stops_unet_at_a_checkpoint_and_a_larger_budget_continues(tmp_path: Path, fake_clock: list) -> None:
    out, notes = tmp_path / "model", []
    info = _train(_write(tmp_path / "a"), out, notes)  # VAE: 25 s; UNet: 25 s at step 2, 50 s at step 4 -> spent
    assert (out / "model_index.json").is_file()  # installed: usable as it is
    budget = info["budget"]
    assert budget["stopped"] is True and budget["max_minutes"] == 1 and budget["minutes"] == 1.25
    assert budget["steps"] == {"vae": 2, "unet": 4} and budget["planned_steps"] == {"vae": 2, "unet": 6}
    assert info["steps"] == {"vae": 2, "unet": 4} and info["training"]["unet_steps"] == 6
    assert any(
        "max_minutes spent" in note and "unet stopped at the checkpoint of step 4 of 6" in note for note in notes
    )
    card = (out / "README.md").read_text()
    assert "**Stopped by max_minutes.**" in card and "4 of 6 steps (stopped by max_minutes)" in card
    assert "raise (or remove) `max_minutes`" in card
    events = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "done" and events[-1]["step"] == 4

    with pytest.raises(SynthgenError, match=r"stopped by max_minutes .* at unet step 4 of 6; raise max_minutes"):
        _train(_write(tmp_path / "same"), out)  # same budget: already finished, nothing retrained

    info = _train(_write(tmp_path / "more", max_minutes=10), out)  # resumes at step 4, trains to 6
    assert info["budget"]["stopped"] is False and info["steps"] == {"vae": 2, "unet": 6}
    assert "not reached" in (out / "README.md").read_text()
    events = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [e for e in events if e.get("event") == "resume"][-1]["step"] == 4


@pytest.mark.slow
def test_budget_spent_in_the_vae_phase_still_gives_a_complete_model(tmp_path: Path, fake_clock: list) -> None:
    fake_clock[0] = 40.0  # VAE: 40 s at step 2, 80 s at step 4 -> spent; the UNet still runs to its first checkpoint
    out = tmp_path / "model"
    info = _train(_write(tmp_path / "a", vae_steps=6), out)
    assert info["steps"] == {"vae": 4, "unet": 2} and info["budget"]["stopped"] is True
    assert info["vae_source"] == "4 of 6 steps (stopped by max_minutes)"
    assert (out / "model_index.json").is_file()
    info = _train(_write(tmp_path / "b", vae_steps=6, max_minutes=10), out)
    # the VAE stays as the UNet found it; only the UNet trains on
    assert info["steps"] == {"vae": 4, "unet": 6} and info["budget"]["stopped"] is True
