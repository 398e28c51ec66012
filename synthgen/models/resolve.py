"""Where a recipe's model lives: a local pipeline folder, a hub id in the local cache, or a cached trained MSDM.

`check_model` answers without loading or training anything (for `synthgen validate`); `resolve_model`
returns a folder that `DiffusionPipeline.from_pretrained` can load, training first when the recipe asks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from synthgen.errors import SynthgenError
from synthgen.provenance import sha256_tree
from synthgen.recipe import LoadedRecipe
from synthgen.sources import open_readable, open_source

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    model_id: str
    trained_now: bool = False

    def sha256(self) -> str:
        return sha256_tree(self.path)


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _local_pipeline(loaded: LoadedRecipe, name: str) -> Path | None:
    """The folder `name` names (relative to the recipe, or absolute), if it exists."""
    candidate = loaded.resolve(name)
    if candidate.exists():
        if not (candidate / "model_index.json").is_file():
            raise SynthgenError(f"model.pretrained: {candidate} has no model_index.json (not a diffusers pipeline)")
        return candidate
    return None


def _hub_snapshot(name: str, revision: str | None) -> Path:
    if not HUB_ID.match(name):
        raise SynthgenError(f"model.pretrained: '{name}' is neither an existing folder nor a hub id (owner/name)")
    from diffusers import DiffusionPipeline

    try:
        return Path(DiffusionPipeline.download(name, revision=revision, local_files_only=offline()))
    except Exception as error:  # noqa: BLE001 - hub errors come in many types; all mean "not available"
        hint = " (offline: HF_HUB_OFFLINE is set and it is not in the local cache)" if offline() else ""
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SynthgenError(f"model.pretrained: cannot get '{name}'{hint}: {reason}") from None


def check_model(loaded: LoadedRecipe) -> str:
    """Everything `resolve_model` would need, checked without training or downloading; returns a summary."""
    model = loaded.recipe.model
    if model.pretrained:
        base = _check_pretrained(loaded)
        if model.lora is None:
            return base
        from synthgen.training.lora import check_lora

        return base + "; " + check_lora(loaded, _local_pipeline(loaded, model.pretrained))
    source = open_readable(model.train.data, loaded.base_dir, "model.train.data")
    return f"train MSDM-{model.train.preset} on {source.description}"


def _check_pretrained(loaded: LoadedRecipe) -> str:
    """The pretrained folder exists, or its hub id is cached (or may be downloaded)."""
    model = loaded.recipe.model
    local = _local_pipeline(loaded, model.pretrained)
    if local is not None:
        return f"pretrained pipeline {local}"
    if not HUB_ID.match(model.pretrained):
        raise SynthgenError(
            f"model.pretrained: '{model.pretrained}' is neither an existing folder nor a hub id (owner/name)"
        )
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model.pretrained, "model_index.json", revision=model.revision)
    if not isinstance(cached, str) and offline():
        raise SynthgenError(f"model.pretrained: hub id '{model.pretrained}' is not in the local cache (offline)")
    return f"hub pipeline {model.pretrained}" + ("" if isinstance(cached, str) else " (will download)")


def pretrained_path(loaded: LoadedRecipe) -> Path:
    """The folder of `model.pretrained`: the local folder it names, else its hub snapshot (downloaded if allowed)."""
    model = loaded.recipe.model
    local = _local_pipeline(loaded, model.pretrained)
    return local if local is not None else _hub_snapshot(model.pretrained, model.revision)


def resolve_model(loaded: LoadedRecipe, progress: Callable[[str, int, int], None] | None = None) -> ResolvedModel:
    """A loadable pipeline folder for the recipe's model; trains (and caches) an MSDM or a LoRA when asked."""
    model = loaded.recipe.model
    if model.pretrained:
        path = pretrained_path(loaded)
        if model.lora is None:
            return ResolvedModel(path, model.pretrained)
        return _resolve_lora(loaded, path, progress)
    from synthgen.train import cache_root, recipe_training_key, train_from_recipe

    config = model.train
    source = open_source(config.data, loaded.base_dir)
    key = recipe_training_key(loaded, source.fingerprint())  # covers privacy and the prompts, not just settings
    path = cache_root() / "models" / f"msdm-{config.preset}-{key}"
    model_id = f"synthgen/msdm-{config.preset}-{key}"
    if (path / "model_index.json").is_file():
        return ResolvedModel(path, model_id)
    train_from_recipe(loaded, source, path, progress, device=loaded.recipe.sampling.device)
    return ResolvedModel(path, model_id, trained_now=True)


def _resolve_lora(loaded: LoadedRecipe, base: Path, progress: Callable[[str, int, int], None] | None) -> ResolvedModel:
    """The cached LoRA fine-tune of `base` for these settings and data, trained first when missing."""
    from synthgen.train import cache_root
    from synthgen.training.lora import lora_key, train_lora

    config = loaded.recipe.model.lora
    source = open_source(config.data, loaded.base_dir)
    base_sha256 = sha256_tree(base)
    key = lora_key(config, source.fingerprint(), base_sha256)
    path = cache_root() / "models" / f"lora-{key}"
    model_id = f"synthgen/lora-{key}"
    if (path / "model_index.json").is_file():
        return ResolvedModel(path, model_id)
    device = loaded.recipe.sampling.device
    train_lora(loaded, source, path, progress, device, base=base, base_sha256=base_sha256)
    return ResolvedModel(path, model_id, trained_now=True)
