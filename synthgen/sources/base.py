"""The reader interface: every source yields `Sample`s and counts what it could not read."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from synthgen.sample import Sample


@dataclass
class Skipped:
    """An item a reader could not decode (corrupt, truncated, missing): reported, never fatal."""

    key: str
    reason: str


@dataclass
class Source:
    """Base class of readers. Subclasses implement `_iter_samples`; `skipped` fills while iterating."""

    description: str
    skipped: list[Skipped] = field(default_factory=list)

    def __iter__(self) -> Iterator[Sample]:
        self.skipped = []
        yield from self._iter_samples()

    def _iter_samples(self) -> Iterator[Sample]:  # pragma: no cover - abstract
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A sha256 that changes when the data changes (used to key caches and provenance)."""
        raise NotImplementedError
