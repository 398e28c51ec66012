"""WebDataset shards: a `.tar` file or a folder of `*.tar`, read with `tarfile` directly.

Members are grouped into samples by key: the basename up to its first dot (`0001.png`, `0001.txt`,
`0001.json` form sample `0001`). The image comes from `.png/.jpg/.jpeg/.webp`, the caption from `.txt`,
metadata from `.json` (a dict; its `prompt` -> caption when there is no `.txt`). The label is the `.json`'s
`label_name` (synthgen's shards, whose `label` is the class index), else its `label`, else the `.cls` member.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from synthgen.errors import SynthgenError
from synthgen.sample import Sample
from synthgen.sources.base import (
    Skipped,
    Source,
    existing_path,
    fingerprint_of,
    meta_str,
    shard_files,
    spec_settings,
    spread,
    take,
)
from synthgen.sources.spec import SourceSpec

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


def split_name(name: str) -> tuple[str, str, str]:
    """`dir/0001.seg.png` -> (`dir`, `0001`, `seg.png`): folder, key and extension of a tar member."""
    folder, base = posixpath.split(name)
    key, _, ext = base.partition(".")
    return folder, key, ext.lower()


class WebDatasetSource(Source):
    """Reads WebDataset tar shards one sample at a time; a shard that cannot be opened is skipped."""

    def __init__(self, spec: SourceSpec, path: Path) -> None:
        super().__init__(description=f"webdataset {path}")
        self.spec = spec
        self.root = existing_path(path)
        self.tars = shard_files(self.root, "*.tar")
        if not self.tars:
            raise SynthgenError(f"no .tar files in {self.root}")

    def _tar_samples(self, shard: Path, positions: set[int] | None = None) -> Iterator[Sample | None]:
        """The shard's samples in order (only those at `positions` when given: the rest are not read)."""
        for index, (archive, key, parts) in enumerate(self._tar_groups(shard)):
            if positions is None or index in positions:
                yield self._group_sample(archive, key, parts)

    def labels(self) -> list[str]:
        """Labels from the `.json` / `.cls` members only (images are not read)."""
        labels = [
            _label(lambda ext, a=archive, p=parts: _member(a, p, ext))
            for shard in self.tars
            for archive, _, parts in self._tar_groups(shard)
        ]
        return labels[: self.spec.limit]

    def probe(self, count: int | None = None) -> tuple[int, list[Skipped]]:
        """Decode `count` samples spread over the shards (within `limit`)."""
        self.skipped = []
        sizes = [sum(1 for _ in self._tar_groups(shard)) for shard in self.tars]  # tar headers only
        broken = len(self.skipped)  # shards that could not be opened, recorded by that pass
        positions = spread(min(sum(sizes), self.spec.limit or sum(sizes)), count)
        start = 0
        for shard, size in zip(self.tars, sizes, strict=True):
            here = {p - start for p in positions if start <= p < start + size}
            if here:
                for _ in self._tar_samples(shard, here):
                    pass
            start += size
        return len(positions) + broken, list(self.skipped)

    def _tar_groups(self, shard: Path) -> Iterator[tuple[tarfile.TarFile, str, dict[str, tarfile.TarInfo]]]:
        """(open archive, key, extension -> member) of each sample in a shard; an unreadable shard is skipped."""
        with contextlib.ExitStack() as stack:
            try:
                archive = stack.enter_context(tarfile.open(shard, "r:*"))
                members = archive.getmembers()  # headers only: group members even when out of order
            except (OSError, tarfile.TarError) as error:
                self._skip(shard.name, f"cannot read tar: {error}")
                return
            groups: dict[tuple[str, str], dict[str, tarfile.TarInfo]] = {}
            for member in members:
                if member.isfile():
                    folder, key, ext = split_name(member.name)
                    if key and ext:
                        groups.setdefault((folder, key), {})[ext] = member
            for (_, key), parts in groups.items():
                yield archive, key, parts

    def _group_sample(self, archive: tarfile.TarFile, key: str, parts: dict[str, tarfile.TarInfo]) -> Sample | None:
        def read(ext: str) -> bytes | None:
            return _member(archive, parts, ext)

        info = _json_dict(read("json"))
        text = (read("txt") or b"").decode("utf-8", "replace").strip()
        text = text or meta_str(info.get("prompt"))
        label = _label(read, info)
        image_ext = next((ext for ext in IMAGE_EXTS if ext in parts), None)
        if image_ext is None:
            self._skip(key, "no image in sample")
            return None
        metadata = {name: meta_str(value) for name, value in info.items()}
        return self._sample(key, read(image_ext), text, label, metadata)

    def _iter_samples(self) -> Iterator[Sample]:
        return take((s for shard in self.tars for s in self._tar_samples(shard)), self.spec.limit)

    def fingerprint(self) -> str:
        return fingerprint_of(spec_settings(self.spec, "webdataset"), self.root, self.tars)


def _json_dict(data: bytes | None) -> dict:
    """A sample's `.json` as a dict; anything unreadable counts as no metadata, not as a failure."""
    try:
        value = json.loads(data) if data else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _member(archive: tarfile.TarFile, parts: dict[str, tarfile.TarInfo], ext: str) -> bytes | None:
    """The bytes of a sample's `ext` member, or None when it is absent or unreadable."""
    if ext not in parts:
        return None
    try:
        handle = archive.extractfile(parts[ext])
        return handle.read() if handle else None
    except (OSError, tarfile.TarError):
        return None


def _label(read: Callable[[str], bytes | None], info: dict | None = None) -> str:
    """The `.json`'s `label_name` (synthgen's shards: `label` is the class index), else its `label`, else `.cls`."""
    info = _json_dict(read("json")) if info is None else info
    label = meta_str(info.get("label_name")) or meta_str(info.get("label"))
    return label or (read("cls") or b"").decode("utf-8", "replace").strip()
