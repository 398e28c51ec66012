"""Every check a build makes before it starts, with no side effects (`synthgen validate`, and build's preflight)."""

from __future__ import annotations

import json
from pathlib import Path

from synthgen.errors import SynthgenError
from synthgen.recipe import LoadedRecipe


def check_output_dir(out_dir: Path, loaded: LoadedRecipe, overwrite: bool = False) -> str:
    """The output folder must be new, empty, or a build of this very recipe (or --overwrite)."""
    state_file = out_dir / ".synthgen" / "build.json"
    if out_dir.exists() and not out_dir.is_dir():
        raise SynthgenError(f"output.dir: {out_dir} exists and is a file")
    if state_file.is_file():
        try:
            same = json.loads(state_file.read_text()).get("recipe_sha256") == loaded.sha256
        except (OSError, ValueError):
            same = False
        if same:
            return f"{out_dir} (resumes the build there)"
        if not overwrite:
            raise SynthgenError(
                f"output.dir: {out_dir} holds a build of a different recipe (or an edited one); "
                "pass --overwrite to replace it or choose another --out"
            )
        return f"{out_dir} (its earlier build will be replaced)"
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise SynthgenError(f"output.dir: {out_dir} exists and is not a synthgen output; choose an empty or new folder")
    return str(out_dir)


def validate_recipe(loaded: LoadedRecipe, out_dir: str | Path | None = None, overwrite: bool = False) -> list[str]:
    """Raise `SynthgenError` at the first problem; otherwise return lines describing what a build would do.

    Its message is `recipe-file: field.path: reason`, like the schema errors of `load_recipe`.
    """
    try:
        return _validate(loaded, out_dir, overwrite)
    except SynthgenError as error:
        raise SynthgenError(f"{loaded.path}: {error}") from None


def _validate(loaded: LoadedRecipe, out_dir: str | Path | None, overwrite: bool) -> list[str]:
    from synthgen.generate import pick_device
    from synthgen.models.resolve import check_model
    from synthgen.plan import make_plan
    from synthgen.sources import open_readable

    recipe = loaded.recipe
    plan = make_plan(recipe)
    lines = [f"recipe {recipe.name} ({loaded.path})"]
    counts = ", ".join(f"{label} {n}" for label, n in plan.class_counts().items())
    lines.append(f"plan: {len(plan.jobs)} images in {len(plan.shards)} shard(s): {counts}")
    lines.append(f"model: {check_model(loaded)}")
    audit_spec = recipe.audit_data()
    if audit_spec is not None:
        field = (
            "audit.data"
            if recipe.audit.data is not None
            else ("model.lora.data" if recipe.model.lora else "model.train.data")
        )
        source = open_readable(audit_spec, loaded.base_dir, field)
        from synthgen.audit.auditor import get_detector

        try:
            get_detector(recipe.audit.embedder)
        except SynthgenError as error:
            raise SynthgenError(f"audit.embedder: {error}") from None
        lines.append(
            f"audit: {recipe.audit.embedder} similarity >= {recipe.audit.threshold} against {source.description}"
            f" ({recipe.audit.action})"
        )
    else:
        lines.append("audit: disabled")
    lines.append(f"device: {pick_device(recipe.sampling.device)}")
    try:
        lines.append(f"output: {check_output_dir(loaded.output_dir(out_dir), loaded, overwrite)}")
    except SynthgenError as error:
        if out_dir is None:
            raise
        raise SynthgenError(str(error).replace("output.dir:", "--out:", 1)) from None  # name what the user set
    return lines
