"""The memorization audit: nearest training image of every candidate, copies flagged above a threshold.

`Auditor` holds the indexed training set and judges batches of candidates (the generator calls `check` on
each batch so it can drop and regenerate copies); `AuditLog` collects the verdicts and writes
audit.parquet, summary.json and report.html; `run_audit` is the `synthgen audit` command.
"""

from __future__ import annotations

import base64
import heapq
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from synthgen.atomic import atomic_path, write_json, write_text
from synthgen.audit.calibrate import calibrate
from synthgen.audit.copydetect import CopyDetector
from synthgen.audit.embedders import Embedder, get_embedder
from synthgen.audit.index import BATCH_SIZE, Progress, TrainIndex, batched, source_total
from synthgen.audit.report import GalleryItem, render_report, thumbnail_png
from synthgen.audit.summary import AuditRow, build_summary
from synthgen.errors import SynthgenError
from synthgen.sample import Sample
from synthgen.sources.base import Skipped, Source

# Similarities are rounded so that the stored value and the flag always agree (and an exact copy, whose
# float32 inner product can be 0.99999994, still reaches a threshold of 1.0).
SIMILARITY_DECIMALS = 6


def _first_reason(skipped: list[Skipped]) -> str:
    return f" ({len(skipped)} skipped, e.g. {skipped[0].key}: {skipped[0].reason})" if skipped else ""


@dataclass(frozen=True)
class Verdict:
    """How close a candidate is to the training data and whether that makes it a copy."""

    similarity: float
    nearest_train_key: str
    flagged: bool


class Detector(Protocol):
    """Finds each candidate's most similar training image. `similarity >= threshold` means "copy".

    `embedder` / `index` are a global embedding of the training set (the privacy metrics use them);
    `threshold_bounds` bound `threshold: auto` (calibrate.py).
    """

    name: str
    description: str
    default_threshold: float
    threshold_bounds: tuple[float, float]
    keys: list[str]
    skipped: list[Skipped]
    embedder: Embedder
    index: TrainIndex

    @property
    def n_train(self) -> int: ...

    def fit(self, source: Source, progress: Progress | None = None) -> None: ...

    def match(self, images: list[Image.Image], exclude: list[set[str]] | None = None) -> list[tuple[float, str]]: ...

    def info(self) -> dict[str, Any]: ...


class EmbeddingDetector:
    """A global embedder plus a nearest-neighbour index: similarity = inner product of the two embeddings.

    The `pixel` embedder and any plug-in embedder run this way; `threshold: auto` is then the plain
    leave-one-out quantile (no bounds: the scale of a plug-in embedder is unknown here).
    """

    default_threshold = 0.95
    threshold_bounds = (-1.0, 1.0)

    def __init__(self, embedder: Embedder, index_kind: str = "auto") -> None:
        self.embedder = embedder
        self.name = embedder.name
        self.description = embedder.description
        self.index_kind = index_kind
        self.index = TrainIndex(embedder.dim)
        self.skipped: list[Skipped] = []

    @property
    def keys(self) -> list[str]:
        return self.index.keys

    @property
    def n_train(self) -> int:
        return len(self.index)

    def fit(self, source: Source, progress: Progress | None = None) -> None:
        self.index = TrainIndex.from_source(source, self.embedder, progress=progress, kind=self.index_kind)
        self.skipped = list(source.skipped)

    def match(self, images: list[Image.Image], exclude: list[set[str]] | None = None) -> list[tuple[float, str]]:
        if not images:
            return []
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        similarities, keys = self.index.search(self.embedder.embed(images), k=1 + extra)
        results = []
        for i, (row, names) in enumerate(zip(similarities, keys, strict=True)):
            skip = exclude[i] if exclude else set()
            kept = [(float(s), k) for s, k in zip(row, names, strict=True) if k not in skip]
            results.append(kept[0] if kept else (-1.0, ""))
        return results

    def info(self) -> dict[str, Any]:
        return {"kind": "embedding nearest neighbour", "dim": self.embedder.dim, "index": self.index.resolved_kind}


def get_detector(name: str | Embedder | Detector, index_kind: str = "auto") -> Detector:
    """`copydetect` (the default two-stage detector), a registered embedder's name, or an object.

    `index_kind` (auto, exact, ivf, hnsw) applies to embedding detectors; copydetect verifies every
    candidate pair geometrically, so its retrieval stays exact.
    """
    if not isinstance(name, str):
        if hasattr(name, "match") and hasattr(name, "fit"):
            return name  # type: ignore[return-value]
        return EmbeddingDetector(name, index_kind)  # type: ignore[arg-type]
    if name == CopyDetector.name:
        return CopyDetector()
    try:
        return EmbeddingDetector(get_embedder(name), index_kind)
    except SynthgenError as error:
        message = str(error)
        if not message.startswith("unknown audit embedder"):
            raise  # e.g. weights that cannot be loaded: the embedder's own message
        raise SynthgenError(
            message.replace("known embedders: ", f"known embedders: {CopyDetector.name}, ", 1)
        ) from None


def parse_threshold(value: float | str) -> float | str:
    """A float in [-1, 1] (numeric strings too) or "auto"; anything else is a user error."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SynthgenError(f"audit threshold must be a number between -1 and 1 or 'auto', got {value!r}") from None
    if not -1.0 <= number <= 1.0:
        raise SynthgenError(f"audit threshold must be between -1 and 1, got {value}")
    return number


@dataclass
class Auditor:
    """A fitted detector plus the threshold that turns a similarity into a verdict."""

    detector: Detector
    threshold: float
    train_description: str
    train_fingerprint: str | None
    train_skipped: list[Skipped] = field(default_factory=list)
    calibration: dict[str, Any] | None = None  # how `threshold: auto` was derived

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
        embedder: str | Embedder | Detector = "copydetect",
        threshold: float | str = "auto",
        progress: Progress | None = None,
        *,
        target_fpr: float = 0.01,
        index: str = "auto",
    ) -> Auditor:
        """Fit the detector on every readable training image (unreadable ones are recorded, not fatal).

        `threshold="auto"` calibrates it on the training set itself (see calibrate.py).
        """
        threshold = parse_threshold(threshold)
        detector = get_detector(embedder, index)
        detector.fit(train, progress)
        skipped = list(detector.skipped)
        if detector.n_train == 0:
            raise SynthgenError(f"no readable training images in {train.description}{_first_reason(skipped)}")
        calibration = None
        if threshold == "auto":
            threshold, calibration = calibrate(detector, train, target_fpr=target_fpr, progress=progress)
            train.skipped = list(skipped)  # calibration re-read part of the source; keep the full fit's list
        return cls(detector, float(threshold), train.description, train.fingerprint(), skipped, calibration)

    def check(self, samples: list[Sample]) -> list[Verdict]:
        """Verdicts for a batch of candidates, in order."""
        verdicts = []
        for similarity, key in self.detector.match([s.image for s in samples]):
            value = round(float(np.clip(similarity, -1.0, 1.0)), SIMILARITY_DECIMALS)
            verdicts.append(Verdict(value, key, value >= self.threshold))
        return verdicts

    def summary_block(self) -> dict[str, Any]:
        """The detector, its settings and how the threshold was chosen (merged into summary.json)."""
        mode = "auto" if self.calibration is not None else "fixed"
        block = {"name": self.detector.name, "threshold_mode": mode, **self.detector.info()}
        if self.calibration is not None:
            block["calibration"] = self.calibration
        return {"detector": block}


class AuditLog:
    """Accumulates one row per audited candidate, keeping thumbnails only of the few the report shows.

    The report shows the flagged candidates (or, if none, the most similar); a bounded heap ranked by
    (flagged, similarity) keeps exactly those `max_thumbnails`, so memory does not grow with the dataset.
    """

    def __init__(self, auditor: Auditor, *, max_thumbnails: int = 48) -> None:
        self.auditor = auditor
        self.rows: list[AuditRow] = []
        self.max_thumbnails = max_thumbnails
        self._shown: list[tuple[tuple[bool, float, int], int, bytes]] = []  # min-heap: (rank, row, png)

    def add(self, sample: Sample, verdict: Verdict, *, dropped: bool = False, attempt: int = 0) -> None:
        row = AuditRow(
            key=sample.key,
            label=sample.label,
            nearest_train_key=verdict.nearest_train_key,
            similarity=verdict.similarity,
            flagged=verdict.flagged,
            dropped=dropped,
            attempt=attempt,
        )
        self.rows.append(row)
        rank = (row.flagged, row.similarity, -len(self.rows))  # ties: earlier candidates first
        self._keep(rank, len(self.rows) - 1, lambda: thumbnail_png(sample.image))

    def extend(self, samples: Iterable[Sample], verdicts: Iterable[Verdict]) -> None:
        for sample, verdict in zip(samples, verdicts, strict=True):
            self.add(sample, verdict)

    def state(self) -> dict[str, Any]:
        """Rows and kept thumbnails as JSON-able data, so a resumed build can rebuild the whole log."""
        return {
            "rows": [asdict(row) for row in self.rows],
            "thumbnails": {str(index): base64.b64encode(png).decode() for _, index, png in self._shown},
        }

    def merge(self, state: dict[str, Any]) -> None:
        """Append the rows (and thumbnails) of another log's `state()`."""
        offset = len(self.rows)
        self.rows.extend(AuditRow(**row) for row in state["rows"])
        for index_text, encoded in state["thumbnails"].items():
            index = offset + int(index_text)
            row = self.rows[index]
            self._keep((row.flagged, row.similarity, -(index + 1)), index, lambda e=encoded: base64.b64decode(e))

    def _keep(self, rank: tuple[bool, float, int], index: int, png: Callable[[], bytes]) -> None:
        """Keep the thumbnail if it ranks among the `max_thumbnails` best (made lazily: PNGs cost time)."""
        if len(self._shown) < self.max_thumbnails:
            heapq.heappush(self._shown, (rank, index, png()))
        elif self._shown and rank > self._shown[0][0]:
            heapq.heapreplace(self._shown, (rank, index, png()))

    def gallery(self) -> list[GalleryItem]:
        """What the report shows: flagged candidates if any, else the most similar; most similar first."""
        ranked = sorted(self._shown, reverse=True)
        if any(self.rows[index].flagged for _, index, _ in ranked):
            ranked = [entry for entry in ranked if self.rows[entry[1]].flagged]
        return [GalleryItem(self.rows[index], png) for _, index, png in ranked]

    def write(
        self,
        out_dir: str | Path,
        *,
        candidates_skipped: list[Skipped],
        show_training_images: bool = False,
        train_source: Source | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write audit.parquet, summary.json and report.html (each atomically); return the summary.

        `extra` adds caller facts to the summary (the build adds its `action`: flag or drop).
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        out_dir = Path(out_dir)
        auditor = self.auditor
        summary = build_summary(
            self.rows,
            embedder=auditor.detector.name,
            threshold=auditor.threshold,
            similarity_meaning=auditor.detector.description,
            n_train=auditor.n_train,
            train_description=auditor.train_description,
            train_fingerprint=auditor.train_fingerprint,
            train_skipped=auditor.train_skipped,
            candidates_skipped=candidates_skipped,
        )
        summary.update(auditor.summary_block())
        summary.update(extra or {})
        table = pa.table(
            {
                "key": pa.array([r.key for r in self.rows], pa.string()),
                "label": pa.array([r.label for r in self.rows], pa.string()),
                "nearest_train_key": pa.array([r.nearest_train_key for r in self.rows], pa.string()),
                "similarity": pa.array([r.similarity for r in self.rows], pa.float64()),
                "flagged": pa.array([r.flagged for r in self.rows], pa.bool_()),
                "dropped": pa.array([r.dropped for r in self.rows], pa.bool_()),
                "attempt": pa.array([r.attempt for r in self.rows], pa.int32()),
            }
        )
        with atomic_path(out_dir / "audit.parquet") as tmp:
            pq.write_table(table, tmp)
        write_json(out_dir / "summary.json", summary)

        items = self.gallery()
        if show_training_images and train_source is not None:
            _attach_training_thumbnails(items, train_source)
        similarities = np.array([r.similarity for r in self.rows], dtype=np.float64)
        html = render_report(summary, similarities, items, show_training_images=show_training_images)
        write_text(out_dir / "report.html", html)
        return summary


def _attach_training_thumbnails(items: list[GalleryItem], train: Source) -> None:
    """Read just the few training images the report shows, stopping as soon as all are found."""
    wanted: dict[str, list[GalleryItem]] = {}
    for item in items:
        wanted.setdefault(item.row.nearest_train_key, []).append(item)
    for sample in train:
        for item in wanted.pop(sample.key, []):
            item.train_thumbnail = thumbnail_png(sample.image)
        if not wanted:
            break


def run_audit(
    train: Source,
    candidates: Source,
    out_dir: str | Path,
    *,
    embedder: str | Embedder | Detector = "copydetect",
    threshold: float | str = "auto",
    show_training_images: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Audit every candidate against the training data; write the three outputs and return the summary."""
    auditor = Auditor.from_source(train, embedder, threshold, progress)
    log = AuditLog(auditor)
    total = source_total(candidates)
    for batch in batched(candidates, BATCH_SIZE):
        log.extend(batch, auditor.check(batch))
        if progress:
            progress("auditing candidates", len(log.rows), total)
    skipped = list(candidates.skipped)
    if not log.rows:
        where = f"{candidates.description}{_first_reason(skipped)}"
        raise SynthgenError(f"no readable candidate images in {where}")
    if progress:
        progress("writing report", 0, None)
    return log.write(out_dir, candidates_skipped=skipped, show_training_images=show_training_images, train_source=train)
