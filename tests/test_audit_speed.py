"""An audit that keeps up: `Auditor.check` spread over threads gives the serial verdicts in the serial order (also
when called from several threads at once), and the fitted detector + calibration are cached on disk (hit,
damaged entry rebuilt, new key when the settings change)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from synthgen.audit.detection.auditor import Auditor, Verdict
from synthgen.audit.detection.copydetect import CopyDetector
from synthgen.audit.detection.fit_cache import copydetect_key
from synthgen.audit.detection.parallel import parallel_map, spans
from synthgen.sample import Sample
from synthgen.sources import open_source
from synthgen.sources.base import Source
from synthgen.sources.spec import SourceSpec


def train_source() -> Source:
    return open_source(SourceSpec(type="demo", per_class=12, resolution=64, seed=3))


def candidates() -> list[Sample]:
    """Copies (resized, blurred, mirrored, cropped) of training phantoms and novel phantoms of another seed."""
    train = [s.image for s in train_source()][:6]
    edits = [
        train[0],
        train[1].resize((96, 96)),
        train[2].filter(ImageFilter.GaussianBlur(1)),
        train[3].transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        train[4].crop((8, 8, 56, 56)),
    ]
    novel = [s.image for s in open_source(SourceSpec(type="demo", per_class=3, resolution=64, seed=99))]
    return [Sample(key=f"c{i}", image=image) for i, image in enumerate(edits + novel)]


def plain(verdicts: list[Verdict]) -> list[tuple]:
    return [(v.similarity, v.nearest_train_key, v.flagged, repr(v.evidence)) for v in verdicts]


@pytest.fixture(scope="module")
def auditor() -> Auditor:
    return Auditor.from_source(train_source(), threshold=0.5, workers=2)


def test_spans_cover_in_order() -> None:
    assert spans(5, 2) == [slice(0, 2), slice(2, 5)] or spans(5, 2) == [slice(0, 3), slice(3, 5)]
    assert [i for s in spans(7, 3) for i in range(7)[s]] == list(range(7))
    assert spans(1, 4) == [slice(0, 1)] and spans(0, 2) == []
    assert parallel_map(lambda x: x * x, list(range(9)), 2) == [x * x for x in range(9)]


def test_parallel_check_equals_serial(auditor: Auditor) -> None:
    batch = candidates()
    parallel = plain(auditor.check(batch))
    auditor.workers = 1
    try:
        serial = plain(auditor.check(batch))
    finally:
        auditor.workers = 2
    assert parallel == serial
    assert [row[0] >= 0.5 for row in serial[:5]] == [True] * 5  # the copies are found either way


def test_check_from_background_threads(auditor: Auditor) -> None:
    """Two threads checking at once (the build samples the next batch meanwhile) get the serial verdicts."""
    batch = candidates()
    expected = plain(auditor.check(batch))
    found: dict[int, list] = {}

    def work(slot: int) -> None:
        found[slot] = plain(auditor.check(batch))

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert found == {0: expected, 1: expected}


def test_fit_in_threads_equals_serial_fit() -> None:
    one, two = CopyDetector(), CopyDetector()
    one.workers, two.workers = 1, 2
    one.fit(train_source())
    two.fit(train_source())
    assert one.keys == two.keys
    assert all(np.array_equal(a.descriptors, b.descriptors) for a, b in zip(one.features, two.features, strict=True))
    assert one.regions is not None and two.regions is not None
    assert np.array_equal(one.regions.codes, two.regions.codes)
    assert np.array_equal(one.regions.owner, two.regions.owner)


class CountingSource:
    """A source that counts how often it is read (a cache hit reads nothing)."""

    def __init__(self, inner: Source) -> None:
        self.inner, self.reads = inner, 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def __iter__(self):
        self.reads += 1
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def test_cache_hit_gives_the_same_auditor(tmp_path: Path) -> None:
    first = Auditor.from_source(train_source(), cache=tmp_path, workers=1)  # threshold: auto
    assert not first.cache_hit
    entries = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and list(entries[0].glob("calibration-*.json"))
    counting = CountingSource(train_source())
    second = Auditor.from_source(counting, cache=tmp_path, workers=1)  # type: ignore[arg-type]
    assert second.cache_hit and counting.reads == 0  # neither fit nor calibration read the images
    assert (second.threshold, second.calibration) == (first.threshold, first.calibration)
    assert second.detector.info() == first.detector.info()
    batch = candidates()
    assert plain(second.check(batch)) == plain(first.check(batch))


def test_damaged_entry_is_rebuilt(tmp_path: Path) -> None:
    first = Auditor.from_source(train_source(), threshold=0.5, cache=tmp_path, workers=1)
    (entry,) = tmp_path.glob("copydetect-*")
    state = entry / "r_codes.npy"  # one file per array (fit cache format 2)
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    again = Auditor.from_source(train_source(), threshold=0.5, cache=tmp_path, workers=1)
    assert not again.cache_hit  # rebuilt, not trusted
    assert plain(again.check(candidates())) == plain(first.check(candidates()))
    assert Auditor.from_source(train_source(), threshold=0.5, cache=tmp_path, workers=1).cache_hit  # rewritten


def test_damaged_calibration_is_recomputed(tmp_path: Path) -> None:
    first = Auditor.from_source(train_source(), cache=tmp_path, workers=1)
    (stored,) = tmp_path.glob("copydetect-*/calibration-*.json")
    stored.write_text(stored.read_text().replace('"threshold": ', '"threshold": 1', 1))
    again = Auditor.from_source(train_source(), cache=tmp_path, workers=1)
    assert again.cache_hit and again.threshold == first.threshold


def test_key_follows_data_and_settings() -> None:
    base = copydetect_key("data-a", CopyDetector())
    assert base == copydetect_key("data-a", CopyDetector())
    assert base != copydetect_key("data-b", CopyDetector())
    assert base != copydetect_key("data-a", CopyDetector(words=32))
    assert base != copydetect_key("data-a", CopyDetector(regions=False))


def test_embedding_detector_is_cached(tmp_path: Path) -> None:
    first = Auditor.from_source(train_source(), "pixel", cache=tmp_path)
    second = Auditor.from_source(train_source(), "pixel", cache=tmp_path)
    assert not first.cache_hit and second.cache_hit
    assert second.threshold == first.threshold
    batch = candidates()
    assert plain(second.check(batch)) == plain(first.check(batch))


def test_fixed_threshold_for_remote_workers(tmp_path: Path) -> None:
    """A driver calibrates once; a worker rebuilds its auditor from the recipe with that threshold, from the cache."""
    from synthgen.recipe import AuditConfig

    driver = Auditor.from_recipe(train_source(), AuditConfig(), cache=tmp_path)
    worker = Auditor.from_recipe(train_source(), AuditConfig(), threshold=driver.threshold, cache=tmp_path)
    assert worker.cache_hit and worker.threshold == driver.threshold and worker.calibration is None


def test_calibration_in_threads_equals_serial() -> None:
    """Leave-one-out batches (with their exclusions) split over threads give the serial threshold and record."""
    serial = Auditor.from_source(train_source(), workers=1)
    threaded = Auditor.from_source(train_source(), workers=2)
    assert (threaded.threshold, threaded.calibration) == (serial.threshold, serial.calibration)
