"""Memorization audit: find each synthetic image's nearest training image and flag copies.

Importing this package is cheap: FAISS and pyarrow load only when an index is built or outputs are written.
"""

from synthgen.audit.auditor import AuditLog, Auditor, Verdict, run_audit
from synthgen.audit.embedders import Embedder, PixelEmbedder, get_embedder, known_embedders, register_embedder
from synthgen.audit.index import TrainIndex
from synthgen.audit.summary import AuditRow

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
