"""Memorization audit: find each synthetic image's nearest training image and flag copies.

`entry.py` (`run_audit`: the audit of a set of images, `synthgen audit`) sits on four concerns, one subpackage
each, listed top to bottom (imports flow down, never up):
- `privacy/`: privacy metrics against a holdout set, membership inference;
- `report/`: `AuditLog` and what it writes (audit.parquet, summary.json, report.html);
- `detection/`: copy detectors (`copydetect`, embedding nearest neighbour), `threshold: auto`, `Auditor` verdicts;
- `index/`: embedders (built in and from local weights), the nearest-neighbour `TrainIndex`, its disk cache.
The build audits what it generates with the same `Auditor` (`Auditor.from_recipe`) and `AuditLog`.

Importing this package is cheap: the names below load their module (numpy, OpenCV, pyarrow ...) on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from synthgen.audit.detection.auditor import Auditor, Verdict
    from synthgen.audit.entry import run_audit
    from synthgen.audit.index.embedder_registry import get_embedder, known_embedders, register_embedder
    from synthgen.audit.index.embedders import Embedder, PixelEmbedder
    from synthgen.audit.index.train_index import TrainIndex
    from synthgen.audit.report.audit_log import AuditLog
    from synthgen.audit.report.summary import AuditRow

_HOMES = {
    "AuditLog": "synthgen.audit.report.audit_log",
    "AuditRow": "synthgen.audit.report.summary",
    "Auditor": "synthgen.audit.detection.auditor",
    "Embedder": "synthgen.audit.index.embedders",
    "PixelEmbedder": "synthgen.audit.index.embedders",
    "TrainIndex": "synthgen.audit.index.train_index",
    "Verdict": "synthgen.audit.detection.auditor",
    "get_embedder": "synthgen.audit.index.embedder_registry",
    "known_embedders": "synthgen.audit.index.embedder_registry",
    "register_embedder": "synthgen.audit.index.embedder_registry",
    "run_audit": "synthgen.audit.entry",
}
__all__ = [
    "AuditLog",
    "AuditRow",
    "Auditor",
    "Embedder",
    "PixelEmbedder",
    "TrainIndex",
    "Verdict",
    "get_embedder",
    "known_embedders",
    "register_embedder",
    "run_audit",
]


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562)."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'synthgen.audit' has no attribute '{name}'")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
