"""Fault injection (issue 12): `kill -9` inside training and building, a full disk while a shard is written, and
shards damaged after the build. Each ends with the weights / samples of an uninterrupted run and no temp file.

The kills come from `bench/fault_injection.py` (the full random campaign is `--runs 20` there): the CLI runs in
a subprocess with its writes hooked, and SIGKILLs itself at a chosen write, so every kill lands where it is meant
to. Tiny preset at 32 px, one thread; every check compares bytes, none measures time.
"""

from __future__ import annotations

import errno
import importlib.util
import io
import os
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fault_injection", ROOT / "bench" / "fault_injection.py")
fi = sys.modules["fault_injection"] = importlib.util.module_from_spec(_spec)  # (dataclasses look it up there)
_spec.loader.exec_module(fi)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def trained(work: Path) -> tuple[Path, dict]:
    """The uninterrupted training run (its folder and fingerprint); its pipeline is the builds' model."""
    run, _, _, expected = fi.reference(fi.Target.train(), work)
    assert not fi.leftovers(run / "model")
    return run, expected


@pytest.fixture(scope="module")
def built(trained: tuple[Path, dict], work: Path) -> tuple[object, Path, dict]:
    """The uninterrupted build: 8 samples in 4 shards of 2."""
    target = fi.Target.build(trained[0] / "model", polyp=4, normal=4)
    run, _, _, expected = fi.reference(target, work)
    assert len(expected["manifest"]["shards"]) == 8  # 4 shards x (parquet, webdataset)
    return target, run, expected


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch):
    """An in-process CLI run in `run` as the subprocesses see it (one thread, the run's own cache, offline)."""

    def use(run: Path) -> CliRunner:
        for name, value in fi._env(run).items():
            if name.startswith(("SYNTHGEN_", "OMP_", "HF_")):
                monkeypatch.setenv(name, value)
        return CliRunner()

    return use


def test_training_killed_in_checkpoints_and_install_resumes_bit_identical(trained, work: Path) -> None:
    target, run = fi.Target.train(), work / "train-killed"
    fi.prepare(target, run)
    where = fi.kill_chain(
        target,
        run,
        [
            ("torch.save~vae-step-0000004", "before"),  # mid VAE checkpoint: its staging folder is still empty
            # the rerun resumes at VAE step 2, trains the UNet (checkpoints, tokenizer) and is killed mid install:
            # part of the pipeline moved, no model_index.json yet
            ("rename~model/unet$", "after"),
        ],
    )
    assert all(where), f"a start was not killed: {where}"
    model = run / "model"
    assert not (model / "model_index.json").exists()
    assert any(".staging-" in name for name in fi.leftovers(model)), "the install kill left its staging folder"

    tries, output = fi.resume(target, run, tries=1)
    assert tries == 1, output
    assert fi.leftovers(model) == []
    assert fi.compare(trained[1], target.fingerprint(run)) == []  # weights, configs, tokenizer, grids, losses


def test_build_killed_mid_shard_and_before_the_manifest_resumes_identical(built, work: Path) -> None:
    target, _, expected = built
    run = work / "build-killed"
    fi.prepare(target, run)
    where = fi.kill_chain(
        target,
        run,
        [
            (r"tar append~webdataset/\.shard-00001\.tar\.", "after"),  # shard 1's tar half written
            ("rename~out/manifest.json$", "before"),  # every shard done, the manifest still a temp file
        ],
    )
    assert all(where), f"a start was not killed: {where}"
    out = run / "out"
    assert fi.leftovers(out) and not (out / "manifest.json").exists()

    tries, output = fi.resume(target, run, tries=1)
    assert tries == 1, output
    assert fi.leftovers(out) == []
    assert fi.compare(expected, target.fingerprint(run)) == []


class _DiskFull(io.FileIO):
    """A file on a disk that has `room` bytes left."""

    room = 600

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_full_disk_while_writing_a_shard_is_one_line_and_resumes_identical(built, work: Path, cli_env, monkeypatch):
    from synthgen.cli import app
    from synthgen.output import writers
    from synthgen.output.shard_set import load_completed

    target, _, expected = built
    run = work / "build-full-disk"
    fi.prepare(target, run)
    runner, out = cli_env(run), run / "out"
    real_open = writers.open_temp
    for suffix in (".parquet", ".tar"):  # the disk fills up in shard 1's Parquet file, then (next try) its tar

        def full_in_shard_1(path: Path, suffix: str = suffix):
            full = ".shard-00001" in path.name and suffix in path.name
            return _DiskFull(path, "wb") if full else real_open(path)

        monkeypatch.setattr(writers, "open_temp", full_in_shard_1)
        result = runner.invoke(app, target.args(run))
        assert result.exit_code == 2, result.output
        error = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "no space left on device" in error[0], result.output
        assert f"shard-00001{suffix}" in error[0] and str(out) in error[0]
        assert ("parquet" in error[0]) == (suffix == ".parquet")  # names the file that filled the disk
        assert sorted(load_completed(out)) == [0]  # shard 0 kept; shard 1 not marked complete
        assert not list(out.glob("*/shard-00001.*")) and fi.leftovers(out) == []

    monkeypatch.setattr(writers, "open_temp", real_open)  # space freed
    first = out / "data" / "shard-00000.parquet"
    stamp = (first.stat().st_ino, first.stat().st_mtime_ns)
    result = runner.invoke(app, target.args(run))
    assert result.exit_code == 0, result.output
    assert "shards written 3, resumed 1" in result.output
    assert (first.stat().st_ino, first.stat().st_mtime_ns) == stamp
    assert fi.leftovers(out) == []
    assert fi.compare(expected, target.fingerprint(run)) == []


def test_full_disk_in_an_atomic_write_names_the_file_and_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    from synthgen import atomic

    def full(path, *args, **kwargs):
        return io.TextIOWrapper(_DiskFull(path, "w"), encoding="utf-8")

    monkeypatch.setattr(atomic, "open", full, raising=False)
    with pytest.raises(OSError, match="No space left on device") as caught:
        atomic.write_text(tmp_path / "manifest.json", "x" * 1000)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "manifest.json")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("buffered", [True, False])
def test_full_disk_in_a_training_checkpoint_names_it_and_leaves_no_checkpoint(
    tmp_path: Path, monkeypatch, buffered: bool
) -> None:
    import torch

    from synthgen.training import checkpoints

    def full(path, mode):
        return io.BufferedWriter(_DiskFull(path, mode)) if buffered else _DiskFull(path, mode)

    monkeypatch.setattr(checkpoints, "open", full, raising=False)
    store = checkpoints.CheckpointStore(tmp_path / ".checkpoints")
    with pytest.raises(OSError, match="No space left on device") as caught:
        store.save("unet", 2, {"module": {"weight": torch.zeros(1000)}}, {})
    assert caught.value.filename == str(tmp_path / ".checkpoints" / "unet-step-0000002")
    assert store.latest("unet") is None and list((tmp_path / ".checkpoints").iterdir()) == []


def test_damaged_shards_are_named_by_inspect_and_exactly_they_are_rebuilt(built, work: Path, cli_env, monkeypatch):
    from synthgen.cli import app
    from synthgen.output.verify import inspect_output
    from synthgen.shard_builder import ShardBuilder

    target, reference, expected = built
    run = work / "build-damaged"
    shutil.copytree(reference, run)
    runner, out = cli_env(run), run / "out"
    flipped = out / "webdataset" / "shard-00000.tar"
    data = bytearray(flipped.read_bytes())
    data[600] ^= 0xFF  # one byte inside the first member
    flipped.write_bytes(bytes(data))
    for path in (out / "webdataset" / "shard-00001.tar", out / "data" / "shard-00002.parquet"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
    intact = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in out.glob("*/shard-00003.*")}
    assert len(intact) == 2

    problems = inspect_output(out).problems
    for name in ("webdataset/shard-00000.tar", "webdataset/shard-00001.tar", "data/shard-00002.parquet"):
        assert any(p.startswith(f"{name}:") for p in problems), (name, problems)
    assert not any("shard-00003" in p for p in problems)
    result = runner.invoke(app, ["inspect", str(out)])
    assert result.exit_code == 1 and "shard(s) 0, 1, 2 differ" in result.output

    generated: list[int] = []
    original_run_many = ShardBuilder.run_many

    def counting(self, shards, done):
        generated.extend(shard.index for shard in shards)
        return original_run_many(self, shards, done)

    monkeypatch.setattr(ShardBuilder, "run_many", counting)
    result = runner.invoke(app, target.args(run))
    assert result.exit_code == 0, result.output
    assert generated == [0, 1, 2] and "shards written 3, resumed 1" in result.output
    assert {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in intact} == intact
    assert inspect_output(out).ok
    assert fi.compare(expected, target.fingerprint(run)) == []
    assert fi.leftovers(out) == []
