"""`synthgen build`: recipe → plan → model → generate → audit → write, one shard at a time.

Shard `i` of the plan is the unit of work and of resumption: a shard is either completely on disk (files plus
a marker with their checksums) or redone. The audit log of each finished shard is kept beside its marker, so
the final report covers every shard even when the build was interrupted and resumed.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthgen import __version__
from synthgen.atomic import atomic_path, write_json, write_text
from synthgen.errors import SynthgenError
from synthgen.plan import Job, Plan, Shard, make_plan
from synthgen.recipe import LoadedRecipe
from synthgen.sample import Sample
from synthgen.validate import check_output_dir

STATE_DIR = ".synthgen"
OWNED = ("data", "webdataset", "audit", STATE_DIR, "manifest.json", "README.md", "recipe.yaml", "preview.png")


class Reporter:
    """What a build tells the user; the CLI passes a rich implementation, Python callers may pass none."""

    def log(self, message: str, warning: bool = False) -> None:  # noqa: B027 - optional hook
        """Plain text (no markup); `warning` marks something the user should look at."""

    def progress(self, stage: str, done: int, total: int | None) -> None:  # noqa: B027 - optional hook
        pass


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


def prepare_output(out_dir: Path, loaded: LoadedRecipe, overwrite: bool) -> None:
    """Claim the output folder for this recipe (`check_output_dir` decides whether that is allowed)."""
    check_output_dir(out_dir, loaded, overwrite)
    state_file = out_dir / STATE_DIR / "build.json"
    if state_file.is_file() and json.loads(state_file.read_text()).get("recipe_sha256") == loaded.sha256:
        return
    if state_file.is_file():  # another recipe's build, and --overwrite was given
        for name in OWNED:
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(state_file, {"recipe_sha256": loaded.sha256, "recipe_name": loaded.recipe.name})


def lock_output(out_dir: Path):
    """Hold an exclusive lock on the output folder for this process, so two builds never interleave shards."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no advisory locks; builds there are not guarded
        return None
    handle = open(out_dir / STATE_DIR / "lock", "w")  # noqa: SIM115 - held open until the process ends
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SynthgenError(
            f"{out_dir}: another synthgen build is writing here; wait for it or use another --out"
        ) from None
    return handle


class ShardBuilder:
    """Generates one shard's samples, audits them and replaces dropped copies with fresh seeds."""

    def __init__(self, loaded: LoadedRecipe, generator: Callable[[], Any], auditor, reporter: Reporter):
        self.recipe = loaded.recipe
        self.generator = generator
        self.auditor = auditor
        self.reporter = reporter

    def run(self, shard: Shard) -> tuple[list[Sample], Any]:
        from synthgen.audit import AuditLog

        log = AuditLog(self.auditor) if self.auditor else None
        kept: dict[str, Sample] = {}
        pending: list[Job] = list(shard.jobs)
        audit = self.recipe.audit
        while pending:
            samples = self._generate(pending)
            if log is None:
                kept.update((s.key, s) for s in samples)
                break
            retry: list[Job] = []
            for job, sample, verdict in zip(pending, samples, self.auditor.check(samples), strict=True):
                sample.metadata.update(
                    audit_embedder=self.auditor.detector.name,
                    audit_threshold=self.auditor.threshold,
                    audit_similarity=verdict.similarity,
                    audit_flagged=verdict.flagged,
                )
                drop = verdict.flagged and audit.action == "drop"
                log.add(sample, verdict, dropped=drop, attempt=job.attempt)
                if not drop:
                    kept[job.key] = sample
                elif job.attempt < audit.max_retries:
                    retry.append(job.retry())
                else:
                    self.reporter.log(f"{job.key}: still a copy after {job.attempt + 1} tries; left out", warning=True)
            pending = retry
        return [kept[job.key] for job in shard.jobs if job.key in kept], log

    def _generate(self, jobs: list[Job]) -> list[Sample]:
        return self.generator().generate(jobs, lambda done, total: self.reporter.progress("generating", done, total))


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
    audit = loaded.recipe.audit
    auditor = Auditor.from_source(
        open_source(spec, loaded.base_dir),
        audit.embedder,
        audit.threshold,
        reporter.progress,
        target_fpr=audit.target_fpr,
        index=audit.index,
    )
    if auditor.train_skipped:
        first = auditor.train_skipped[0]
        reporter.log(
            f"audit data: skipped {len(auditor.train_skipped)} unreadable image(s), e.g. "
            f"{first.key}: {first.reason} (listed in audit/summary.json)",
            warning=True,
        )
    return auditor


def build(
    loaded: LoadedRecipe,
    out_dir: str | Path | None = None,
    *,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> BuildResult:
    """Build (or resume) the dataset a recipe describes; returns what was written."""
    from synthgen.generate import Generator, load_model, pick_device, read_model_info
    from synthgen.models.resolve import resolve_model
    from synthgen.shards import ShardSet, load_completed

    reporter = reporter or Reporter()
    recipe = loaded.recipe
    out = loaded.output_dir(out_dir)
    plan = make_plan(recipe)
    device = pick_device(recipe.sampling.device)
    prepare_output(out, loaded, overwrite)
    lock = lock_output(out)
    try:
        with atomic_path(out / "recipe.yaml") as tmp:
            shutil.copyfile(loaded.path, tmp)
        resolved = resolve_model(loaded, reporter.progress)
        reporter.log(f"model: {resolved.model_id} ({'trained now' if resolved.trained_now else 'cached'})")
        model_sha256 = resolved.sha256()
        dp = read_model_info(resolved.path).get("dp")
        provenance = _provenance(loaded, resolved.model_id, model_sha256, dp)

        @functools.cache
        def generator() -> Generator:  # loaded on first use: a finished build never loads the weights
            return Generator(
                load_model(resolved.path, resolved.model_id, model_sha256, device), recipe.sampling, provenance
            )

        auditor = _auditor(loaded, reporter)
        shard_set = ShardSet(out, recipe.output.formats, recipe.output.image_format, recipe.output.jpeg_quality)
        builder = ShardBuilder(loaded, generator, auditor, reporter)
        on_disk = load_completed(out)  # each finished shard's files are hashed once, here
        records = {}
        written = resumed = 0
        for shard in plan.shards:
            state_file = _audit_state(out, shard.index)
            previous = on_disk.get(shard.index)
            if shard_set.is_complete(shard.index, previous) and (auditor is None or state_file.is_file()):
                records[shard.index] = previous
                resumed += 1
            else:
                samples, log = builder.run(shard)
                records[shard.index] = shard_set.write_shard(shard.index, samples)
                if log is not None:
                    write_json(state_file, log.state())
                written += 1
            reporter.progress("shards", written + resumed, len(plan.shards))
        result = _finish(loaded, out, plan, records, auditor, provenance, dp)
    finally:
        if lock is not None:
            lock.close()
    result.shards_written, result.shards_resumed = written, resumed
    return result


def _audit_state(out: Path, index: int) -> Path:
    return out / STATE_DIR / "audit" / f"shard-{index:05d}.json"


def _finish(
    loaded: LoadedRecipe, out: Path, plan: Plan, records: dict, auditor, provenance: dict, dp: dict | None
) -> BuildResult:
    """Everything that describes the finished shards (`records`, by index): audit report, manifest, card."""
    from synthgen.audit import AuditLog
    from synthgen.card import write_dataset_card
    from synthgen.preview import write_preview
    from synthgen.shards import write_manifest

    recipe = loaded.recipe
    class_counts: dict[str, int] = {}
    for record in records.values():
        for label, n in record.class_counts.items():
            class_counts[label] = class_counts.get(label, 0) + n
    wanted = plan.class_counts()
    shortfall = {label: n - class_counts.get(label, 0) for label, n in wanted.items() if class_counts.get(label, 0) < n}

    audit_summary = audit_brief = None
    if auditor is not None:
        final_log = AuditLog(auditor)
        for shard in plan.shards:
            final_log.merge(json.loads(_audit_state(out, shard.index).read_text()))
        audit_summary = final_log.write(out / "audit", candidates_skipped=[], extra={"action": recipe.audit.action})
        audit_brief = {
            "embedder": audit_summary["embedder"],
            "threshold": audit_summary["threshold"],
            "action": recipe.audit.action,
            "checked": audit_summary["n_candidates"],
            "flagged": audit_summary["n_flagged"],
            "dropped": audit_summary["n_dropped"],
            "max_similarity": audit_summary["similarity"]["max"],
        }
    model = {"id": provenance["model_id"], "sha256": provenance["model_sha256"]}
    write_manifest(
        out,
        records,
        {
            "recipe": {"name": recipe.name, "sha256": loaded.sha256, "file": "recipe.yaml"},
            "model": model,
            "sampling": recipe.sampling.model_dump(mode="json"),
            "audit": audit_brief,
            "dp": dp,
            "planned_class_counts": wanted,
            "shortfall": shortfall,
        },
    )
    preview = write_preview(out, list(recipe.classes))
    write_dataset_card(
        out,
        name=recipe.name,
        description=recipe.description,
        domain=recipe.domain,
        class_counts=class_counts,
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
    write_text(out / STATE_DIR / "done", "complete\n")
    return BuildResult(out, plan, class_counts, 0, 0, model["id"], audit_summary, shortfall)
