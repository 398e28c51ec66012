"""Built-in demo data: procedural colonoscopy-like PHANTOMS (drawn by numpy; not real patient data).

Every phantom shares a pinkish-orange mucosa with random lighting, a dark lumen blob, a few soft fold
arcs and a dark circular scope edge. The classes differ visibly, so that a tiny diffusion model trained
for minutes at 64x64 learns them:

- `polyp`: a raised reddish round/oval dome (radius 12-25% of the side), shaded from one side, with a
  small white specular highlight;
- `ulcer`: an irregular whitish-yellow fibrin patch with a dark red rim;
- `normal`: no lesion, a few thin vessels.

Captions (exact patterns, so recipe prompts can match them):

- ``colonoscopy phantom showing a {size} polyp in the {location}``
- ``colonoscopy phantom showing a {size} ulcer in the {location}``
- ``colonoscopy phantom showing normal mucosa``

with {size} one of ``small``, ``large`` and {location} one of ``upper left``, ``upper right``,
``lower left``, ``lower right``, ``centre``; both describe the drawn lesion. Each phantom is a pure
function of (seed, class, index); `key` is ``demo-<class>-<index:04d>``, `label` the class name, and
`metadata` holds ``phantom``, ``size`` and ``location``. Classes are interleaved (polyp 0, ulcer 0,
normal 0, polyp 1, ...) so `limit` keeps the classes balanced.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import numpy as np
from PIL import Image

from synthgen.errors import SynthgenError
from synthgen.sample import Sample
from synthgen.sources.base import Source, take
from synthgen.sources.spec import SourceSpec

DEMO_CLASSES = ("polyp", "ulcer", "normal")
DEMO_SIZES = ("small", "large")
DEMO_LOCATIONS = {  # (y, x) centre of the lesion as a fraction of the side; y grows downwards
    "upper left": (0.33, 0.33),
    "upper right": (0.33, 0.67),
    "lower left": (0.67, 0.33),
    "lower right": (0.67, 0.67),
    "centre": (0.5, 0.5),
}
GENERATOR_VERSION = 1  # bump whenever the drawing changes, so fingerprints (and caches) change
_CAPTION = "colonoscopy phantom showing "

Grid = tuple[np.ndarray, np.ndarray]


def phantom_caption(kind: str, size: str, location: str) -> str:
    return _CAPTION + ("normal mucosa" if kind == "normal" else f"a {size} {kind} in the {location}")


def draw_phantom(kind: str, seed: int, index: int, resolution: int = 64) -> tuple[Image.Image, str, dict[str, str]]:
    """One phantom (image, caption, metadata); deterministic in (seed, kind, index)."""
    if kind not in DEMO_CLASSES:
        raise SynthgenError(f"unknown demo class {kind!r}; valid: {', '.join(DEMO_CLASSES)}")
    rng = np.random.default_rng([seed % 2**63, DEMO_CLASSES.index(kind), index])
    centres = (np.arange(resolution, dtype=np.float32) + 0.5) / resolution
    grid: Grid = np.meshgrid(centres, centres, indexing="ij")
    size = str(rng.choice(DEMO_SIZES))
    location = str(rng.choice(list(DEMO_LOCATIONS)))
    lesion = np.asarray(DEMO_LOCATIONS[location]) + rng.uniform(-0.04, 0.04, 2)
    lumen_spots = [spot for name, spot in DEMO_LOCATIONS.items() if name != location or kind == "normal"]
    lumen = np.asarray(lumen_spots[rng.integers(len(lumen_spots))]) + rng.uniform(-0.06, 0.06, 2)

    img, light = _mucosa(rng, grid, lumen)
    if kind == "polyp":
        _polyp(img, rng, grid, lesion, size)
    elif kind == "ulcer":
        _ulcer(img, light, rng, grid, lesion, size)
    else:
        _vessels(img, rng, grid)
    img = _scope_edge(img, rng, grid) + rng.normal(0, 0.012, img.shape)
    pixels = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    metadata = {"phantom": "true", "size": "" if kind == "normal" else size}
    metadata["location"] = "" if kind == "normal" else location
    return Image.fromarray(pixels, "RGB"), phantom_caption(kind, size, location), metadata


def _mucosa(rng: np.random.Generator, grid: Grid, lumen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lit pink-orange wall, fold arcs around a dark lumen; returns the image and the light field."""
    y, x = grid
    base = np.array([0.88, 0.5, 0.4]) * rng.uniform(0.9, 1.08, 3)
    gy, gx = 0.5 + rng.uniform(-0.15, 0.15, 2)
    light = rng.uniform(0.85, 1.1) * (0.45 + 0.65 * np.exp(-((y - gy) ** 2 + (x - gx) ** 2) / 0.18))
    shade = np.zeros_like(y)
    for _ in range(3):  # low-frequency texture
        fy, fx = rng.uniform(3, 9, 2)
        shade += 0.035 * np.sin(fy * y * np.pi + fx * x * np.pi + rng.uniform(0, 2 * np.pi))
    dy, dx = y - lumen[0], x - lumen[1]
    dist, angle = np.hypot(dy, dx), np.arctan2(dy, dx)
    radius = rng.uniform(0.07, 0.12)
    for k in range(int(rng.integers(2, 5))):  # fold arcs: a bright ridge with a shadow outside it
        ring = radius * (1.8 + 1.1 * k) + rng.uniform(-0.02, 0.02)
        width = rng.uniform(0.012, 0.022)
        turn = np.angle(np.exp(1j * (angle - rng.uniform(-np.pi, np.pi))))
        window = np.exp(-((turn / rng.uniform(0.6, 1.4)) ** 2))
        shade += window * (0.2 * np.exp(-(((dist - ring) / width) ** 2)))
        shade -= window * (0.25 * np.exp(-(((dist - ring - 1.6 * width) / width) ** 2)))
    dark = np.exp(-1.5 * (dist / radius) ** 2)
    img = base * (light * (1 + shade) * (1 - 0.9 * dark))[..., None]
    return img, light


def _polyp(img: np.ndarray, rng: np.random.Generator, grid: Grid, centre: np.ndarray, size: str) -> None:
    """A raised reddish dome, Lambert-shaded from one side, with a white specular spot."""
    y, x = grid
    radius = rng.uniform(0.12, 0.16) if size == "small" else rng.uniform(0.19, 0.25)
    aspect, theta = rng.uniform(0.8, 1.25), rng.uniform(0, np.pi)
    dy, dx = y - centre[0], x - centre[1]
    u, v = dx * np.cos(theta) + dy * np.sin(theta), dy * np.cos(theta) - dx * np.sin(theta)
    e = np.hypot(u / (radius * aspect), v * aspect / radius)
    alpha = np.clip((1 - e) / 0.1, 0, 1)[..., None]
    height = np.sqrt(np.clip(1 - e**2, 0, 1))
    lx, ly = np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)
    lambert = np.clip(0.55 * (-dx / radius * lx - dy / radius * ly) + 0.8 * height, 0, 1)
    colour = np.array([0.8, 0.2, 0.18]) * rng.uniform(0.9, 1.1, 3)
    dome = colour * (0.35 + 0.8 * lambert)[..., None]
    shadow = np.exp(-(((e - 1.08) / 0.12) ** 2)) * np.clip(dx / radius * lx + dy / radius * ly, 0, 1)
    img *= (1 - 0.45 * shadow)[..., None]
    img[:] = img * (1 - alpha) + dome * alpha
    spot = np.exp(-((dx + 0.4 * radius * lx) ** 2 + (dy + 0.4 * radius * ly) ** 2) / (2 * (0.1 * radius) ** 2))
    spot = (spot * alpha[..., 0])[..., None]
    img[:] = img * (1 - spot) + spot


def _ulcer(
    img: np.ndarray, light: np.ndarray, rng: np.random.Generator, grid: Grid, centre: np.ndarray, size: str
) -> None:
    """An irregular whitish-yellow fibrin patch inside a dark red rim."""
    y, x = grid
    radius = rng.uniform(0.09, 0.13) if size == "small" else rng.uniform(0.15, 0.21)
    dy, dx = y - centre[0], x - centre[1]
    angle = np.arctan2(dy, dx)
    wobble = sum(rng.uniform(0.1, 0.3) / k * np.sin(k * angle + rng.uniform(0, 2 * np.pi)) for k in range(2, 6))
    dist = np.hypot(dy, dx) / (radius * (1 + wobble))
    rim = (0.85 * np.exp(-(((dist - 1.0) / 0.22) ** 2)))[..., None]
    img[:] = img * (1 - rim) + np.array([0.5, 0.07, 0.06]) * rim
    texture = 1 + 0.06 * np.sin(37 * x + 23 * y + rng.uniform(0, 2 * np.pi)) * np.sin(29 * y - 17 * x)
    fibrin = np.array([0.97, 0.9, 0.62]) * (texture * np.clip(light, 0.6, 1.1))[..., None]
    patch = np.clip((1 - dist) / 0.12, 0, 1)[..., None]
    img[:] = img * (1 - patch) + fibrin * patch


def _vessels(img: np.ndarray, rng: np.random.Generator, grid: Grid) -> None:
    """A few thin, wavy, dark red submucosal vessels."""
    y, x = grid
    for _ in range(int(rng.integers(2, 5))):
        theta = rng.uniform(0, np.pi)
        u, v = x * np.cos(theta) + y * np.sin(theta), y * np.cos(theta) - x * np.sin(theta)
        path = rng.uniform(-0.6, 0.9) + rng.uniform(0.01, 0.05) * np.sin(rng.uniform(8, 20) * u + rng.uniform(0, 6))
        line = (0.45 * np.exp(-(((v - path) / rng.uniform(0.006, 0.012)) ** 2)))[..., None]
        img[:] = img * (1 - line) + np.array([0.55, 0.1, 0.12]) * line


def _scope_edge(img: np.ndarray, rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """The dark circular vignette of the endoscope's field of view."""
    y, x = grid
    dist = np.hypot(y - 0.5, x - 0.5) / rng.uniform(0.47, 0.52)
    return img * (np.clip((1 - dist) / 0.05, 0, 1) * (1 - 0.35 * dist**4))[..., None]


class DemoSource(Source):
    """`spec.per_class` phantoms of each of `spec.classes` (default: all) at `spec.resolution` px."""

    def __init__(self, spec: SourceSpec) -> None:
        super().__init__(description="demo colonoscopy phantoms")
        self.spec = spec
        self.classes = list(spec.classes or DEMO_CLASSES)
        unknown = [name for name in self.classes if name not in DEMO_CLASSES]
        if unknown:
            raise SynthgenError(f"unknown demo class {unknown[0]!r}; valid: {', '.join(DEMO_CLASSES)}")

    def _all(self) -> Iterator[Sample]:
        for index in range(self.spec.per_class):
            for kind in self.classes:
                image, caption, metadata = draw_phantom(kind, self.spec.seed, index, self.spec.resolution)
                yield Sample(f"demo-{kind}-{index:04d}", image, caption, kind, metadata)

    def _iter_samples(self) -> Iterator[Sample]:
        return take(self._all(), self.spec.limit)

    def __len__(self) -> int:
        """Phantoms this source yields (every one is readable), without drawing them."""
        return len(self.labels())

    def labels(self) -> list[str]:
        """The phantoms' classes in reading order, without drawing them."""
        return [kind for _ in range(self.spec.per_class) for kind in self.classes][: self.spec.limit]

    def fingerprint(self) -> str:
        spec = self.spec
        fields = {"classes": self.classes, "per_class": spec.per_class, "resolution": spec.resolution}
        fields |= {"seed": spec.seed, "limit": spec.limit, "version": GENERATOR_VERSION}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
