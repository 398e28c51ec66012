"""CPU threads (issue 13, issue 10): `--threads N` > $SYNTHGEN_THREADS > a Ray worker's CPU allocation >
$OMP_NUM_THREADS > the affinity mask, and every library synthgen drives (torch, FAISS, OpenCV) gets that count.
Nothing here is timed."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synthgen import runtime
from synthgen.cli import app
from synthgen.errors import SynthgenError
from synthgen.runtime import cpu_threads, set_cpu_threads, use_cpu_threads

PACKAGE = Path(runtime.__file__).parent


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No thread variables, and an affinity mask of 6 CPUs; restores the variables the CLI sets."""
    monkeypatch.delenv("SYNTHGEN_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)), raising=False)
    return monkeypatch


def test_precedence_flag_then_synthgen_threads_then_omp_then_affinity(clean_env: pytest.MonkeyPatch) -> None:
    assert cpu_threads() == 6
    clean_env.setenv("OMP_NUM_THREADS", "4,2")  # nested OpenMP levels: the outer one counts
    assert cpu_threads() == 4
    clean_env.setenv("SYNTHGEN_THREADS", "3")
    assert cpu_threads() == 3
    result = CliRunner().invoke(app, ["--threads", "2", "schema"])
    assert result.exit_code == 0, result.output
    assert cpu_threads() == 2 and os.environ["OMP_NUM_THREADS"] == "2"  # libraries' own pools follow the flag


def test_synthgen_threads_alone_also_sizes_openmp(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SYNTHGEN_THREADS", "5")
    clean_env.setenv("OMP_NUM_THREADS", "8")
    assert CliRunner().invoke(app, ["schema"]).exit_code == 0
    assert os.environ["OMP_NUM_THREADS"] == "5"


def _fake_ray(mode: int, cpus: float | None) -> object:
    """Just enough of Ray for `runtime.ray_cpus`: a worker (mode 1) or a driver (mode 0) with `cpus` allotted."""
    from types import SimpleNamespace

    context = SimpleNamespace(
        worker=SimpleNamespace(mode=mode), get_assigned_resources=lambda: {} if cpus is None else {"CPU": cpus}
    )
    return SimpleNamespace(WORKER_MODE=1, is_initialized=lambda: True, get_runtime_context=lambda: context)


def test_a_ray_worker_takes_the_cpus_ray_gave_it(clean_env: pytest.MonkeyPatch) -> None:
    """Inside a Ray task or actor: Ray's CPU allocation, before OMP_NUM_THREADS (which a cluster's nodes may
    export for every process) and the affinity mask (the whole node); SYNTHGEN_THREADS still wins."""
    import sys

    clean_env.setenv("OMP_NUM_THREADS", "4")
    clean_env.setitem(sys.modules, "ray", _fake_ray(1, 3.0))
    assert cpu_threads() == 3
    clean_env.setitem(sys.modules, "ray", _fake_ray(1, 0.5))  # a fraction of a CPU is still one thread
    assert cpu_threads() == 1
    clean_env.setitem(sys.modules, "ray", _fake_ray(0, None))  # the driver: no allocation of its own
    assert cpu_threads() == 4
    clean_env.setitem(sys.modules, "ray", _fake_ray(1, 3.0))
    clean_env.setenv("SYNTHGEN_THREADS", "2")
    assert cpu_threads() == 2


@pytest.mark.parametrize(("value", "message"), [("0", "at least 1"), ("-2", "at least 1"), ("two", "a whole number")])
def test_bad_thread_counts_are_one_line_errors(clean_env: pytest.MonkeyPatch, value: str, message: str) -> None:
    result = CliRunner().invoke(app, ["--threads", value, "schema"])
    assert result.exit_code == 2
    assert re.fullmatch(rf"error: --threads: must be {message}.*\n", result.output), result.output
    with pytest.raises(SynthgenError, match=f"--threads: must be {message}"):
        set_cpu_threads(value)
    clean_env.setenv("SYNTHGEN_THREADS", value)
    with pytest.raises(SynthgenError, match=f"SYNTHGEN_THREADS: must be {message}"):
        cpu_threads()


def test_torch_faiss_and_opencv_get_the_count(clean_env: pytest.MonkeyPatch) -> None:
    import cv2
    import faiss
    import torch

    before = torch.get_num_threads(), cv2.getNumThreads(), faiss.omp_get_max_threads()
    try:
        clean_env.setenv("SYNTHGEN_THREADS", "2")
        assert use_cpu_threads(("torch", "faiss", "cv2")) == 2
        assert (torch.get_num_threads(), cv2.getNumThreads(), faiss.omp_get_max_threads()) == (2, 2, 2)
        clean_env.setenv("SYNTHGEN_THREADS", "1")
        use_cpu_threads()  # torch by default; FAISS and OpenCV because they are already loaded
        assert (torch.get_num_threads(), cv2.getNumThreads(), faiss.omp_get_max_threads()) == (1, 1, 1)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
        faiss.omp_set_num_threads(before[2])


def test_only_runtime_sets_thread_counts() -> None:
    """Every thread pool is sized by `runtime.use_cpu_threads`, so `--threads` reaches all of them."""
    setters = re.compile(r"set_num_threads\(|omp_set_num_threads\(|setNumThreads\(|use_all_cores")
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in PACKAGE.rglob("*.py")
        if path.name != "runtime.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if setters.search(line)
    ]
    assert offenders == []
    callers = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if "use_cpu_threads(" in p.read_text()}
    for module in ("generate.py", "training/harness.py", "audit/detection/auditor.py", "audit/entry.py"):
        assert module in callers


def test_the_finishing_thread_runs_with_a_stream_s_threads(clean_env: pytest.MonkeyPatch) -> None:
    """While streams keep every core busy, the finishing thread's torch, OpenCV and FAISS calls (decode, the audit)
    take one stream's threads, not a pool over every core; the counts come back after."""
    import cv2
    import faiss
    import torch

    from synthgen.runtime import finishing_threads

    before = torch.get_num_threads(), cv2.getNumThreads(), faiss.omp_get_max_threads()
    try:
        clean_env.setenv("SYNTHGEN_THREADS", "2")
        use_cpu_threads(("torch", "faiss", "cv2"))
        with finishing_threads(1):
            assert (torch.get_num_threads(), cv2.getNumThreads(), faiss.omp_get_max_threads()) == (1, 1, 1)
        assert (torch.get_num_threads(), cv2.getNumThreads(), faiss.omp_get_max_threads()) == (2, 2, 2)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
        faiss.omp_set_num_threads(before[2])
