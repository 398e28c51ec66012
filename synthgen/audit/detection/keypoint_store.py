"""Every training frame's keypoints for the copy detector, kept in RAM while small and on disk beyond that, so
fitting 100,000 training images does not need their ~150 KiB of keypoints each in memory (~15 GiB).

A `KeypointStore` is a sequence of `Features`, one per training frame, appended in order. Up to `spill_bytes`
(index_backends.SPILL_BYTES: 1 GiB, the limit of a TrainIndex's vectors too) it is a list of per-frame arrays,
exactly what the fit always held. Past that it moves to two raw files in a private temporary folder (points
float32 (n, 2), descriptors uint8 (n, 128), frame after frame) and reads them back through memory maps:
page-cache backed memory the kernel can drop, not the process's own. The fit's later passes (common-structure
filtering, codes) read it FIT_CHUNK frames at a time; a filtered store is written beside the old one, which is
then deleted.
After a cache load the store is a read-only view of the cache entry's arrays (`over`).

`scratch_array` gives the same treatment to one large array (the tile codes).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np

from synthgen.audit.detection.local_features import Features
from synthgen.audit.detection.parallel import parallel_map
from synthgen.audit.index import index_backends
from synthgen.audit.index.index_backends import TempFolder

T = TypeVar("T")
FIT_CHUNK = 1024  # training frames processed at once by fit's later passes (bounds its temporaries)
POINT_DTYPE, DESCRIPTOR_DTYPE = np.dtype(np.float32), np.dtype(np.uint8)
BYTES_PER_KEYPOINT = 2 * POINT_DTYPE.itemsize + 128 * DESCRIPTOR_DTYPE.itemsize


def scratch_array(shape: tuple[int, ...], dtype: Any, spill_bytes: int | None = None) -> np.ndarray:
    """An uninitialised array, in RAM up to `spill_bytes`, else a writable memory map of a temporary file that
    lives as long as the array (and its views)."""
    dtype = np.dtype(dtype)
    limit = index_backends.SPILL_BYTES if spill_bytes is None else spill_bytes
    if int(np.prod(shape)) * dtype.itemsize <= limit or not int(np.prod(shape)):
        return np.empty(shape, dtype)
    folder = tempfile.mkdtemp(prefix="synthgen-scratch-")
    path = Path(folder) / "array.bin"
    try:
        with open(path, "wb") as file:  # reserved now: a full disk fails here, not as SIGBUS on a mapped write
            os.posix_fallocate(file.fileno(), 0, int(np.prod(shape)) * dtype.itemsize)
    except OSError as error:
        shutil.rmtree(folder, ignore_errors=True)
        raise _disk_error(error, path) from error
    array = np.memmap(path, dtype=dtype, mode="r+", shape=shape)
    weakref.finalize(array, shutil.rmtree, folder, True)
    return array


class KeypointStore(Sequence[Features]):
    """Append-only per-frame keypoints (module docstring): a list in RAM, or flat files read through memory maps."""

    def __init__(self, spill_bytes: int | None = None) -> None:
        self.spill_bytes = index_backends.SPILL_BYTES if spill_bytes is None else spill_bytes
        self._frames: list[Features] | None = []  # RAM mode; None once flat (spilled or over arrays)
        self._ends: list[int] = []  # flat mode: running keypoint count after each frame
        self._ram_bytes = 0  # RAM mode: bytes held, against spill_bytes (flat mode: derived from _ends)
        self._folder: TempFolder | None = None
        self._files: tuple[Any, Any] | None = None  # open for appending while spilled
        self._flat: tuple[np.ndarray, np.ndarray] | None = None  # (points, descriptors) views, None when stale

    @classmethod
    def over(cls, points: np.ndarray, descriptors: np.ndarray, offsets: np.ndarray) -> KeypointStore:
        """A read-only store of the flat arrays (a cache entry's memory maps: nothing is read until used)."""
        store = cls()
        store._frames, store._ends = None, [int(end) for end in offsets[1:]]
        store._flat = (points, descriptors)
        return store

    @property
    def spilled(self) -> bool:
        return self._folder is not None

    @property
    def nbytes(self) -> int:
        """Bytes of keypoints held (in RAM or on disk)."""
        if self._frames is not None:
            return self._ram_bytes
        return (self._ends[-1] if self._ends else 0) * BYTES_PER_KEYPOINT

    def append(self, features: Features) -> None:
        if self._frames is not None:
            self._frames.append(features)
            self._ram_bytes += len(features) * BYTES_PER_KEYPOINT
            if self._ram_bytes > self.spill_bytes:
                self._spill()
            return
        if self._files is None:
            raise ValueError("this keypoint store is read-only")
        points, descriptors = _checked(features)
        try:
            self._files[0].write(points.data)
            self._files[1].write(descriptors.data)
        except OSError as error:
            raise _disk_error(error, self._files[1].name) from error
        self._ends.append((self._ends[-1] if self._ends else 0) + len(points))
        self._flat = None

    def extend(self, features: Iterable[Features]) -> None:
        for item in features:
            self.append(item)

    def __len__(self) -> int:
        return len(self._frames) if self._frames is not None else len(self._ends)

    @overload
    def __getitem__(self, index: int) -> Features: ...

    @overload
    def __getitem__(self, index: slice) -> list[Features]: ...

    def __getitem__(self, index: int | slice) -> Features | list[Features]:
        if self._frames is not None:
            return self._frames[index]
        if isinstance(index, slice):
            return [self._frame(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"keypoint store index {index} out of range")
        return self._frame(index)

    def __iter__(self) -> Iterator[Features]:
        for start in range(0, len(self), FIT_CHUNK):
            yield from self[start : start + FIT_CHUNK]

    def counts(self) -> np.ndarray:
        """Keypoints per frame (int64)."""
        if self._frames is not None:
            return np.array([len(f) for f in self._frames], np.int64)
        return np.diff(self.offsets())

    def offsets(self) -> np.ndarray:
        """Where each frame starts in the flat arrays, and the total at the end (len + 1 int64 values)."""
        if self._frames is None:
            return np.asarray([0, *self._ends], np.int64)
        return np.concatenate([[0], np.cumsum(self.counts())]).astype(np.int64)

    def blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The flat (points, descriptors) arrays, FIT_CHUNK frames at a time (to write them without a whole copy)."""
        for start in range(0, len(self), FIT_CHUNK):
            chunk = self[start : start + FIT_CHUNK]
            yield _concatenated([f.points for f in chunk], (0, 2)), _concatenated([f.descriptors for f in chunk])

    def map_in_place(self, function: Callable[[Features], Features], workers: int | None) -> None:
        """Replace every frame by `function(frame)`, FIT_CHUNK frames at a time in threads. In RAM each old frame is
        released as its chunk is done; spilled, the new frames go to a new store and the old files are deleted."""
        if self._frames is not None:
            in_chunks(self._frames, function, workers)
            self._ram_bytes = sum(len(f) for f in self._frames) * BYTES_PER_KEYPOINT
            return
        mapped = KeypointStore(spill_bytes=0)  # spilled from its first frame, as this one is
        for start in range(0, len(self), FIT_CHUNK):
            mapped.extend(parallel_map(function, self[start : start + FIT_CHUNK], workers))
        self._close()
        self.__dict__.update(mapped.__dict__)  # the new folder (and its removal) comes along

    def _frame(self, i: int) -> Features:
        points, descriptors = self._arrays()
        start = self._ends[i - 1] if i else 0
        return Features(points[start : self._ends[i]], descriptors[start : self._ends[i]])

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._flat is None:
            assert self._folder is not None and self._files is not None
            try:
                for file in self._files:
                    file.flush()
            except OSError as error:
                raise _disk_error(error, self._files[1].name) from error
            n = self._ends[-1] if self._ends else 0
            self._flat = (
                _mapped(self._folder.path / "points.f32", POINT_DTYPE, (n, 2)),
                _mapped(self._folder.path / "descriptors.u8", DESCRIPTOR_DTYPE, (n, 128)),
            )
        return self._flat

    def _spill(self) -> None:
        """Move the frames held in RAM to the files and append there from now on."""
        assert self._frames is not None
        frames, self._frames = self._frames, None
        self._folder = TempFolder("synthgen-keypoints-")
        path = self._folder.path
        self._files = (open(path / "points.f32", "wb"), open(path / "descriptors.u8", "wb"))  # noqa: SIM115
        self.extend(frames)

    def _close(self) -> None:
        if self._files is not None:
            for file in self._files:
                file.close()
        self._flat, self._files = None, None
        if self._folder is not None:
            self._folder.remove()
            self._folder = None


def in_chunks(items: list[T], function: Callable[[T], T], workers: int | None) -> None:
    """items[i] = function(items[i]), FIT_CHUNK items at a time (in threads): each old item is released as soon as
    its chunk is done, so the old and the new list never coexist whole."""
    for start in range(0, len(items), FIT_CHUNK):
        items[start : start + FIT_CHUNK] = parallel_map(function, items[start : start + FIT_CHUNK], workers)


def _disk_error(error: OSError, path: str | Path) -> OSError:
    """A failed spill write as one line that says what was written and what to do (the CLI prints it)."""
    what = "spilling the copy audit's training keypoints and tile codes (~220 KiB per training image)"
    return OSError(error.errno, f"{error.strerror or error}: {what}; point TMPDIR at a larger disk", str(path))


def _checked(features: Features) -> tuple[np.ndarray, np.ndarray]:
    points, descriptors = features.points, features.descriptors
    if points.dtype != POINT_DTYPE or descriptors.dtype != DESCRIPTOR_DTYPE or descriptors.shape[1:] != (128,):
        raise TypeError(f"keypoints must be float32 (n, 2) and uint8 (n, 128), got {points.dtype} {descriptors.shape}")
    return np.ascontiguousarray(points), np.ascontiguousarray(descriptors)


def _concatenated(parts: list[np.ndarray], empty: tuple[int, int] = (0, 128)) -> np.ndarray:
    if not parts:
        return np.zeros(empty, POINT_DTYPE if empty[1] == 2 else DESCRIPTOR_DTYPE)
    return np.concatenate(parts)


def _mapped(path: Path, dtype: np.dtype, shape: tuple[int, int]) -> np.ndarray:
    if not shape[0]:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)
