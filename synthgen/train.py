"""Entry points of MSDM training, kept here for callers (build, CLI, tests); the work is in `synthgen.training`.

`train_msdm` trains from a bare `TrainingConfig` and source; `train_from_recipe` passes the whole recipe's
context (privacy block, class prompts for the tokenizer and sample grids, the recipe's folder for relative
paths), and `recipe_training_key` keys the model cache on all of it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from synthgen.recipe import LoadedRecipe, PrivacyConfig, TrainingConfig
from synthgen.sources.base import Source
from synthgen.training.card import MODEL_INFO_FILE
from synthgen.training.run import cache_root, training_key

Progress = Callable[[str, int, int], None]

__all__ = [
    "MODEL_INFO_FILE",
    "cache_root",
    "recipe_prompts",
    "recipe_training_key",
    "train_from_recipe",
    "train_msdm",
    "training_key",
]


def train_msdm(
    config: TrainingConfig,
    source: Source,
    out_dir: Path,
    progress: Progress | None = None,
    device: str = "auto",
    *,
    base_dir: Path | None = None,
    privacy: PrivacyConfig | None = None,
    prompts: dict[str, list[str]] | None = None,
    recipe: object = None,
    recipe_sha256: str | None = None,
    overwrite: bool = False,
    notify: Callable[[str], None] | None = None,
) -> Path:
    """Train an MSDM on `source` into `out_dir` (resuming an interrupted run of the same settings there)."""
    from synthgen.training.run import MSDMRequest
    from synthgen.training.run import train_msdm as run

    request = MSDMRequest(
        config=config,
        source=source,
        out_dir=Path(out_dir),
        base_dir=base_dir,
        privacy=privacy,
        prompts=prompts or {},
        recipe=recipe,
        recipe_sha256=recipe_sha256,
        overwrite=overwrite,
        device=device,
    )
    return run(request, progress, notify)


def recipe_prompts(loaded: LoadedRecipe) -> dict[str, list[str]]:
    """Every prompt each class of the recipe expands to (public text: tokenizer corpus under DP, sample grids)."""
    from synthgen.plan import expand_prompts

    return {label: [p for p, _ in expand_prompts(cfg)] for label, cfg in loaded.recipe.classes.items()}


def recipe_training_key(loaded: LoadedRecipe, data_fingerprint: str) -> str:
    """The model-cache key of a recipe's MSDM: training settings, data, privacy block and tokenizer prompts."""
    config = loaded.recipe.model.train
    if config is None:
        raise ValueError("recipe has no model.train")
    return training_key(config, data_fingerprint, loaded.recipe.privacy, recipe_prompts(loaded))


def train_from_recipe(
    loaded: LoadedRecipe,
    source: Source,
    out_dir: Path,
    progress: Progress | None = None,
    device: str = "auto",
    *,
    overwrite: bool = False,
    notify: Callable[[str], None] | None = None,
) -> Path:
    """Train the recipe's `model.train` MSDM with everything the recipe says (DP included) into `out_dir`."""
    config = loaded.recipe.model.train
    if config is None:
        raise ValueError("recipe has no model.train")
    return train_msdm(
        config,
        source,
        out_dir,
        progress,
        device,
        base_dir=loaded.base_dir,
        privacy=loaded.recipe.privacy,
        prompts=recipe_prompts(loaded),
        recipe=loaded.recipe,
        recipe_sha256=loaded.sha256,
        overwrite=overwrite,
        notify=notify,
    )
