"""The copy detector's keypoint store: the same frames in RAM and spilled to disk, whatever it does with them."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest

from synthgen.audit.detection import keypoint_store
from synthgen.audit.detection.keypoint_store import KeypointStore, scratch_array
from synthgen.audit.detection.local_features import Features


def frames(n: int = 23, seed: int = 0) -> list[Features]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = 0 if i % 7 == 3 else int(rng.integers(1, 40))  # some frames without keypoints
        points = rng.uniform(0, 128, (k, 2)).astype(np.float32)
        out.append(Features(points, rng.integers(0, 256, (k, 128), dtype=np.uint8)))
    return out


def same(a: Features, b: Features) -> bool:
    return a.points.tobytes() == b.points.tobytes() and a.descriptors.tobytes() == b.descriptors.tobytes()


def store_of(items: list[Features], spill_bytes: int) -> KeypointStore:
    store = KeypointStore(spill_bytes=spill_bytes)
    store.extend(items)
    return store


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setattr(keypoint_store, "FIT_CHUNK", 4)
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(folder))
    return folder


def test_a_spilled_store_reads_back_every_frame_as_it_was_appended(small_chunks: Path) -> None:
    items = frames()
    ram, disk = store_of(items, 1 << 30), store_of(items, 2000)
    assert not ram.spilled and disk.spilled and len(list(small_chunks.iterdir())) == 1
    assert len(ram) == len(disk) == len(items)
    for store in (ram, disk):
        assert all(same(a, b) for a, b in zip(items, store, strict=True))
        assert same(store[-1], items[-1]) and same(store[5], items[5])
        assert all(same(a, b) for a, b in zip(items[3:17:2], store[3:17:2], strict=True))
        assert store.counts().tolist() == [len(f) for f in items]
        assert store.offsets()[-1] == sum(len(f) for f in items) and store.offsets()[0] == 0
        flat = list(store.blocks())
        assert np.concatenate([p for p, _ in flat]).tobytes() == np.concatenate([f.points for f in items]).tobytes()
        assert store.nbytes == sum(len(f) for f in items) * (8 + 128)
        with pytest.raises(IndexError):
            store[len(items)]
    assert isinstance(disk[1].descriptors, np.memmap) and not disk[1].descriptors.flags.writeable


def test_map_in_place_gives_the_same_frames_spilled_or_not_and_removes_the_old_files(small_chunks: Path) -> None:
    items = frames()

    def keep_left(f: Features) -> Features:
        return f.subset(f.points[:, 0] < 64)

    ram, disk = store_of(items, 1 << 30), store_of(items, 2000)
    (before,) = small_chunks.iterdir()
    for store in (ram, disk):
        store.map_in_place(keep_left, workers=2)
        assert all(same(keep_left(a), b) for a, b in zip(items, store, strict=True))
        assert store.nbytes == sum(len(keep_left(f)) for f in items) * 136
    assert disk.spilled and not before.exists() and len(list(small_chunks.iterdir())) == 1
    del disk, store  # the loop variable holds it too
    gc.collect()
    assert not list(small_chunks.iterdir())


def test_a_store_over_flat_arrays_is_read_only() -> None:
    items = frames(5)
    source = store_of(items, 1 << 30)
    points = np.concatenate([f.points for f in items])
    descriptors = np.concatenate([f.descriptors for f in items])
    view = KeypointStore.over(points, descriptors, source.offsets())
    assert all(same(a, b) for a, b in zip(items, view, strict=True))
    assert view.nbytes == source.nbytes and not view.spilled
    with pytest.raises(ValueError, match="read-only"):
        view.append(items[0])


def test_a_spilled_store_refuses_keypoints_of_another_type() -> None:
    store = store_of(frames(3), 0)
    with pytest.raises(TypeError, match="float32"):
        store.append(Features(np.zeros((2, 2)), np.zeros((2, 128), np.uint8)))


def test_scratch_arrays_spill_past_the_limit_and_remove_their_file(small_chunks: Path) -> None:
    small = scratch_array((10, 4), np.int8, spill_bytes=40)
    assert not isinstance(small, np.memmap)
    large = scratch_array((11, 4), np.int8, spill_bytes=40)
    assert isinstance(large, np.memmap) and len(list(small_chunks.iterdir())) == 1
    large[:] = 3
    assert int(large.sum()) == 132
    del large
    gc.collect()
    assert not list(small_chunks.iterdir())


def test_a_full_disk_is_one_clear_error_naming_the_file_and_tmpdir(
    monkeypatch: pytest.MonkeyPatch, small_chunks: Path
) -> None:
    import errno
    import os

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError, match="No space left on device: spilling the copy audit.*TMPDIR") as failed:
        scratch_array((100, 4), np.int8, spill_bytes=40)
    assert failed.value.filename and not list(small_chunks.iterdir())  # nothing left behind

    class FullFile:
        name = str(small_chunks / "descriptors.u8")

        def write(self, data: object) -> None:
            full()

    store = store_of(frames(3), 0)
    store._files = (FullFile(), FullFile())
    with pytest.raises(OSError, match="TMPDIR") as failed:
        store.append(frames(1, seed=1)[0])
    assert failed.value.filename == FullFile.name
