"""Where a recipe's `model.pretrained` pipeline lives: the local folder it names, else its hub snapshot.

Below both of its users (`synthgen.resolve`, which loads the pipeline, and LoRA training, which fine-tunes
it): nothing here trains or loads weights. A local folder is tried first; a hub id (`owner/name`) is only
downloaded when HF_HUB_OFFLINE allows it.
"""

from __future__ import annotations

from pathlib import Path

from synthgen.errors import SynthgenError
from synthgen.models.safe_weights import check_pipeline_folder
from synthgen.recipe import LoadedRecipe
from synthgen.runtime import HUB_ID, first_line, offline


def local_pipeline(loaded: LoadedRecipe, name: str) -> Path | None:
    """The folder `name` names (relative to the recipe, or absolute), if it exists."""
    candidate = loaded.resolve(name)
    if candidate.exists():
        if not (candidate / "model_index.json").is_file():
            raise SynthgenError(f"model.pretrained: {candidate} has no model_index.json (not a diffusers pipeline)")
        return candidate
    return None


def hub_snapshot(name: str, revision: str | None) -> Path:
    """The local snapshot of hub pipeline `name` (downloaded first unless offline)."""
    if not HUB_ID.match(name):
        raise SynthgenError(f"model.pretrained: '{name}' is neither an existing folder nor a hub id (owner/name)")
    from diffusers import DiffusionPipeline

    try:
        return Path(DiffusionPipeline.download(name, revision=revision, local_files_only=offline()))
    except Exception as error:  # noqa: BLE001 - hub errors come in many types; all mean "not available"
        hint = " (offline: HF_HUB_OFFLINE is set and it is not in the local cache)" if offline() else ""
        raise SynthgenError(f"model.pretrained: cannot get '{name}'{hint}: {first_line(error)}") from None


def check_pretrained(loaded: LoadedRecipe) -> str:
    """The pretrained folder exists, or its hub id is cached (or may be downloaded); returns a summary."""
    model = loaded.recipe.model
    local = local_pipeline(loaded, model.pretrained)
    if local is not None:
        check_pipeline_folder(local, "model.pretrained", model.allow_pickle)
        return f"pretrained pipeline {local}"
    if not HUB_ID.match(model.pretrained):
        raise SynthgenError(
            f"model.pretrained: '{model.pretrained}' is neither an existing folder nor a hub id (owner/name)"
        )
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model.pretrained, "model_index.json", revision=model.revision)
    if isinstance(cached, str):
        check_pipeline_folder(Path(cached).parent, "model.pretrained", model.allow_pickle)
    elif offline():
        raise SynthgenError(f"model.pretrained: hub id '{model.pretrained}' is not in the local cache (offline)")
    return f"hub pipeline {model.pretrained}" + ("" if isinstance(cached, str) else " (will download)")


def pretrained_path(loaded: LoadedRecipe) -> Path:
    """The folder of `model.pretrained`: the local folder it names, else its hub snapshot (downloaded if allowed)."""
    model = loaded.recipe.model
    local = local_pipeline(loaded, model.pretrained)
    return local if local is not None else hub_snapshot(model.pretrained, model.revision)
