"""The default feature space: multi-scale image statistics that need no downloaded weights.

Why hand-crafted: a fidelity number must be computable offline, deterministically and fast on a CPU, and
the failures of generators that matter first are low-level (blur, noise, compression and up-sampling grids,
wrong contrast or colour, wrong layout). Each block measures one of them on a 256x256 copy of the image:
  colour       channel means/stds, luminance quantiles, clipped-dark/bright fractions (contrast, exposure);
  bands        per octave of a difference-of-Gaussians pyramid: log energy, log kurtosis, sparsity
               (blur removes fine octaves, noise fills them and makes them Gaussian);
  band_layout  fine-octave energy per quadrant relative to the whole (where the detail is);
  orientation  magnitude-weighted gradient orientation histograms at two scales (edge structure);
  grid         periodicity of pixel differences with period 2/4/8/16 (JPEG blocks, decoder up-sampling grids);
  layout       an 8x8 luminance thumbnail (what is where: anatomy, framing).
Every feature is standardised with fixed constants (fitted once on chest X-ray and colonoscopy images) and
each block scaled by 1/sqrt(its size), so no block dominates a distance by having more numbers. It sees no
semantics a trained network would; use a model feature space (features.py) for that.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from PIL import Image
from scipy import ndimage

SIZE = 256
LEVELS = 6  # octaves 256 .. 8 pixels
_KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], dtype=np.float32) / 16.0
_QUANTILES = (1, 5, 25, 50, 75, 95, 99)
_PERIODS = (2, 4, 8, 16)
_BINS = 8
BLOCKS = (
    ("colour", 6 + len(_QUANTILES) + 2),
    ("bands", 3 * LEVELS),
    ("band_layout", 4 * 3),
    ("orientation", 2 * _BINS),
    ("grid", 2 * len(_PERIODS)),
    ("layout", 64),
)
DIM = sum(size for _, size in BLOCKS)


def _rgb(image: Image.Image) -> np.ndarray:
    """(SIZE, SIZE, 3) float32 in [0, 1]; grayscale is replicated to three channels, other sizes squashed."""
    image = image.convert("RGB")
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float32) / 255.0


def _smooth(x: np.ndarray) -> np.ndarray:
    return ndimage.convolve1d(ndimage.convolve1d(x, _KERNEL, axis=0, mode="reflect"), _KERNEL, axis=1, mode="reflect")


def _pyramid(gray: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Gaussian levels and their difference-of-Gaussians bands (one octave each)."""
    levels, bands = [], []
    current = gray
    for _ in range(LEVELS):
        smooth = _smooth(current)
        levels.append(current)
        bands.append(current - smooth)
        current = smooth[::2, ::2]
    return levels, bands


def _band_stats(band: np.ndarray) -> list[float]:
    energy = float(np.mean(band**2))
    kurtosis = float(np.mean(band**4)) / (energy**2 + 1e-20)
    return [
        np.log(energy + 1e-10),
        np.log(kurtosis + 1e-6),
        np.log(np.mean(np.abs(band)) + 1e-6) - 0.5 * np.log(energy + 1e-10),
    ]


def _quadrant_energy(band: np.ndarray) -> list[float]:
    half = band.shape[0] // 2
    total = np.log(np.mean(band**2) + 1e-10)
    quads = [band[:half, :half], band[:half, half:], band[half:, :half], band[half:, half:]]
    return [float(np.log(np.mean(q**2) + 1e-10) - total) for q in quads]


def _orientation(level: np.ndarray) -> list[float]:
    gy, gx = np.gradient(level)
    magnitude = np.hypot(gx, gy)
    angle = np.mod(np.arctan2(gy, gx), np.pi)
    hist, _ = np.histogram(angle, bins=_BINS, range=(0.0, np.pi), weights=magnitude)
    return list(hist / (hist.sum() + 1e-8))


def _grid(gray: np.ndarray) -> list[float]:
    """How much stronger pixel steps are at one phase of period p than on average (0 for no grid)."""
    out = []
    for axis in (1, 0):
        profile = np.abs(np.diff(gray, axis=axis)).mean(axis=1 - axis)
        for period in _PERIODS:
            usable = len(profile) // period * period
            phases = profile[:usable].reshape(-1, period).mean(axis=0)
            out.append(float(np.log(phases.max() / (phases.mean() + 1e-8) + 1e-8)))
    return out


def raw_stats(image: Image.Image) -> np.ndarray:
    """The unstandardised statistics of one image, block after block (see BLOCKS)."""
    rgb = _rgb(image)
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    levels, bands = _pyramid(gray)
    colour = [*rgb.mean(axis=(0, 1)), *rgb.std(axis=(0, 1)), *np.percentile(gray, _QUANTILES)]
    colour += [float(np.mean(gray < 0.02)), float(np.mean(gray > 0.98))]
    band_stats = [value for band in bands for value in _band_stats(band)]
    band_layout = [value for band in bands[:3] for value in _quadrant_energy(band)]
    orientation = _orientation(levels[0]) + _orientation(levels[2])
    layout = gray.reshape(8, SIZE // 8, 8, SIZE // 8).mean(axis=(1, 3)).ravel()
    parts = [colour, band_stats, band_layout, orientation, _grid(gray), list(layout)]
    return np.asarray([value for part in parts for value in part], dtype=np.float64)


def _block_weights() -> np.ndarray:
    return np.concatenate([np.full(size, 1.0 / np.sqrt(size)) for _, size in BLOCKS])


class ImageStatsFeatures:
    """Standardised multi-scale image statistics (the default feature space; see the module docstring)."""

    name = "imagestats-v1"
    dim = DIM

    def __init__(self) -> None:
        from synthgen.evaluation.image_stats_calibration import MEAN, STD

        self._mean = np.asarray(MEAN, dtype=np.float64)
        self._scale = _block_weights() / np.maximum(np.asarray(STD, dtype=np.float64), 1e-3)
        record = {"name": self.name, "size": SIZE, "levels": LEVELS, "blocks": BLOCKS, "mean": MEAN, "std": STD}
        self.sha256 = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
        self.description = (
            f"{DIM} multi-scale image statistics (colour, octave band energies and kurtosis, gradient orientations, "
            "compression/up-sampling grids, 8x8 layout), standardised with fixed constants; no trained weights, "
            "so it ranks low-level realism (blur, noise, artefacts, contrast), not anatomy."
        )

    def features(self, images: list[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        raw = np.stack([raw_stats(image) for image in images])
        return ((raw - self._mean) * self._scale).astype(np.float32)
