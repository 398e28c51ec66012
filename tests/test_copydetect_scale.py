"""copydetect at scale: a cache hit memory-maps the fitted state and gives the fresh fit's verdicts; fit's memory
bounding changes no result; a training set too large for the memory refuses with one line before fitting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from synthgen.audit.detection.copydetect import CopyDetector
from synthgen.audit.detection.fit_cache import FitCache
from synthgen.sources import open_source
from synthgen.sources.base import Source
from synthgen.sources.spec import SourceSpec


def train_source() -> Source:
    return open_source(SourceSpec(type="demo", per_class=12, resolution=64, seed=3))


def candidates() -> list[Image.Image]:
    """Edited copies of training phantoms and novel phantoms of another seed."""
    train = [s.image for s in train_source()][:4]
    edits = [
        train[0],
        train[1].resize((96, 96)),
        train[2].filter(ImageFilter.GaussianBlur(1)),
        train[3].crop((8, 8, 56, 56)),
    ]
    novel = [s.image for s in open_source(SourceSpec(type="demo", per_class=2, resolution=64, seed=99))]
    return edits + novel


def plain(detector: CopyDetector) -> list[tuple]:
    return [(score, key, repr(evidence)) for score, key, evidence in detector.match_evidence(candidates())]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[CopyDetector, Path]:
    """A detector fitted in memory (no cache), and a cache holding the same fit."""
    cache = tmp_path_factory.mktemp("fit-cache")
    store, through_cache = FitCache(cache), CopyDetector()
    store.fit(through_cache, train_source())
    assert not store.hit and store.entry is not None
    points = through_cache.features[0].points  # once saved, a fresh fit reads the entry as a hit does
    assert isinstance(points, np.memmap) and Path(str(points.filename)).parent == store.entry
    detector = CopyDetector()
    detector.workers = 1
    detector.fit(train_source())
    assert not isinstance(detector.regions.codes if detector.regions else None, np.memmap)
    return detector, cache


def loaded(cache: Path) -> tuple[CopyDetector, FitCache]:
    detector = CopyDetector()
    store = FitCache(cache)
    store.fit(detector, train_source())
    return detector, store


def test_cache_hit_is_memory_mapped_and_gives_the_same_verdicts(fitted: tuple[CopyDetector, Path]) -> None:
    fresh, cache = fitted
    hit, store = loaded(cache)
    assert store.hit
    assert plain(hit) == plain(fresh)
    assert hit.info() == fresh.info() and hit.keys == fresh.keys and hit.sizes == fresh.sizes
    assert hit.regions is not None
    mapped = [
        hit.features[0].descriptors,
        hit.features[-1].points,
        hit.regions.features[0].descriptors,
        hit.regions.codes,
        hit.index.vectors,
        hit._codes.vectors if hit._codes is not None else None,
    ]
    for array in mapped:
        assert isinstance(array, np.memmap) and not array.flags.writeable  # page-cache backed, never written
    assert hit.regions.features[1].points.base is not None  # views of one map, not per-frame copies


def test_damaged_array_file_is_rebuilt(fitted: tuple[CopyDetector, Path], tmp_path: Path) -> None:
    fresh, cache = fitted
    (entry,) = cache.glob("copydetect-*")
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["format"] == 2 and not list(entry.glob("*.npz"))
    copy_root = tmp_path / "cache"
    copy_root.mkdir()
    damaged = copy_root / entry.name
    damaged.mkdir()
    for path in entry.iterdir():
        (damaged / path.name).write_bytes(path.read_bytes())
    target = damaged / meta["files"]["r_codes"]["file"]
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    again, store = loaded(copy_root)
    assert not store.hit  # rebuilt, not trusted
    assert plain(again) == plain(fresh)
    assert loaded(copy_root)[1].hit  # rewritten


def fitted_state(detector: CopyDetector) -> dict[str, np.ndarray]:
    """Every array of the fitted state, keypoints flattened (what the fit cache writes)."""
    from synthgen.audit.detection.fit_cache import _parts

    arrays, keypoints, _ = _parts(detector)
    arrays = {name: np.asarray(array) for name, array in arrays.items()}
    for prefix, store in keypoints.items():
        blocks = list(store.blocks())
        arrays[f"{prefix}points"] = np.concatenate([points for points, _ in blocks])
        arrays[f"{prefix}descriptors"] = np.concatenate([descriptors for _, descriptors in blocks])
    return arrays


def fit_state() -> dict[str, np.ndarray]:
    detector = CopyDetector()
    detector.workers = 1
    detector.fit(train_source())
    return fitted_state(detector)


def assert_same_state(whole: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> None:
    assert whole.keys() == other.keys()
    for name, array in whole.items():
        assert array.dtype == other[name].dtype and array.shape == other[name].shape, name
        assert array.tobytes() == other[name].tobytes(), name


def test_fit_in_chunks_gives_the_same_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """fit's later passes work FIT_CHUNK frames at a time (memory); any chunk size gives the same bytes."""
    from synthgen.audit.detection import copydetect, keypoint_store, regions

    whole = fit_state()
    for module in (copydetect, regions, keypoint_store):
        monkeypatch.setattr(module, "FIT_CHUNK", 5)
    assert_same_state(whole, fit_state())


def test_fit_spilled_to_disk_gives_the_same_state_and_the_cache_takes_it_over(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Past SPILL_BYTES the keypoints, tile codes and vectors live in temporary files: the same bytes and verdicts;
    once saved to the fit cache the detector reads the entry's files and the temporary ones are gone."""
    import gc
    import tempfile

    from synthgen.audit.detection import keypoint_store
    from synthgen.audit.index import index_backends

    whole = fit_state()
    in_ram = CopyDetector()
    in_ram.workers = 1
    in_ram.fit(train_source())
    monkeypatch.setattr(index_backends, "SPILL_BYTES", 4096)  # every store spills: keypoints, tiles, vectors
    monkeypatch.setattr(keypoint_store, "FIT_CHUNK", 7)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    spilled = CopyDetector()
    spilled.workers = 1
    spilled.fit(train_source())
    assert spilled.features.spilled and spilled.regions is not None and spilled.regions.features.spilled
    assert isinstance(spilled.regions.codes, np.memmap)
    spilled_folders = sorted(p.name.split("-")[1] for p in (tmp_path / "tmp").iterdir())
    assert spilled_folders == ["keypoints", "keypoints", "scratch", "vectors", "vectors"]
    assert_same_state(whole, fitted_state(spilled))
    assert plain(spilled) == plain(in_ram)
    assert spilled.info() == in_ram.info()

    cache = FitCache(tmp_path / "cache")
    through_cache = CopyDetector()
    through_cache.workers = 1
    cache.fit(through_cache, train_source())
    assert not cache.hit and cache.entry is not None
    assert through_cache.regions is not None
    for array in (through_cache.features[0].points, through_cache.regions.features[-1].descriptors):
        assert isinstance(array, np.memmap) and Path(str(array.filename)).parent == cache.entry
    assert plain(through_cache) == plain(in_ram)
    del spilled
    gc.collect()
    assert not list((tmp_path / "tmp").iterdir())  # every temporary file removed with its owner


class _Unread(Source):
    """A training set of `n` images that must not be read (the refusal comes first)."""

    def __init__(self, n: int | None) -> None:
        super().__init__(description="large training set")
        self.n, self.reads = n, 0

    def __len__(self) -> int:
        if self.n is None:
            raise TypeError("size unknown")
        return self.n

    def _iter_samples(self):
        for sample in train_source():
            self.reads += 1
            yield sample

    def fingerprint(self) -> str:
        return f"unread-{self.n}"


def test_too_large_a_training_set_is_refused_before_reading(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from synthgen.audit.detection import copydetect
    from synthgen.audit.detection.auditor import Auditor
    from synthgen.errors import SynthgenError

    monkeypatch.delenv(copydetect.MEMORY_CHECK, raising=False)
    monkeypatch.setattr(copydetect, "memory_available", lambda: 8 * 2**30)
    source = _Unread(1_000_000)
    with pytest.raises(SynthgenError) as refused:
        Auditor.from_source(source, cache=tmp_path / "cache", workers=1)  # type: ignore[arg-type]
    message = str(refused.value)
    assert "\n" not in message and message.startswith("audit.embedder: copydetect needs")
    assert "1,000,000 training images" in message and "8.0 GiB is available" in message
    assert "audit.embedder: pixel" in message and copydetect.MEMORY_CHECK in message
    assert source.reads == 0  # refused before reading
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())  # nothing written


def test_memory_check_override_and_unknown_sizes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from synthgen.audit.detection import copydetect, fit_memory
    from synthgen.errors import SynthgenError

    readable = copydetect.memory_available
    tiny = fit_memory.fit_memory(10, regions=True)  # room for 10 images, not 36
    monkeypatch.setattr(copydetect, "memory_available", lambda: tiny)
    unknown = _Unread(None)  # no len(): refused once the images read so far would not fit
    with pytest.raises(SynthgenError, match="read so far"):
        CopyDetector().fit(unknown)  # type: ignore[arg-type]
    monkeypatch.setenv(copydetect.MEMORY_CHECK, "0")
    detector = CopyDetector()
    detector.fit(_Unread(36))  # type: ignore[arg-type]
    assert detector.n_train == 36
    assert readable(str(tmp_path / "missing")) is None  # unreadable: nothing refused
    fit_memory.check_fit_memory(10**9, True, None)


def test_build_refuses_before_training_when_the_audit_cannot_fit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The check runs before the model is resolved (trained: hours) and before the output folder is claimed."""
    from test_build import write_recipe

    import synthgen.resolve
    from synthgen.audit.detection import copydetect, fit_memory
    from synthgen.build import build
    from synthgen.errors import SynthgenError
    from synthgen.recipe import load_recipe

    monkeypatch.setenv("SYNTHGEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(copydetect.MEMORY_CHECK, raising=False)
    monkeypatch.setattr(copydetect, "memory_available", lambda: fit_memory.FIT_PEAK_FIXED)  # room for no image

    def resolve_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was resolved before the audit's memory check")

    monkeypatch.setattr(synthgen.resolve, "resolve_model", resolve_model)
    recipe = load_recipe(write_recipe(tmp_path / "recipe", **{"audit.embedder": "copydetect"}))
    with pytest.raises(SynthgenError, match="audit.embedder: copydetect needs ~1.0 GiB of memory to index"):
        build(recipe)
    assert not recipe.output_dir(None).exists()  # nothing written
    monkeypatch.setenv(copydetect.MEMORY_CHECK, "0")  # the override reaches the early check too
    with pytest.raises(AssertionError, match="resolved before"):
        build(recipe)
