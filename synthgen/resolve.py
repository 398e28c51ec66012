"""Where a recipe's model lives: a local pipeline folder, a hub id in the local cache, or a cached trained model.

`check_model` answers without loading or training anything (for `synthgen validate`); `resolve_model`
returns a folder that `DiffusionPipeline.from_pretrained` can load, training first (through `synthgen.train`,
the one front door of training) when the recipe asks for an MSDM or a LoRA fine-tune that is not cached yet.
Trained models are cached under `$SYNTHGEN_CACHE/models`, named after their key (`train.recipe_training_key`,
`train.lora_key`). Their ids (`synthgen://msdm-tiny-<key>`, `synthgen://lora-<key>`) cannot be mistaken
for hub ids; a hub pipeline keeps its hub id and a local pipeline folder is named by its resolved path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from synthgen.models.locate import check_pretrained, hub_snapshot, local_pipeline
from synthgen.models.safe_weights import check_pipeline_folder
from synthgen.provenance import sha256_tree
from synthgen.recipe import LoadedRecipe
from synthgen.runtime import Progress, cache_root
from synthgen.sources import open_readable, open_source
from synthgen.train import check_lora, lora_key, recipe_training_key, train_from_recipe

MODEL_SCHEME = "synthgen://"  # ids of models synthgen trained (the folder is in the manifest's `model.path`)


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    model_id: str
    trained_now: bool = False
    allow_pickle: bool = False  # the recipe's model.allow_pickle, for a pretrained pipeline used as is

    def sha256(self) -> str:
        return sha256_tree(self.path)


def check_model(loaded: LoadedRecipe) -> str:
    """Everything `resolve_model` would need, checked without training or downloading; returns a summary."""
    model = loaded.recipe.model
    if model.pretrained:
        base = check_pretrained(loaded)
        if model.lora is None:
            return base
        return base + "; " + check_lora(loaded, local_pipeline(loaded, model.pretrained))
    source = open_readable(model.train.data, loaded.base_dir, "model.train.data")
    return f"train MSDM-{model.train.preset} on {source.description}"


def resolve_model(
    loaded: LoadedRecipe, progress: Progress | None = None, notify: Callable[[str], None] | None = None
) -> ResolvedModel:
    """A loadable pipeline folder for the recipe's model; trains (and caches) an MSDM or a LoRA when asked."""
    model = loaded.recipe.model
    if model.pretrained:
        local = local_pipeline(loaded, model.pretrained)
        path = local.resolve() if local is not None else hub_snapshot(model.pretrained, model.revision)
        if model.lora is None:
            check_pipeline_folder(path, "model.pretrained", model.allow_pickle)  # a hub snapshot is checked here
            model_id = str(path) if local is not None else model.pretrained
            return ResolvedModel(path, model_id, allow_pickle=model.allow_pickle)
        return _resolve_lora(loaded, path, progress, notify)
    config = model.train
    source = open_source(config.data, loaded.base_dir)
    key = recipe_training_key(loaded, source.fingerprint())  # covers privacy and the prompts, not just settings
    path = cache_root() / "models" / f"msdm-{config.preset}-{key}"
    model_id = f"{MODEL_SCHEME}msdm-{config.preset}-{key}"
    if (path / "model_index.json").is_file():
        return ResolvedModel(path, model_id)
    train_from_recipe(loaded, source, path, progress, device=loaded.recipe.sampling.device, notify=notify)
    return ResolvedModel(path, model_id, trained_now=True)


def _resolve_lora(
    loaded: LoadedRecipe, base: Path, progress: Progress | None, notify: Callable[[str], None] | None
) -> ResolvedModel:
    """The cached LoRA fine-tune of `base` for these settings and data, trained first when missing."""
    config = loaded.recipe.model.lora
    check_pipeline_folder(base, "model.pretrained", loaded.recipe.model.allow_pickle)  # before training on it
    source = open_source(config.data, loaded.base_dir)
    base_sha256 = sha256_tree(base)
    key = lora_key(config, source.fingerprint(), base_sha256)
    path = cache_root() / "models" / f"lora-{key}"
    model_id = f"{MODEL_SCHEME}lora-{key}"
    if (path / "model_index.json").is_file():
        return ResolvedModel(path, model_id)
    device = loaded.recipe.sampling.device
    train_from_recipe(loaded, source, path, progress, device, base=base, base_sha256=base_sha256, notify=notify)
    return ResolvedModel(path, model_id, trained_now=True)
