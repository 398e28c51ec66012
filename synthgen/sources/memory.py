"""Images already in memory as a `Source`: a notebook's arrays, a benchmark's edited copies, test fixtures."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping

from PIL import Image

from synthgen.sample import Sample
from synthgen.sources.base import Source

UNREADABLE = "cannot decode image: corrupt"


class MemorySource(Source):
    """`Sample`s (or `(key, image)` pairs) held in a list; audits and training read it like any reader.

    `unreadable` names keys to report as skipped (key -> reason, or just keys), so code paths that meet corrupt
    files can be exercised without files. The fingerprint hashes the pixels, so caches keyed on it are safe.
    """

    def __init__(
        self,
        samples: Iterable[Sample | tuple[str, Image.Image]],
        description: str = "in-memory images",
        unreadable: Mapping[str, str] | Iterable[str] = (),
    ) -> None:
        super().__init__(description=description)
        self.samples = [s if isinstance(s, Sample) else Sample(s[0], s[1]) for s in samples]
        self.unreadable = dict(unreadable) if isinstance(unreadable, Mapping) else dict.fromkeys(unreadable, UNREADABLE)
        self._fingerprint: str | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def _iter_samples(self) -> Iterator[Sample]:
        for key, reason in self.unreadable.items():
            self._skip(key, reason)
        yield from self.samples

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            digest = hashlib.sha256(self.description.encode())
            for sample in self.samples:
                image = sample.image
                digest.update(f"\0{sample.key}\0{sample.label}\0{sample.text}\0{image.mode}{image.size}".encode())
                digest.update(image.tobytes())
            digest.update(repr(sorted(self.unreadable.items())).encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint
