"""How much memory fitting copydetect takes, and the one-line refusal when the training set would not fit: made
before an image is read (and by a build before it trains its model), not as an OOM kill hours in.

Measured with bench/bench_copydetect_scale.py (docs/audit.md "At scale"): what grows with the training set in RAM
is ~5 KiB per image; the keypoints, tile codes and index vectors (~220 KiB per image) stay in RAM only until each
store passes SPILL_BYTES (1 GiB), then live in temporary files (keypoint_store.py, index_backends.py).
"""

from __future__ import annotations

from synthgen.audit.index import index_backends
from synthgen.errors import SynthgenError

# fit's anonymous memory (docs/audit.md "At scale"): per training image, what stays in RAM however many there are
# (pixels, keys, offsets, tile owners), plus what moves to temporary files once each of its stores passes SPILL_BYTES
# (keypoint_store.py: frame and fine keypoints, tile codes; index_backends.py: pixel and frame-code vectors; regions
# off: 3 stores, 80 of 220 KiB), plus a margin for vocabulary training, libraries and the caller.
FIT_RESIDENT_PER_IMAGE = 8 * 1024
FIT_SPILLABLE_PER_IMAGE = {True: 248 * 1024, False: 88 * 1024}
FIT_SPILLING_STORES = {True: 5, False: 3}
FIT_PEAK_FIXED = 1 << 30
MEMORY_CHECK = "SYNTHGEN_AUDIT_MEMORY_CHECK"  # 0: fit whatever the estimate (e.g. with swap)


def fit_memory(images: int, regions: bool) -> int:
    """Estimated peak memory of fitting `images` training images: grows per image until the stores spill."""
    spillable = min(
        images * FIT_SPILLABLE_PER_IMAGE[regions], FIT_SPILLING_STORES[regions] * index_backends.SPILL_BYTES
    )
    return FIT_PEAK_FIXED + images * FIT_RESIDENT_PER_IMAGE + spillable


def check_fit_memory(images: int | None, regions: bool, available: int | None, read_so_far: bool = False) -> None:
    """Refuse, in one line, a training set whose fit would exceed the available memory: before reading it when its
    size is known, else as soon as the images read so far would (an OOM kill hours into a build says nothing)."""
    if images is None or available is None:
        return
    need = fit_memory(images, regions)
    if need <= available:
        return
    at_least = "at least " if read_so_far else ""
    raise SynthgenError(
        f"audit.embedder: copydetect needs {at_least}~{need / 2**30:.1f} GiB of memory to index "
        f"{images:,} training images{' read so far' if read_so_far else ''} (~{FIT_RESIDENT_PER_IMAGE // 1024} KiB "
        f"each, plus up to {FIT_SPILLING_STORES[regions] * index_backends.SPILL_BYTES / 2**30:.0f} GiB before "
        f"its stores spill to disk) but {available / 2**30:.1f} GiB is available; use `audit.embedder: pixel` or "
        f"an embedding plug-in, which keep only their vectors (on disk, IVF past 200k), or set {MEMORY_CHECK}=0 to "
        "fit anyway, e.g. with swap"
    )
