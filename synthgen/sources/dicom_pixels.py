"""One DICOM frame to the 8-bit RGB image every stage sees.

Grey images, in this order (docs/dicom.md): stored values -> modality LUT (rescale slope/intercept, or a Modality
LUT) -> VOI: the source's `window`, else the file's VOI LUT, else its first Window Center/Width (with its VOI LUT
Function), else the frame's own min..max -> MONOCHROME1 inverted -> rounded to 8 bits. Everything before the
rounding is float64, so 16-bit detail survives a narrow window (stored 1000 and 1003 stay apart).
Colour (RGB; YBR_* is converted to RGB by pydicom; PALETTE COLOR through its palette) is scaled from its bit depth.
`mask_bands` rows are left out of the automatic min..max and are black in the result.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi

from synthgen.sources.spec import WindowSpec


def frame_image(arr: np.ndarray, ds: Dataset, window: WindowSpec | None, mask: float) -> Image.Image:
    """The frame `arr` (as pydicom decodes it) as an 8-bit RGB image, bands masked."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if arr.ndim == 3 or photometric == "PALETTE COLOR":
        levels = _colour(arr, ds, photometric)
    else:
        levels = _grey(arr, ds, window, _kept(arr.shape[0], mask), invert=photometric == "MONOCHROME1")
    pixels = np.rint(np.nan_to_num(levels, nan=0.0) * 255.0).clip(0, 255).astype(np.uint8)
    band = _band(pixels.shape[0], mask)
    if band:
        pixels[:band] = 0
        pixels[pixels.shape[0] - band :] = 0
    image = Image.fromarray(np.ascontiguousarray(pixels), "L" if pixels.ndim == 2 else "RGB")
    return image.convert("RGB")


def _band(height: int, mask: float) -> int:
    return int(round(height * mask))


def _kept(height: int, mask: float) -> slice:
    """The rows outside the masked bands (all rows when nothing would be left)."""
    band = _band(height, mask)
    return slice(band, height - band) if height - 2 * band > 0 else slice(0, height)


def _colour(arr: np.ndarray, ds: Dataset, photometric: str) -> np.ndarray:
    """RGB levels in 0..1: a palette through its lookup table, else the samples over their bit depth."""
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        bits = 8 if arr.dtype == np.uint8 else 16
    else:
        bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return arr[..., :3].astype(np.float64) / float(2**bits - 1)


def _grey(arr: np.ndarray, ds: Dataset, window: WindowSpec | None, rows: slice, invert: bool) -> np.ndarray:
    """Grey levels in 0..1 after the modality LUT and the VOI transform (see the module docstring)."""
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    levels = None
    if window is not None:
        levels = linear_window(values, window.center, window.width)
    elif ds.get("VOILUTSequence"):
        levels = _voi_lut(values, ds)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        levels = _file_window(values, ds)
    if levels is None:
        levels = stretch(values, rows)
    return 1.0 - levels if invert else levels


def linear_window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing onto 0..1 (LINEAR, LINEAR_EXACT or SIGMOID)."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width <= 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _file_window(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The file's first Window Center/Width; None when they are unusable (then min..max applies)."""
    try:
        center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    if not (np.isfinite(center) and np.isfinite(width)) or width <= 0:
        return None
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    return linear_window(values, center, width, function if function in ("LINEAR_EXACT", "SIGMOID") else "LINEAR")


def _first(value: Any) -> float:
    """The first value of a possibly multi-valued DS element, as a float."""
    if not isinstance(value, (int, float, str)):  # a MultiValue: the first window is the default one
        value = value[0]
    return float(value)


def _voi_lut(values: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """The file's first VOI LUT (its input: the modality values), scaled by its output bit depth; None if broken."""
    try:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        out = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
    except Exception:  # noqa: BLE001 - a broken VOI LUT falls back to min..max, it does not lose the image
        return None
    return np.clip(np.asarray(out, dtype=np.float64) / float(2**bits - 1), 0.0, 1.0)


def stretch(values: np.ndarray, rows: slice = slice(None)) -> np.ndarray:
    """Min..max of the finite values in `rows` onto 0..1 (the fallback when no window is known)."""
    finite = values[rows][np.isfinite(values[rows])]
    if finite.size == 0:
        return np.zeros_like(values)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros_like(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)
