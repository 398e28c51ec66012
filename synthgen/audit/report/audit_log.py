"""The audit's record: one row per audited candidate, written as audit.parquet, summary.json and report.html.

The build keeps one log per shard (`state` / `merge`, so a resumed build rebuilds the whole log) and writes
the merged one at the end; `synthgen audit` fills one from its candidates (synthgen.audit.entry).
"""

from __future__ import annotations

import base64
import heapq
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from synthgen.atomic import atomic_path, write_json, write_text
from synthgen.audit.report.html_report import GalleryItem, render_report, thumbnail_png
from synthgen.audit.report.summary import AuditRow, audit_table, build_summary, evidence_fields, row_from_state
from synthgen.sample import Sample
from synthgen.sources.base import Skipped, Source

if TYPE_CHECKING:
    from synthgen.audit.detection.auditor import Auditor, Verdict


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
            **evidence_fields(verdict.evidence),
        )
        self.rows.append(row)
        rank = (row.flagged, row.similarity, -len(self.rows))  # ties: earlier candidates first
        self._keep(rank, len(self.rows) - 1, lambda: thumbnail_png(sample.image, box=row.candidate_box))

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
        self.rows.extend(row_from_state(row) for row in state["rows"])
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
        with atomic_path(out_dir / "audit.parquet") as tmp:
            pq.write_table(audit_table(self.rows), tmp)
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
            item.train_thumbnail = thumbnail_png(sample.image, box=item.row.train_box)
        if not wanted:
            break
