"""Verdicts: a fitted detector plus the threshold that turns a candidate's similarity into "copy" or not.

`Auditor.from_source` is the one way an auditor is made (the build through `Auditor.from_recipe`,
`synthgen audit` through `synthgen.audit.entry.run_audit`), so both judge candidates alike; its defaults are
the recipe's `audit` defaults. The generator calls `check` on each batch so it can drop and regenerate copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from synthgen.audit.detection.calibrate import calibrate
from synthgen.audit.detection.copydetect import CopyDetector
from synthgen.audit.detection.detector import (
    SIMILARITY_DECIMALS,
    Detector,
    EmbeddingDetector,
    get_detector,
    parse_threshold,
)
from synthgen.audit.detection.evidence import Evidence
from synthgen.audit.detection.fit_cache import FitCache
from synthgen.audit.detection.fit_memory import check_fit_memory
from synthgen.audit.detection.grouping import AUTO, training_groups
from synthgen.audit.detection.parallel import match_in_chunks
from synthgen.audit.index.embedders import Embedder
from synthgen.audit.index.train_index import TrainIndex, source_total
from synthgen.errors import SynthgenError
from synthgen.runtime import Progress, use_cpu_threads
from synthgen.sample import Sample
from synthgen.sources.base import Skipped, Source

if TYPE_CHECKING:
    from synthgen.recipe import AuditConfig

# The recipe's `audit` defaults (recipe/schema.py `AuditConfig`; tests/test_audit.py checks that they agree).
DEFAULT_DETECTOR = "copydetect"
DEFAULT_THRESHOLD = "auto"
DEFAULT_TARGET_FPR = 0.01
DEFAULT_INDEX = "auto"
DEFAULT_GROUP_BY = AUTO  # calibration's groups: the split's column, else patient_id, else sequences


def skipped_note(skipped: list[Skipped]) -> str:
    """The tail of an error message, ' (3 skipped, e.g. key: reason)', or '' when nothing was skipped."""
    return f" ({len(skipped)} skipped, e.g. {skipped[0].key}: {skipped[0].reason})" if skipped else ""


@dataclass(frozen=True)
class Verdict:
    """How close a candidate is to the training data and whether that makes it a copy."""

    similarity: float
    nearest_train_key: str
    flagged: bool
    evidence: Evidence | None = None  # why (copydetect): transform, consistent matches, matched boxes; evidence.py


@dataclass
class Auditor:
    """A fitted detector plus the threshold that turns a similarity into a verdict."""

    detector: Detector
    threshold: float
    train_description: str
    train_fingerprint: str | None
    train_skipped: list[Skipped] = field(default_factory=list)
    calibration: dict[str, Any] | None = None  # how `threshold: auto` was derived
    workers: int | None = None  # threads `check` spreads candidates over (None: parallel.worker_count)
    cache_hit: bool = False  # the fitted detector came from the on-disk cache (fit_cache.py)

    @property
    def n_train(self) -> int:
        return self.detector.n_train

    @property
    def embedder(self) -> Embedder:
        """The detector's global embedder (privacy metrics); the detector's own name is `detector.name`."""
        return self.detector.embedder

    @property
    def index(self) -> TrainIndex:
        return self.detector.index

    @property
    def embedding_threshold(self) -> float | None:
        """The threshold when it applies to `embedder`'s cosine (embedding detectors), else None (copydetect)."""
        return self.threshold if isinstance(self.detector, EmbeddingDetector) else None

    @classmethod
    def from_source(
        cls,
        train: Source,
        embedder: str | Embedder | Detector = DEFAULT_DETECTOR,
        threshold: float | str = DEFAULT_THRESHOLD,
        progress: Progress | None = None,
        *,
        target_fpr: float = DEFAULT_TARGET_FPR,
        index: str = DEFAULT_INDEX,
        group_by: str = DEFAULT_GROUP_BY,
        group_pattern: str | None = None,
        cache: bool | str | Path = False,
        workers: int | None = None,
    ) -> Auditor:
        """Fit the detector on every readable training image (unreadable ones are recorded, not fatal).

        `threshold="auto"` calibrates it on the training set itself (see calibrate.py), leaving each image's
        group (`group_by` column + `group_pattern` on file names; grouping.py) out of its own search.
        `cache`: keep the fitted detector and its calibration on disk (True: under `cache_root()`, or a folder)
        and reuse them while the data, settings and code are unchanged. `workers`: threads for fit and `check`.
        """
        threshold = parse_threshold(threshold)
        use_cpu_threads(("faiss", "cv2"))  # the detector's models, FAISS and OpenCV share the CPUs synthgen may use
        detector = get_detector(embedder, index)
        if workers is not None and hasattr(detector, "workers"):
            detector.workers = workers  # type: ignore[union-attr]
        store = None if cache is False else FitCache(None if cache is True else cache)
        if store is not None:
            store.fit(detector, train, progress)
        else:
            detector.fit(train, progress)
        skipped = list(detector.skipped)
        if detector.n_train == 0:
            raise SynthgenError(f"no readable training images in {train.description}{skipped_note(skipped)}")
        calibration = None
        if threshold == "auto":
            settings = {"target_fpr": target_fpr, "group_by": group_by, "group_pattern": group_pattern}
            threshold, calibration = _calibrated(detector, train, settings, store, progress)
            train.skipped = list(skipped)  # calibration re-read part of the source; keep the full fit's list
        hit = store is not None and store.hit
        auditor = cls(detector, float(threshold), train.description, train.fingerprint(), skipped, calibration)
        auditor.workers, auditor.cache_hit = workers, hit
        return auditor

    @classmethod
    def from_recipe(
        cls,
        train: Source,
        audit: AuditConfig,
        progress: Progress | None = None,
        *,
        threshold: float | None = None,
        cache: bool | str | Path = False,
        workers: int | None = None,
    ) -> Auditor:
        """`from_source` with a recipe's `audit` settings (detector, threshold, target FPR, index, groups).

        `threshold`: use this value instead of the recipe's, e.g. one a driver calibrated once for all its
        workers (with `cache=True` a worker then only loads the fitted index). `cache`, `workers`: as in
        `from_source`.
        """
        return cls.from_source(
            train,
            audit.embedder,
            audit.threshold if threshold is None else threshold,
            progress,
            target_fpr=audit.target_fpr,
            index=audit.index,
            group_by=audit.group_by,
            group_pattern=audit.group_pattern,
            cache=cache,
            workers=workers,
        )

    @staticmethod
    def check_memory(train: Source, audit: AuditConfig, cache: bool | str | Path = True) -> None:
        """The copy detector's memory check, made before a build trains its model (hours) rather than when it
        indexes the audit data after: a one-line refusal when the fit would not fit (fit_memory.check_fit_memory).
        Nothing is refused when the source cannot say its size, or the fitted detector is in the cache."""
        detector = get_detector(audit.embedder, audit.index)
        if not isinstance(detector, CopyDetector):
            return
        try:
            check_fit_memory(source_total(train), detector.regions is not None, detector.memory_for_fit())
        except SynthgenError:
            if cache is not False and FitCache(None if cache is True else cache).holds(detector, train):
                return  # loaded, not fitted
            raise

    def check(self, samples: list[Sample], vectors: np.ndarray | None = None) -> list[Verdict]:
        """Verdicts for a batch of candidates, in order; `vectors`: their `embed` (when the caller needs them too)."""
        verdicts = []
        images = self.images(samples)
        # A detector that explains its matches (copydetect) gives evidence too; one written by a caller may not
        # take `vectors`: pass them only when there are some.
        match = getattr(self.detector, "match_evidence", None) or self.detector.match
        # Chunks matched in threads give the serial results in the serial order; only detectors that declare
        # `parallel_match` (their match only reads the fitted state) are split.
        workers = self.workers if getattr(self.detector, "parallel_match", False) else 1
        matched = match_in_chunks(match, images, workers, vectors=vectors)
        for similarity, key, *evidence in matched:
            value = round(float(np.clip(similarity, -1.0, 1.0)), SIMILARITY_DECIMALS)
            verdicts.append(Verdict(value, key, value >= self.threshold, evidence[0] if evidence else None))
        return verdicts

    @staticmethod
    def images(samples: list[Sample]) -> list:
        """The candidates as the detector sees them: RGB (grayscale sets too)."""
        return [s.image if s.image.mode == "RGB" else s.image.convert("RGB") for s in samples]

    def embed(self, samples: list[Sample]) -> np.ndarray:
        """The candidates' global embeddings: what `check(samples, vectors)` and the privacy metrics share."""
        return self.detector.embedder.embed(self.images(samples))

    def sample_metadata(self, verdict: Verdict) -> dict[str, Any]:
        """The `audit_*` fields a generated sample carries (its provenance record and the shards' columns)."""
        return {
            "audit_embedder": self.detector.name,
            "audit_threshold": self.threshold,
            "audit_similarity": verdict.similarity,
            "audit_flagged": verdict.flagged,
        }

    def summary_block(self) -> dict[str, Any]:
        """The detector, its settings and how the threshold was chosen (merged into summary.json)."""
        mode = "auto" if self.calibration is not None else "fixed"
        block = {"name": self.detector.name, "threshold_mode": mode, **self.detector.info()}
        if self.calibration is not None:
            block["calibration"] = self.calibration
        return {"detector": block}


def _calibrated(
    detector: Detector, train: Source, settings: dict[str, Any], store: FitCache | None, progress: Progress | None
) -> tuple[float, dict[str, Any]]:
    """`threshold: auto` for these settings: kept beside the cached fitted detector, else calibrated now."""
    cached = store.calibration(settings) if store is not None else None
    if cached is None:
        grouping = training_groups(train, settings["group_by"], settings["group_pattern"])
        cached = calibrate(detector, train, target_fpr=settings["target_fpr"], grouping=grouping, progress=progress)
        if store is not None:
            store.keep_calibration(settings, float(cached[0]), cached[1])
    return float(cached[0]), cached[1]
