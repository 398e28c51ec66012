"""`synthgen build`: recipe → plan → model → generate → audit → write, shard by shard.

Shard `i` of the plan is the unit of work and of resumption: a shard is either completely on disk (files plus
a marker with their checksums) or redone. An engine (`engines/`: this process, or Ray actors) runs the shards;
this process alone holds the folder's lock and writes markers, audit state and the manifest. The audit log of
each finished shard is kept beside its marker, so the final report covers every shard even when the build was
interrupted and resumed; the privacy metrics (and the holdout share, with `audit.holdout`) are measured in a
final pass over the finished shards.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthgen import __version__
from synthgen.atomic import atomic_path
from synthgen.engines import Engine, ModelRef, ShardRun
from synthgen.engines.local import LocalEngine
from synthgen.errors import SynthgenError
from synthgen.output.folder import OutputFolder
from synthgen.plan import Plan, make_plan
from synthgen.recipe import LoadedRecipe
from synthgen.runtime import Progress, Reporter, pick_device
from synthgen.shard_builder import ShardBuilder


@dataclass
class BuildResult:
    out_dir: Path
    plan: Plan
    class_counts: dict[str, int]
    shards_written: int
    shards_resumed: int
    model_id: str
    audit_summary: dict[str, Any] | None
    shortfall: dict[str, int] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)  # the manifest's `model` block
    eval_summary: dict[str, Any] | None = None  # eval/eval.json, when the recipe has an `eval:` block
    generation: dict[str, Any] | None = None  # streams, threads per stream, denoiser wait: when this run generated


def _provenance(loaded: LoadedRecipe, model_id: str, model_sha256: str, dp: dict | None) -> dict[str, Any]:
    """What every sample records about its origin; a recipe asking for privacy never gets a non-DP model."""
    if loaded.recipe.privacy is not None and (dp or {}).get("epsilon") is None:
        raise SynthgenError(
            f"privacy: the recipe asks for differential privacy, but model {model_id} has no privacy record "
            "(privacy.json); it was not trained with DP-SGD, so the dataset would carry no guarantee"
        )
    dp = dp or {}
    return {
        "recipe_name": loaded.recipe.name,
        "recipe_sha256": loaded.sha256,
        "model_id": model_id,
        "model_sha256": model_sha256,
        "dp_epsilon": dp.get("epsilon"),
        "dp_delta": dp.get("delta"),
    }


def _auditor(loaded: LoadedRecipe, reporter: Reporter):
    """The indexed audit data, or None when the recipe turns the audit off."""
    from synthgen.audit import Auditor
    from synthgen.sources import open_source

    spec = loaded.recipe.audit_data()
    if spec is None:
        return None
    source = open_source(spec, loaded.base_dir)
    auditor = Auditor.from_recipe(source, loaded.recipe.audit, reporter.progress, cache=True)  # kept on disk
    if auditor.train_skipped:
        first = auditor.train_skipped[0]
        reporter.log(
            f"audit data: skipped {len(auditor.train_skipped)} unreadable image(s), e.g. "
            f"{first.key}: {first.reason} (listed in audit/summary.json)",
            warning=True,
        )
    return auditor


def _check_audit_memory(loaded: LoadedRecipe) -> None:
    """Refuse an audit that cannot fit in memory now, before the model trains, not when its data is indexed."""
    from synthgen.audit import Auditor
    from synthgen.sources import open_source

    spec = loaded.recipe.audit_data()
    if spec is not None:
        Auditor.check_memory(open_source(spec, loaded.base_dir), loaded.recipe.audit)


def build(
    loaded: LoadedRecipe,
    out_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    reporter: Reporter | None = None,
    export_model: bool | None = None,
    engine: Engine | None = None,
) -> BuildResult:
    """Build (or resume) the dataset a recipe describes; returns what was written.

    `export_model` (None: the recipe's `output.export_model`) puts the model folder into the set as `model/`.
    `engine` runs the shards (None: this process; `engines.make_engine("ray", address)`: a Ray cluster).
    """
    from synthgen.generate import Generator
    from synthgen.models.loading import load_model, read_model_info
    from synthgen.output.model_export import model_record
    from synthgen.output.shard_set import ShardSet
    from synthgen.resolve import resolve_model

    reporter = reporter or Reporter()
    recipe = loaded.recipe
    folder = OutputFolder(loaded.output_dir(out_dir))
    out = folder.path
    plan = make_plan(recipe)
    device = pick_device(recipe.sampling.device)
    _check_audit_memory(loaded)
    folder.claim(loaded, overwrite)
    with folder.lock():
        with atomic_path(out / "recipe.yaml") as tmp:
            shutil.copyfile(loaded.path, tmp)
        resolved = resolve_model(loaded, reporter.progress, reporter.log)  # log: resuming, budget spent
        reporter.log(f"model: {resolved.model_id} ({'trained now' if resolved.trained_now else 'cached'})")
        model_sha256 = resolved.sha256()
        dp = read_model_info(resolved.path).get("dp")
        provenance = _provenance(loaded, resolved.model_id, model_sha256, dp)
        export = recipe.output.export_model if export_model is None else export_model
        model = model_record(out, resolved.path, resolved.model_id, model_sha256, export)
        if model["exported_path"]:
            reporter.log(f"model folder in the set: {out / model['exported_path']}")

        @functools.cache
        def generator() -> Generator:  # loaded on first use: a finished build never loads the weights
            pipeline = load_model(resolved.path, resolved.model_id, model_sha256, device, resolved.allow_pickle)
            return Generator(pipeline, recipe.sampling, provenance)

        auditor = _auditor(loaded, reporter)
        output = recipe.output
        shard_set = ShardSet(
            out, output.formats, output.image_format, output.jpeg_quality, classes=list(recipe.classes)
        )
        builder = ShardBuilder(loaded, generator, auditor, reporter)
        model_ref = ModelRef(str(resolved.path), resolved.model_id, model_sha256, resolved.allow_pickle)
        run = ShardRun(loaded, folder, plan, shard_set, builder, model_ref, provenance, reporter)
        done = (engine or LocalEngine()).run(run)
        generation = builder.wait.record() if builder.wait.calls else None  # None: nothing generated here
        if generation is not None:
            reporter.log(builder.wait.line())
        records, written, resumed = done.records, done.written, done.resumed
        result = _finish(loaded, folder, plan, records, auditor, provenance, dp, model, reporter.progress, generation)
        result.eval_summary = _evaluate(loaded, out, records, read_model_info(resolved.path), reporter)
    result.shards_written, result.shards_resumed = written, resumed
    return result


def _finish(
    loaded: LoadedRecipe,
    folder: OutputFolder,
    plan: Plan,
    records: dict,
    auditor,
    provenance: dict,
    dp: dict | None,
    model: dict[str, Any],
    progress: Progress | None = None,
    generation: dict[str, Any] | None = None,
) -> BuildResult:
    """Everything that describes the finished shards (`records`, by index): audit report, manifest, card."""
    from synthgen.output.dataset_card import write_dataset_card
    from synthgen.output.manifest import write_manifest
    from synthgen.output.preview import write_preview

    recipe, out = loaded.recipe, folder.path
    class_counts: dict[str, int] = {}
    for record in records.values():
        for label, n in record.class_counts.items():
            class_counts[label] = class_counts.get(label, 0) + n
    wanted = plan.class_counts()
    shortfall = {label: n - class_counts.get(label, 0) for label, n in wanted.items() if class_counts.get(label, 0) < n}

    audit_summary = _write_audit_report(loaded, folder, plan, records, auditor, progress) if auditor else None
    audit_brief = _audit_brief(audit_summary, recipe.audit.action) if audit_summary else None
    write_manifest(
        out,
        records,
        {
            "recipe": {"name": recipe.name, "sha256": loaded.sha256, "file": "recipe.yaml"},
            "classes": list(recipe.classes),
            "model": model,
            "sampling": recipe.sampling.model_dump(mode="json"),
            "audit": audit_brief,
            "dp": dp,
            "planned_class_counts": wanted,
            "shortfall": shortfall,
            "generation": generation,
        },
    )
    preview = write_preview(out, list(recipe.classes))
    write_dataset_card(
        out,
        name=recipe.name,
        description=recipe.description,
        domain=recipe.domain,
        class_counts=class_counts,
        classes=list(recipe.classes),
        model=model,
        formats=list(recipe.output.formats),
        provenance_summary={
            **{k: provenance[k] for k in ("model_id", "model_sha256", "recipe_name", "recipe_sha256")},
            "scheduler": recipe.sampling.scheduler,
            "steps": recipe.sampling.steps,
            "guidance_scale": recipe.sampling.guidance_scale,
            "synthgen_version": __version__,
        },
        audit_summary=audit_brief,
        dp=dp,
        preview=preview.name if preview else None,
    )
    folder.mark_done()
    return BuildResult(
        out, plan, class_counts, 0, 0, model["id"], audit_summary, shortfall, model, generation=generation
    )


def _write_audit_report(
    loaded: LoadedRecipe, folder: OutputFolder, plan: Plan, records: dict, auditor, progress: Progress | None
) -> dict[str, Any]:
    """One audit report over every shard's saved rows (so a resumed build's report covers all of them), with the
    privacy metrics (and holdout share, when `audit.holdout` is set) of the published shards, measured here."""
    from synthgen.audit import AuditLog
    from synthgen.audit.entry import privacy_metrics
    from synthgen.sources import open_source

    audit = loaded.recipe.audit
    final_log = AuditLog(auditor)
    for shard in plan.shards:
        final_log.merge(json.loads(folder.audit_state(shard.index).read_text()))
    spec = loaded.recipe.audit_data()
    assert spec is not None  # there is an auditor
    train = open_source(spec, loaded.base_dir)
    holdout = None if audit.holdout is None else open_source(audit.holdout, loaded.base_dir)
    extra = privacy_metrics(auditor, train, _published(folder.path, records), holdout, progress)
    return final_log.write(folder.path / "audit", candidates_skipped=[], extra={"action": audit.action, **extra})


def _published(out: Path, records: dict):
    """The finished shards as a source (Parquet when written, else WebDataset): the images as published."""
    from synthgen.sources.parquet import ParquetSource
    from synthgen.sources.spec import SourceSpec
    from synthgen.sources.webdataset import WebDatasetSource

    files = [out / f.path for i in sorted(records) for f in records[i].files if f.format == "parquet"]
    if files:
        columns = {"key_column": "key", "text_column": "prompt", "label_column": "label"}
        return ParquetSource(SourceSpec(type="parquet", path=str(out / "data"), **columns), out / "data", files)
    return WebDatasetSource(SourceSpec(type="webdataset", path=str(out / "webdataset")), out / "webdataset")


def _evaluate(
    loaded: LoadedRecipe, out: Path, records: dict, model_info: dict[str, Any], reporter: Reporter
) -> dict[str, Any] | None:
    """The recipe's `eval:` block over the finished set, into out/eval (skipped when eval.json is up to date)."""
    config = loaded.recipe.eval
    if config is None or not config.enabled:
        return None
    from synthgen.evaluation.entry import EvalRequest, run_eval

    shards = sorted(f.sha256 for record in records.values() for f in record.files)
    blob = json.dumps({"shards": shards, "recipe": loaded.sha256, "version": __version__}, sort_keys=True)
    key = hashlib.sha256(blob.encode()).hexdigest()
    done = out / "eval" / "eval.json"
    previous = json.loads(done.read_text()) if done.is_file() else {}
    if previous.get("build_key") == key:
        reporter.log(f"eval: up to date ({done})")
        return previous
    real = config.real or loaded.recipe.model.training_data()
    assert real is not None  # the recipe schema requires eval.real for a pretrained model
    has_parquet = any(f.format == "parquet" for record in records.values() for f in record.files)
    request = EvalRequest(
        real=real,
        synthetic=out if has_parquet else _published(out, records),  # a build folder: read as training code does
        out_dir=out / "eval",
        test=config.test,
        features=config.features,
        split_by=config.split_by,
        seeds=config.seeds,
        bootstrap=config.bootstrap,
        max_per_class=config.max_per_class,
        classifier_resolution=config.classifier_resolution,
        classifier_steps=config.classifier_steps,
        utility=config.utility,
        show_real_images=config.show_real_images,
        label_map={label: name for name, labels in loaded.recipe.class_labels().items() for label in labels},
        trained_on=(model_info.get("training_data") or {}).get("sha256"),
        base_dir=loaded.base_dir,
        extra={"build_key": key, "recipe": {"name": loaded.recipe.name, "sha256": loaded.sha256}},
    )
    return run_eval(request, reporter)


def _audit_brief(summary: dict[str, Any], action: str) -> dict[str, Any]:
    """The audit's headline numbers, as the manifest and the dataset card show them."""
    return {
        "embedder": summary["embedder"],
        "threshold": summary["threshold"],
        "action": action,
        "checked": summary["n_candidates"],
        "flagged": summary["n_flagged"],
        "dropped": summary["n_dropped"],
        "max_similarity": summary["similarity"]["max"],
    }
