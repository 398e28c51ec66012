"""Every check a build makes before it starts, with no side effects (`synthgen validate`, and build's preflight)."""

from __future__ import annotations

from pathlib import Path

from synthgen.errors import SynthgenError
from synthgen.output.folder import OutputFolder
from synthgen.recipe import LoadedRecipe
from synthgen.runtime import pick_device, tidy_path


def validate_recipe(
    loaded: LoadedRecipe, out_dir: str | Path | None = None, overwrite: bool = False, deep: bool = False
) -> list[str]:
    """Raise `SynthgenError` at the first problem; otherwise return lines describing what a build would do.

    Its message is `recipe-file: field.path: reason`, like the schema errors of `load_recipe`. Lines starting
    with `warning: ` are warnings (e.g. unreadable images the build will skip). `deep` decodes every image of
    the data sources instead of a sample.
    """
    try:
        return _validate(loaded, out_dir, overwrite, deep)
    except SynthgenError as error:
        raise SynthgenError(f"{tidy_path(loaded.path)}: {error}") from None


def _validate(loaded: LoadedRecipe, out_dir: str | Path | None, overwrite: bool, deep: bool) -> list[str]:
    from synthgen.plan import make_plan
    from synthgen.resolve import check_model
    from synthgen.sources import open_readable

    recipe = loaded.recipe
    plan = make_plan(recipe)
    lines = [f"recipe {recipe.name} ({tidy_path(loaded.path)})"]
    counts = ", ".join(f"{label} {n}" for label, n in plan.class_counts().items())
    lines.append(f"plan: {len(plan.jobs)} images in {len(plan.shards)} shard(s): {counts}")
    lines.append(f"model: {check_model(loaded)}")
    lines += _data_lines(loaded, deep)
    lines += _split_lines(loaded)
    audit_spec = recipe.audit_data()
    if audit_spec is not None:
        field = (
            "audit.data"
            if recipe.audit.data is not None
            else ("model.lora.data" if recipe.model.lora else "model.train.data")
        )
        source = open_readable(audit_spec, loaded.base_dir, field)
        from synthgen.audit.detection.detector import get_detector

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
        lines.append(f"output: {OutputFolder(loaded.output_dir(out_dir)).check(loaded, overwrite)}")
    except SynthgenError as error:
        if out_dir is None:
            raise
        raise SynthgenError(str(error).replace("output.dir:", "--out:", 1)) from None  # name what the user set
    return lines


def _data_lines(loaded: LoadedRecipe, deep: bool) -> list[str]:
    """The data checks (sources/checks.py) of the training data (with the classes) and of separate audit data."""
    from synthgen.sources.checks import check_data

    recipe = loaded.recipe
    lines = []
    training = recipe.model.training_data()
    if training is not None:
        field = "model.lora.data" if recipe.model.lora else "model.train.data"
        lines += check_data(training, loaded.base_dir, field, classes=recipe.class_labels(), deep=deep)
    if recipe.audit.enabled and recipe.audit.data is not None:
        lines += check_data(recipe.audit.data, loaded.base_dir, "audit.data", deep=deep)
    if recipe.audit.enabled and recipe.audit.holdout is not None:
        lines += check_data(recipe.audit.holdout, loaded.base_dir, "audit.holdout", deep=deep)
    if recipe.eval is not None and recipe.eval.enabled:
        for name in ("real", "test"):
            spec = getattr(recipe.eval, name)
            if spec is not None:
                lines += check_data(spec, loaded.base_dir, f"eval.{name}", classes=recipe.class_labels(), deep=deep)
    return lines


def _split_lines(loaded: LoadedRecipe) -> list[str]:
    """`split_by` names a column the training data has (or is `sequence`)."""
    from synthgen.sources import open_source
    from synthgen.sources.groups import check_split_column

    model = loaded.recipe.model
    loop = model.train or model.lora
    if loop is None or loop.split_by is None:
        return []
    field = "model.lora.split_by" if model.lora else "model.train.split_by"
    return [check_split_column(open_source(loop.data, loaded.base_dir), loop.split_by, field)]
