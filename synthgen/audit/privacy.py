"""`synthgen audit` with the privacy extras: copy audit + privacy metrics (with a holdout set) + membership inference.

One entry point so the CLI stays thin; each part runs only when its inputs are given (candidates: copy audit and
metrics; model + holdout: membership inference). The copy audit itself is the `Auditor` / `AuditLog` of auditor.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from synthgen.atomic import write_json, write_text
from synthgen.audit.embedders import Embedder
from synthgen.audit.index import BATCH_SIZE, Progress, batched, source_total
from synthgen.audit.membership import MIAConfig, run_membership, write_scores
from synthgen.audit.metrics import MetricsInputs, embed_into
from synthgen.audit.summary import membership_only_summary, skipped_block, source_block
from synthgen.errors import SynthgenError
from synthgen.sources.base import Source


def _describe(source: Source, **extra: Any) -> dict[str, Any]:
    try:
        fingerprint: str | None = source.fingerprint()
    except (NotImplementedError, OSError):
        fingerprint = None
    return source_block(source.description, fingerprint, **extra)


def _train_vectors(auditor: Any, train: Source, inputs: MetricsInputs) -> None:
    """Training embeddings for the metrics: read back from the index when it keeps them, else embedded again."""
    vectors = getattr(auditor.index, "vectors", None)
    if vectors is not None:
        for start in range(0, len(vectors), 4096):
            inputs.add("train", np.asarray(vectors[start : start + 4096]))
    else:
        embed_into(inputs, "train", train, auditor.embedder)


def run_privacy_audit(
    train: Source,
    candidates: Source | None,
    out_dir: str | Path,
    *,
    holdout: Source | None = None,
    model: str | Path | None = None,
    embedder: str | Embedder = "pixel",
    threshold: float = 0.95,
    show_training_images: bool = False,
    max_images: int | None = None,
    mia: MIAConfig | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Run what the inputs allow and write summary.json + report.html (+ audit.parquet, membership.parquet).

    `max_images` bounds the membership inference (per side) and the holdout images the metrics embed.
    """
    if candidates is None and model is None:
        raise SynthgenError("nothing to audit: give --candidates (copy audit) and/or --model (membership inference)")
    if model is not None and holdout is None:
        raise SynthgenError("--model needs --holdout: images of the same domain that the model never saw")
    out_dir = Path(out_dir)
    membership = None
    if model is not None:
        assert holdout is not None
        config = replace(mia or MIAConfig(), max_images=max_images)
        membership, members, nonmembers = run_membership(model, train, holdout, config, progress)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_scores(out_dir / "membership.parquet", members, nonmembers)
    holdout_info = None if holdout is None else _describe(holdout)
    if candidates is None:
        assert membership is not None and holdout_info is not None
        summary = membership_only_summary(membership, train=_describe(train), holdout=holdout_info)
        from synthgen.audit.report import render_report

        write_json(out_dir / "summary.json", summary)
        write_text(out_dir / "report.html", render_report(summary, np.zeros(0), []))
        return summary
    return _copy_audit(
        train,
        candidates,
        out_dir,
        holdout=holdout,
        holdout_info=holdout_info,
        membership=membership,
        embedder=embedder,
        threshold=threshold,
        show_training_images=show_training_images,
        max_images=max_images,
        progress=progress,
    )


def _copy_audit(
    train: Source,
    candidates: Source,
    out_dir: Path,
    *,
    holdout: Source | None,
    holdout_info: dict[str, Any] | None,
    membership: dict[str, Any] | None,
    embedder: str | Embedder,
    threshold: float,
    show_training_images: bool,
    max_images: int | None,
    progress: Progress | None,
) -> dict[str, Any]:
    """The copy audit of auditor.py, with every embedding also collected for the privacy metrics."""
    from synthgen.audit.auditor import AuditLog, Auditor

    auditor = Auditor.from_source(train, embedder, threshold, progress)
    inputs = MetricsInputs()
    _train_vectors(auditor, train, inputs)
    if holdout is not None and holdout_info is not None:
        holdout_info["n"] = embed_into(
            inputs, "holdout", holdout, auditor.embedder, limit=max_images, progress=progress
        )
        holdout_info["skipped"] = skipped_block(list(holdout.skipped))
    log = AuditLog(auditor)
    total = source_total(candidates)
    for batch in batched(candidates, BATCH_SIZE):
        # Embedded here too (the Auditor keeps its embeddings to itself): the metrics need the global vectors.
        inputs.add("synthetic", auditor.embedder.embed([s.image for s in batch]), [s.label for s in batch])
        log.extend(batch, auditor.check(batch))
        if progress:
            progress("auditing candidates", len(log.rows), total)
    skipped = list(candidates.skipped)
    if not log.rows:
        reason = f" ({len(skipped)} skipped, e.g. {skipped[0].key}: {skipped[0].reason})" if skipped else ""
        raise SynthgenError(f"no readable candidate images in {candidates.description}{reason}")
    if progress:
        progress("privacy metrics", 0, None)
    extra: dict[str, Any] = {"metrics": inputs.compute(auditor.embedding_threshold)}
    if holdout_info is not None:
        extra["holdout"] = holdout_info
    if membership is not None:
        extra["membership"] = membership
    return log.write(
        out_dir,
        candidates_skipped=skipped,
        show_training_images=show_training_images,
        train_source=train,
        extra=extra,
    )
