"""What every layer asks of the machine it runs on: device, dtype, threads, hub access, the cache root, progress.

The bottom of the package (beside `errors`, `atomic`, `sample`, `provenance`): it imports nothing of synthgen
but `errors`, and nothing heavy at import time, so the CLI starts fast. One owner for each of these
concerns, so the build, training, the audit and the CLI make the same choice.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import Any, Protocol

from synthgen.errors import SynthgenError

# `owner/name` as the Hugging Face hub spells a repository id (a local folder is tried first everywhere).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class Progress(Protocol):
    """How long work reports itself: `stage` names it, `total` is None when unknown."""

    def __call__(self, stage: str, done: int, total: int | None) -> None: ...


class Reporter:
    """What long work tells the user: plain log lines and per-stage progress.

    The CLI passes a rich implementation (bars on a terminal); Python callers may pass none (silent).
    """

    def log(self, message: str, warning: bool = False) -> None:  # noqa: B027 - optional hook
        """Plain text (no markup); `warning` marks something the user should look at."""

    def progress(self, stage: str, done: int, total: int | None) -> None:  # noqa: B027 - optional hook
        """A `Progress` callback: `stage` names the work, `total` is None when unknown."""


def pick_device(requested: str | None = "auto", field: str = "sampling.device"):
    """`auto` (or None) prefers CUDA, then Apple MPS, then CPU; an explicit device that is missing is an error.

    `field` names the setting in that error (the recipe's `sampling.device`, or a CLI flag).
    """
    import torch

    available = {
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
        "cpu": True,
    }
    requested = requested or "auto"
    if requested == "auto":
        requested = next(name for name in ("cuda", "mps", "cpu") if available[name])
    if requested.split(":")[0] not in available:
        raise SynthgenError(f"{field}: unknown device '{requested}' (use auto, cpu, cuda or mps)")
    if not available[requested.split(":")[0]]:
        raise SynthgenError(f"{field}: '{requested}' is not available on this machine")
    return torch.device(requested)


def pick_dtype(device):
    """Half precision on accelerators (bf16 where supported: no fp16 VAE overflow), fp32 on CPU."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def memory_available(meminfo: str = "/proc/meminfo") -> int | None:
    """The memory the kernel could give this process now (MemAvailable, bytes); None where it cannot be read
    (not Linux): callers then refuse nothing on its account."""
    try:
        with open(meminfo) as handle:
            found = [line.split()[1] for line in handle if line.startswith("MemAvailable:")]
        return int(found[0]) * 1024 if found else None
    except (OSError, ValueError, IndexError):
        return None


def cpu_threads() -> int:
    """The CPU threads synthgen may use: $SYNTHGEN_THREADS, else the CPUs Ray gave this task or actor, else
    $OMP_NUM_THREADS, else the CPUs this process may run on (its affinity mask: a batch scheduler's or
    container's share, not the whole machine)."""
    count = _thread_variable("SYNTHGEN_THREADS") or ray_cpus() or _thread_variable("OMP_NUM_THREADS")
    if count:
        return count
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS and Windows have no affinity mask
        return max(1, os.cpu_count() or 1)


def _thread_variable(variable: str) -> int | None:
    """A thread count from the environment (None when unset); a bad one is a one-line error naming it."""
    value = os.environ.get(variable, "").strip()
    if variable == "OMP_NUM_THREADS":
        value = value.split(",")[0].strip()  # "8,2" sets nested OpenMP levels: the outer one is ours
    if not value:
        return None
    try:
        count = int(value)
    except ValueError:
        raise SynthgenError(f"{variable}: must be a whole number of threads, got {value!r}") from None
    if count < 1:
        raise SynthgenError(f"{variable}: must be at least 1, got {count}")
    return count


def ray_cpus() -> int | None:
    """The CPUs Ray allotted to this task or actor (at least 1), or None outside a Ray worker.

    Ray is looked at only when something already imported it: synthgen itself never starts it here."""
    ray = sys.modules.get("ray")
    if ray is None or not getattr(ray, "is_initialized", lambda: False)():
        return None
    try:
        context = ray.get_runtime_context()
        if context.worker.mode != ray.WORKER_MODE:  # the driver has no allocation of its own
            return None
        cpus = context.get_assigned_resources().get("CPU")
    except Exception:  # an unexpected Ray version: fall back to the other sources
        return None
    return max(1, int(cpus)) if cpus else None


# The native thread pools beside torch's that synthgen sizes: (module, getter, setter).
_NATIVE_POOLS = (("faiss", "omp_get_max_threads", "omp_set_num_threads"), ("cv2", "getNumThreads", "setNumThreads"))


def set_cpu_threads(value: int | str, name: str = "--threads") -> int:
    """Fix this process's thread count (the CLI's `--threads`): SYNTHGEN_THREADS, and OMP_NUM_THREADS for the
    OpenMP and BLAS pools that libraries size when they load. `name` labels a bad value in the one-line error."""
    try:
        count = int(str(value).strip())
    except ValueError:
        raise SynthgenError(f"{name}: must be a whole number of threads, got {value!r}") from None
    if count < 1:
        raise SynthgenError(f"{name}: must be at least 1, got {count}")
    os.environ["SYNTHGEN_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(count)
    return count


def use_cpu_threads(libraries: tuple[str, ...] = ("torch",)) -> int:
    """Give torch, FAISS and OpenCV exactly `cpu_threads()` threads each; returns the count.

    Sampling, training and the audit are compute-bound: more threads than CPUs, or two processes each taking
    every core, slow a step down many times over. Each library named in `libraries` ("torch", "faiss", "cv2")
    is imported and limited; one already imported is limited too; the others are left unloaded.
    """
    count = cpu_threads()
    for name, _, setter in (("torch", "get_num_threads", "set_num_threads"), *_NATIVE_POOLS):
        module = sys.modules.get(name)
        if module is None and name in libraries:
            try:
                module = importlib.import_module(name)
            except ImportError:  # an optional library that is not installed has no threads to limit
                continue
        if module is not None and hasattr(module, setter):
            getattr(module, setter)(count)
    return count


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """The block runs with `count` torch threads on the calling thread; the previous count comes back after.

    torch fixes a thread's OpenMP team size at its first parallel op and `set_num_threads` changes only the
    caller's (and the default of threads that have not run one yet), so each denoising stream sets its own.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def finishing_threads(count: int) -> Iterator[None]:
    """The block (a generator's finishing thread: decode, encode, the audit's OpenCV and FAISS calls) runs with
    `count` threads in torch, OpenCV and FAISS, as one stream does; the previous counts come back after.

    While denoising streams keep every core busy, a finishing thread that fans out to all cores in OpenCV and
    FAISS (OpenMP teams that spin while they wait) takes CPU from the streams for nothing. Only libraries already
    imported are limited: none is loaded here. torch's and FAISS's counts are per thread, OpenCV's is global
    (the streams do not call OpenCV).
    """
    loaded = [(sys.modules[name], get, put) for name, get, put in _NATIVE_POOLS if name in sys.modules]
    previous = [getattr(module, get)() for module, get, _ in loaded]
    for module, _, put in loaded:
        getattr(module, put)(count)
    try:
        with torch_threads(count):
            yield
    finally:
        for (module, _, put), value in zip(loaded, previous, strict=True):
            getattr(module, put)(value)


def dtype_kwarg(dtype) -> dict[str, Any]:
    """diffusers renamed `torch_dtype` to `dtype` (2026, PR 14205); pass whichever this version understands."""
    from diffusers.utils import deprecation_utils

    renamed = hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
    return {"dtype" if renamed else "torch_dtype": dtype}


def quiet_libraries() -> None:
    """Silence diffusers/transformers load reports and progress bars: synthgen shows its own progress."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


def offline() -> bool:
    """True when the user forbade hub downloads (HF_HUB_OFFLINE): only local folders and the hub cache count."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def cache_root() -> Path:
    """Where trained models and audit indexes are cached: $SYNTHGEN_CACHE, else ~/.cache/synthgen."""
    return Path(os.environ.get("SYNTHGEN_CACHE", Path.home() / ".cache" / "synthgen"))


def first_line(error: BaseException) -> str:
    """An exception's first line (libraries' messages run to pages), or its type when it has no text."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def tidy_path(path: str | PathLike[str]) -> Path:
    """The same location without `x/..` and `./` (`work/../data` -> `data`), for messages users read.

    Folding `..` textually is wrong when it follows a symlink; then the resolved path is returned instead.
    """
    text = os.fspath(path)
    folded = os.path.normpath(text)
    if folded == text or ".." not in Path(text).parts:
        return Path(folded)
    return Path(folded) if Path(folded).resolve() == Path(text).resolve() else Path(text).resolve()
