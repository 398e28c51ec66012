"""The one front door of training, for `synthgen.resolve`, the CLI `train` command, tests and Python callers.

- `train_from_recipe` trains what a recipe's `model` asks for: an MSDM (`model.train`, with the recipe's privacy
  block, class prompts and folder) or a LoRA fine-tune of `model.pretrained` (`model.lora`).
- `train_msdm` and `train_lora` train from bare settings (no recipe): a `TrainingConfig` or `LoRAConfig`,
  a source and, for LoRA, a base pipeline folder.
- `recipe_training_key` and `lora_key` key the model cache (`synthgen.resolve` names cached models after them);
  `check_lora` checks a LoRA recipe without loading weights; `last_checkpoint` names a folder's resume point.

The work is in `synthgen.training` (`msdm_run`, `lora_run` on the shared `harness`); nothing heavy is imported
here until a function runs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from synthgen.recipe import LoadedRecipe, LoRAConfig, PrivacyConfig, TrainingConfig
from synthgen.runtime import Progress
from synthgen.sources.base import Source
from synthgen.training.model_card import MODEL_INFO_FILE
from synthgen.training.model_keys import lora_key, training_key

Notify = Callable[[str], None]

__all__ = [
    "MODEL_INFO_FILE",
    "check_lora",
    "last_checkpoint",
    "lora_key",
    "recipe_prompts",
    "recipe_training_key",
    "train_from_recipe",
    "train_lora",
    "train_msdm",
    "training_key",
]


def train_from_recipe(
    loaded: LoadedRecipe,
    source: Source | None,
    out_dir: Path,
    progress: Progress | None = None,
    device: str = "auto",
    *,
    overwrite: bool = False,
    notify: Notify | None = None,
    base: Path | None = None,
    base_sha256: str | None = None,
) -> Path:
    """Train the recipe's model into `out_dir` (resuming an interrupted run of the same settings there).

    `model.train`: an MSDM with everything the recipe says (DP included). `model.lora`: a LoRA fine-tune of
    `model.pretrained` (`base` is its folder when the caller has located it already, `base_sha256` its hash).
    `source` is the training data when the caller has opened it already, else it is opened from the recipe.
    """
    model = loaded.recipe.model
    if model.lora is not None:
        return _lora_from_recipe(loaded, source, out_dir, progress, device, overwrite, notify, base, base_sha256)
    config = model.train
    if config is None:
        raise ValueError("recipe has no model.train")
    return train_msdm(
        config,
        source if source is not None else _open(config.data, loaded),
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
        allow_pickle=model.allow_pickle,
    )


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
    notify: Notify | None = None,
    allow_pickle: bool = False,
) -> Path:
    """Train an MSDM on `source` into `out_dir` (resuming an interrupted run of the same settings there).

    `allow_pickle` (model.allow_pickle) lets a pretrained VAE or text encoder load from pickled weights."""
    from synthgen.training.msdm_run import MSDMRequest, run_msdm

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
        allow_pickle=allow_pickle,
    )
    return run_msdm(request, progress, notify)


def train_lora(
    config: LoRAConfig,
    source: Source,
    out_dir: Path,
    progress: Progress | None = None,
    device: str = "auto",
    *,
    base: Path,
    base_id: str | None = None,
    base_sha256: str | None = None,
    prompts: dict[str, list[str]] | None = None,
    recipe_sha256: str | None = None,
    overwrite: bool = False,
    notify: Notify | None = None,
    allow_pickle: bool = False,
) -> Path:
    """Fine-tune the pipeline folder `base` with `config` on `source` into `out_dir` (resumes a stopped run).

    `base_id` names the base in the model info (default: its path); `base_sha256` saves hashing it twice;
    `prompts` give the sample grids' rows (default: each label's first caption); `allow_pickle`
    (model.allow_pickle) lets a base with pickled weights load.
    """
    from synthgen.training.lora_run import LoRARequest, run_lora

    request = LoRARequest(
        config=config,
        source=source,
        out_dir=Path(out_dir),
        base=Path(base),
        base_id=base_id,
        base_sha256=base_sha256,
        prompts=prompts,
        recipe_sha256=recipe_sha256,
        overwrite=overwrite,
        device=device,
        allow_pickle=allow_pickle,
    )
    return run_lora(request, progress, notify)


def _lora_from_recipe(loaded, source, out_dir, progress, device, overwrite, notify, base, base_sha256) -> Path:
    """`model.lora` of the recipe: its base (located unless given), data, class prompts and sha256."""
    from synthgen.plan import expand_prompts
    from synthgen.training.lora_run import refuse_privacy

    refuse_privacy(loaded)
    model = loaded.recipe.model
    if base is None:
        from synthgen.models.locate import pretrained_path

        base = pretrained_path(loaded)
    # the grids show what the build will ask for: each class's first prompt
    prompts = {label: [expand_prompts(c)[0][0]] for label, c in loaded.recipe.classes.items()}
    return train_lora(
        model.lora,
        source if source is not None else _open(model.lora.data, loaded),
        out_dir,
        progress,
        device,
        base=base,
        base_id=model.pretrained,
        base_sha256=base_sha256,
        prompts=prompts,
        recipe_sha256=loaded.sha256,
        overwrite=overwrite,
        notify=notify,
        allow_pickle=model.allow_pickle,
    )


def _open(spec, loaded: LoadedRecipe) -> Source:
    from synthgen.sources import open_source

    return open_source(spec, loaded.base_dir)


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


def check_lora(loaded: LoadedRecipe, local_base: Path | None) -> str:
    """What `synthgen validate` can say about a LoRA recipe without loading weights (privacy refused, base kind)."""
    from synthgen.training.lora_run import check_lora as check

    return check(loaded, local_base)


def last_checkpoint(folder: Path) -> str | None:
    """The newest resume point in a training folder, MSDM or LoRA (for the Ctrl-C message), or None."""
    from synthgen.training.checkpoints import latest_checkpoint_name

    return latest_checkpoint_name(Path(folder), ("lora", "vae", "unet"))
