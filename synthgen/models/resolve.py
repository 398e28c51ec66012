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
    source = open_readable(model.train.data, loaded.base_dir, "model.train.data")
    return f"train MSDM-{model.train.preset} on {source.description}"


def resolve_model(loaded: LoadedRecipe, progress: Callable[[str, int, int], None] | None = None) -> ResolvedModel:
    """A loadable pipeline folder for the recipe's model; trains (and caches) an MSDM when asked."""
    model = loaded.recipe.model
    if model.pretrained:
        local = _local_pipeline(loaded, model.pretrained)
        path = local if local is not None else _hub_snapshot(model.pretrained, model.revision)
        return ResolvedModel(path, model.pretrained)
    from synthgen.train import cache_root, train_msdm, training_key

    config = model.train
    source = open_source(config.data, loaded.base_dir)
    key = training_key(config, source.fingerprint())
    path = cache_root() / "models" / f"msdm-{config.preset}-{key}"
    model_id = f"synthgen/msdm-{config.preset}-{key}"
    if (path / "model_index.json").is_file():
        return ResolvedModel(path, model_id)
    train_msdm(config, source, path, progress, device=loaded.recipe.sampling.device)
    return ResolvedModel(path, model_id, trained_now=True)
