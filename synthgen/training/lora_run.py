"""One LoRA fine-tuning run (peft) of a pretrained SD 1.x/2.x or SDXL pipeline into a folder DIR.

The harness (`harness.TrainingRun`) owns DIR, the log and the loop; the model is `lora_model.LoRAModel`. DIR ends
with:

- a complete diffusers pipeline with the LoRA fused into the UNet (`DiffusionPipeline.from_pretrained(DIR)`,
  no synthgen or peft needed);
- `lora/pytorch_lora_weights.safetensors`: the adapter alone, for `pipe.load_lora_weights` on the base;
- `synthgen_model.json` (base id and sha256, data sha256, settings, losses), `training_log.jsonl`,
  `loss.png`, `samples/step-N.png` and `.checkpoints/` (the last checkpoint, to extend the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen.errors import SynthgenError
from synthgen.plan import derive_seed
from synthgen.recipe import LoadedRecipe, LoRAConfig
from synthgen.runtime import Progress
from synthgen.sources.base import Source
from synthgen.training.data import TrainingData
from synthgen.training.harness import Notify, TrainingRun
from synthgen.training.model_keys import neutral_fields

LORA_DIR = "lora"
SETTINGS_FORMAT = 1  # bump when a code change makes old checkpoints unfit to resume
GRID_ROWS = 8


@dataclass
class LoRARequest:
    """Everything one LoRA run needs: the settings, the base pipeline folder (`base_id` names it in the model info)
    and the data; `prompts` give the sample grids' rows (each class's first prompt)."""

    config: LoRAConfig
    source: Source
    out_dir: Path
    base: Path
    base_id: str | None = None
    base_sha256: str | None = None  # saves hashing the base twice when the caller has it
    prompts: dict[str, list[str]] | None = None
    recipe_sha256: str | None = None
    overwrite: bool = False
    device: str = "auto"
    allow_pickle: bool = False  # model.allow_pickle: a base with pickled weights may load


def refuse_privacy(loaded: LoadedRecipe) -> None:
    if loaded.recipe.privacy is not None:
        raise SynthgenError(
            "privacy: differentially private LoRA fine-tuning is not supported yet; "
            "train an MSDM with privacy (model.train) or drop `privacy`"
        )


def check_lora(loaded: LoadedRecipe, local_base: Path | None) -> str:
    """What `synthgen validate` can say about a LoRA recipe without loading weights: base kind, data readable."""
    from synthgen.sources import open_readable
    from synthgen.training.lora_model import pipeline_class

    refuse_privacy(loaded)
    model = loaded.recipe.model
    index: str | Path | None = local_base / "model_index.json" if local_base is not None else None
    if index is None:
        from huggingface_hub import try_to_load_from_cache

        index = try_to_load_from_cache(model.pretrained, "model_index.json", revision=model.revision)
    if isinstance(index, (str, Path)):
        pipeline_class(Path(index).parent)
    config = model.lora
    source = open_readable(config.data, loaded.base_dir, "model.lora.data")
    return f"LoRA rank {config.rank}, {config.steps} steps on {source.description}"


def _grid_rows(data: TrainingData, prompts: dict[str, list[str]] | None) -> list[tuple[str, str]]:
    """The recipe's first prompt per class, else the first caption of each label."""
    if prompts:
        return [(label, texts[0]) for label, texts in prompts.items() if texts][:GRID_ROWS]
    first: dict[str, str] = {}
    for caption, label in zip(data.captions, data.labels, strict=True):
        first.setdefault(label, caption)
    return sorted(first.items())[:GRID_ROWS]


def run_lora(request: LoRARequest, progress: Progress | None = None, notify: Notify | None = None) -> Path:
    """Fine-tune `request.base` with `request.config` on its data into `request.out_dir` (resumes a stopped run)."""
    from synthgen.provenance import sha256_tree
    from synthgen.training.checkpoints import seed_everything
    from synthgen.training.lora_model import PHASE, LoRAModel, merged_pipeline

    config, base = request.config, Path(request.base)
    run = TrainingRun(request.out_dir, (PHASE,), request.source, request.device, progress, notify)
    base_sha256 = request.base_sha256 or sha256_tree(base)
    settings_record = {
        # not steps or max_minutes: a finished (or budget-stopped) run can be extended with more; new fields left at
        # their default are left out, so a run from before they existed still resumes
        "training": config.model_dump(
            mode="json", exclude={"data", "checkpoint_every", "steps", "max_minutes"} | neutral_fields(config)
        ),
        "data_sha256": run.fingerprint,
        "base_sha256": base_sha256,
        "format": SETTINGS_FORMAT,
    }
    if run.claim(settings_record, request.overwrite):
        run.refuse_spent_budget(config, PHASE, config.steps)
    run.begin()
    settings = run.loop_settings(config)
    seed_everything(derive_seed(config.seed, "build", PHASE))
    model = LoRAModel(base, config, run.device, settings.autocast_dtype, request.allow_pickle)
    split_by = config.split_by if config.validation_split > 0 else None
    data, train, val = run.load_data(
        model.resolution, config.validation_split, config.seed, split_by, "model.lora.split_by"
    )
    grid = model.sample_grid(run.path, _grid_rows(data, request.prompts), settings.autocast_dtype)
    result = run.run_phase(model.phase(train, val, grid), settings)

    staging = run.staging()
    model.save_lora(staging / LORA_DIR)
    del model
    merged_pipeline(base, staging / LORA_DIR, request.allow_pickle).save_pretrained(staging, safe_serialization=True)
    _write_model_info(run, request, base_sha256, (data, train, val), result, staging)
    return run.install(staging, PHASE, result.steps)


def _write_model_info(
    run: TrainingRun, request: LoRARequest, base_sha256: str, split: tuple, result: Any, staging: Path
) -> None:
    """synthgen_model.json: the base (id, sha256, pipeline class), the data (never file names or captions), losses."""
    from synthgen.training.lora_model import PHASE, pipeline_class
    from synthgen.training.model_card import library_versions, write_model_info

    data, train, val = split
    losses = {r["step"]: r.get("loss") for r in run.log.steps(PHASE)}
    validation = {r["step"]: r["val_loss"] for r in run.log.steps(PHASE) if r.get("val_loss") is not None}
    base = Path(request.base)
    info = {
        "architecture": "lora",
        "base_model": {"id": request.base_id or str(base), "sha256": base_sha256, "pipeline": pipeline_class(base)},
        "training": request.config.model_dump(mode="json", exclude={"data"}),
        "resolution": data.images.shape[-1],
        "training_data": run.training_data(data, train, val, labels=True),
        "recipe_sha256": request.recipe_sha256,
        "losses": {"train": [losses[s] for s in sorted(losses)], "validation": validation},
        "steps": result.steps,
        "budget": run.budget_record(request.config, {PHASE: result}),
        "final_loss": result.loss,
        "validation_loss": result.val_loss,
        "dp": None,
        "seconds": run.seconds(),
        "versions": library_versions(),
    }
    write_model_info(staging, info)
