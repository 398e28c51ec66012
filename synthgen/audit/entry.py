"""The audit of a set of images: `run_audit`, what `synthgen audit` runs (and Python callers).

Copy audit (+ privacy metrics, + holdout) of the candidates, and membership inference when a model is given;
each part runs only when its inputs are given (candidates: copy audit and metrics; model + holdout: membership
inference). The build audits the images it generates with the same pieces: an `Auditor` fitted by
`Auditor.from_source` (whose defaults are the recipe's) and an `AuditLog`, and measures the privacy
metrics of its finished shards with `privacy_metrics` (the same computation as `run_audit`'s).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from synthgen.atomic import write_json, write_text
from synthgen.audit.detection.auditor import (
    DEFAULT_DETECTOR,
    DEFAULT_GROUP_BY,
    DEFAULT_INDEX,
    DEFAULT_TARGET_FPR,
    DEFAULT_THRESHOLD,
    Auditor,
    skipped_note,
)
from synthgen.audit.detection.detector import Detector
from synthgen.audit.index.embedders import Embedder
from synthgen.audit.index.train_index import BATCH_SIZE, batched, source_total
from synthgen.audit.privacy.membership import MIAConfig, run_membership, write_scores
from synthgen.audit.privacy.metrics import MetricsInputs, embed_into
from synthgen.audit.report.audit_log import AuditLog
from synthgen.audit.report.html_report import render_report
from synthgen.audit.report.summary import membership_only_summary, skipped_block, source_block
from synthgen.errors import SynthgenError
from synthgen.runtime import Progress, use_cpu_threads
from synthgen.sources.base import Source


def run_audit(
    train: Source,
    candidates: Source | None,
    out_dir: str | Path,
    *,
    embedder: str | Embedder | Detector = DEFAULT_DETECTOR,
    threshold: float | str = DEFAULT_THRESHOLD,
    target_fpr: float = DEFAULT_TARGET_FPR,
    index: str = DEFAULT_INDEX,
    group_by: str = DEFAULT_GROUP_BY,
    group_pattern: str | None = None,
    privacy_metrics: bool = True,
    holdout: Source | None = None,
    model: str | Path | None = None,
    max_images: int | None = None,
    mia: MIAConfig | None = None,
    show_training_images: bool = False,
    progress: Progress | None = None,
    cache: bool | str | Path = False,
) -> dict[str, Any]:
    """Run what the inputs allow; write summary.json + report.html (+ audit.parquet, membership.parquet).

    `embedder` / `threshold` / `target_fpr` / `index` choose the copy detector, and `group_by` / `group_pattern`
    the groups (patients) its calibration keeps apart, as the recipe's `audit` block does (same defaults).
    `privacy_metrics`: also measure the embedding-space privacy metrics (against `holdout` when given).
    `max_images` bounds the membership inference (per side) and the holdout images the metrics embed.
    `cache`: keep the fitted training index and its calibration on disk (`synthgen audit`: True; see fit_cache.py).
    """
    if candidates is None and model is None:
        raise SynthgenError("nothing to audit: give --candidates (copy audit) and/or --model (membership inference)")
    if model is not None and holdout is None:
        raise SynthgenError("--model needs --holdout: images of the same domain that the model never saw")
    out_dir = Path(out_dir)
    use_cpu_threads(("faiss",))  # membership inference runs the model with torch; metrics search with FAISS
    membership = None
    if model is not None:
        assert holdout is not None
        config = replace(mia or MIAConfig(), max_images=max_images)
        membership = _membership(model, train, holdout, config, out_dir, progress)
    holdout_info = None if holdout is None else _describe(holdout)
    if candidates is None:
        assert membership is not None and holdout_info is not None
        return _write_membership_only(out_dir, membership, _describe(train), holdout_info)
    auditor = Auditor.from_source(
        train,
        embedder,
        threshold,
        progress,
        target_fpr=target_fpr,
        index=index,
        group_by=group_by,
        group_pattern=group_pattern,
        cache=cache,
    )
    inputs = None
    if privacy_metrics:
        inputs = reference_vectors(auditor, train, holdout, holdout_info, max_images, progress)
    log = _audit_candidates(auditor, candidates, inputs, progress)
    extra: dict[str, Any] = {}
    if inputs is not None:
        extra["metrics"] = compute_metrics_of(auditor, inputs, progress)
    if holdout_info is not None:
        extra["holdout"] = holdout_info
    if membership is not None:
        extra["membership"] = membership
    if progress:
        progress("writing report", 0, 1)
    summary = log.write(
        out_dir,
        candidates_skipped=list(candidates.skipped),
        show_training_images=show_training_images,
        train_source=train,
        extra=extra,
    )
    if progress:
        progress("writing report", 1, 1)
    return summary


def _membership(
    model: str | Path, train: Source, holdout: Source, config: MIAConfig, out_dir: Path, progress: Progress | None
) -> dict[str, Any]:
    """Membership inference of `model` (train = members, holdout = non-members); writes membership.parquet."""
    membership, members, nonmembers = run_membership(model, train, holdout, config, progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_scores(out_dir / "membership.parquet", members, nonmembers)
    return membership


def _write_membership_only(
    out_dir: Path, membership: dict[str, Any], train: dict[str, Any], holdout: dict[str, Any]
) -> dict[str, Any]:
    """summary.json and report.html of a run without candidates: membership inference only."""
    summary = membership_only_summary(membership, train=train, holdout=holdout)
    write_json(out_dir / "summary.json", summary)
    write_text(out_dir / "report.html", render_report(summary, np.zeros(0), []))
    return summary


def privacy_metrics(
    auditor: Auditor,
    train: Source,
    synthetic: Source,
    holdout: Source | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The summary's `metrics` (and `holdout` when given) for a finished set of synthetic images.

    What the build adds to its audit summary: the same inputs and computation as `run_audit`, with the synthetic
    images read back from `synthetic` (the build's published shards) rather than collected while auditing.
    """
    use_cpu_threads(("faiss",))
    holdout_info = None if holdout is None else _describe(holdout)
    inputs = reference_vectors(auditor, train, holdout, holdout_info, None, progress)
    embed_into(inputs, "synthetic", synthetic, auditor.embedder, progress=progress)
    extra: dict[str, Any] = {"metrics": compute_metrics_of(auditor, inputs, progress)}
    if holdout_info is not None:
        extra["holdout"] = holdout_info
    return extra


def compute_metrics_of(auditor: Auditor, inputs: MetricsInputs, progress: Progress | None) -> dict[str, Any]:
    """The privacy metrics of everything collected in `inputs`, at the auditor's embedding threshold."""
    if progress:  # one step of known length: an unknown total would render as 0/0
        progress("privacy metrics", 0, 1)
    metrics = inputs.compute(auditor.embedding_threshold)
    if progress:
        progress("privacy metrics", 1, 1)
    return metrics


def reference_vectors(
    auditor: Auditor,
    train: Source,
    holdout: Source | None,
    holdout_info: dict[str, Any] | None,
    max_images: int | None,
    progress: Progress | None,
) -> MetricsInputs:
    """The metrics' inputs holding the training embeddings and (at most `max_images`) holdout embeddings."""
    inputs = MetricsInputs()
    _train_vectors(auditor, train, inputs)
    if holdout is not None and holdout_info is not None:
        holdout_info["n"] = embed_into(
            inputs, "holdout", holdout, auditor.embedder, limit=max_images, progress=progress
        )
        holdout_info["skipped"] = skipped_block(list(holdout.skipped))
    return inputs


def _audit_candidates(
    auditor: Auditor, candidates: Source, inputs: MetricsInputs | None, progress: Progress | None
) -> AuditLog:
    """Judge every readable candidate, batch by batch; with `inputs`, collect their embeddings for the metrics."""
    log = AuditLog(auditor)
    total = source_total(candidates)
    for batch in batched(candidates, BATCH_SIZE):
        vectors = None
        if inputs is not None:  # embedded once: the metrics keep the vectors the detector searches with
            vectors = auditor.embed(batch)
            inputs.add("synthetic", vectors, [s.label for s in batch])
        log.extend(batch, auditor.check(batch, vectors))
        if progress:
            progress("auditing candidates", len(log.rows), total)
    if not log.rows:
        skipped = list(candidates.skipped)
        raise SynthgenError(f"no readable candidate images in {candidates.description}{skipped_note(skipped)}")
    return log


def _describe(source: Source, **extra: Any) -> dict[str, Any]:
    try:
        fingerprint: str | None = source.fingerprint()
    except (NotImplementedError, OSError):
        fingerprint = None
    return source_block(source.description, fingerprint, **extra)


def _train_vectors(auditor: Auditor, train: Source, inputs: MetricsInputs) -> None:
    """Training embeddings for the metrics: read back from the index when it keeps them, else embedded again."""
    vectors = getattr(auditor.index, "vectors", None)
    if vectors is not None:
        for start in range(0, len(vectors), 4096):
            inputs.add("train", np.asarray(vectors[start : start + 4096]))
    else:
        embed_into(inputs, "train", train, auditor.embedder)
