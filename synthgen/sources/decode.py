"""Decoding one image safely: a hostile or broken file becomes a reason to skip it, never a crash or a hang.

What each kind of input does (docs/security.md):
- empty file, FIFO or device, symlink loop: refused before PIL opens it (`Unreadable`, with the reason);
- more than `Image.MAX_IMAGE_PIXELS` pixels (a decompression bomb: a tiny file that declares a huge image): refused
  from its header, before any pixel is decoded. synthgen sets that PIL limit to `MAX_PIXELS` on import; a caller
  can set another value (None: no limit) after importing synthgen;
- truncated or corrupt data: PIL's error, raised here while loading (the caller records it);
- EXIF orientation (phone photos): turned upright;
- CMYK, palette, bilevel: converted to RGB; 16-bit / 32-bit / float grayscale: stretched over 0..255 (min to max of
  the image's finite values), never clipped at 255; animated GIF / multi-page TIFF: the first frame.
"""

from __future__ import annotations

import errno
import io
import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

MAX_PIXELS = 100_000_000  # 10,000 x 10,000: far above medical scans (a mammogram is ~25 MP), below a bomb's billions
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # deliberately: PIL warns above this and refuses above twice it; we refuse above
HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_ORIENTATION = ExifTags.Base.Orientation


class Unreadable(Exception):
    """An image synthgen will not decode; the message is the reason users read in `skipped`."""


def decode_image(data: bytes | Path) -> Image.Image:
    """Open, fully load (so truncated files fail here, not later), turn upright and convert to 8-bit RGB."""
    with open_image(data) as img:
        img.load()
        return to_rgb(upright(img))


def open_image(data: bytes | Path) -> Image.Image:
    """`Image.open` behind the guards above (no pixels decoded yet); use it in a `with` block."""
    check_input(data)
    img = _open(data)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:  # a second guard, independent of how PIL checks at open
        img.close()
        raise Unreadable(_too_large(f"{img.width}x{img.height} pixels"))
    return img


def check_input(data: bytes | Path) -> None:
    """Refuse what PIL should never open: empty data, anything but a regular file (a FIFO would block), loops."""
    if isinstance(data, bytes):
        if not data:
            raise Unreadable("empty image data (0 bytes)")
        return
    try:
        info = os.stat(data)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise Unreadable("symlink loop") from None
        raise
    if not stat.S_ISREG(info.st_mode):
        raise Unreadable("not a regular file")
    if info.st_size == 0:
        raise Unreadable("empty file (0 bytes)")


def _open(data: bytes | Path) -> Image.Image:
    """Image.open with PIL's decompression-bomb warning (and error) turned into `Unreadable`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            found = re.search(r"\((\d+) pixels\)", str(error))  # PIL: "Image size (N pixels) exceeds limit ..."
            raise Unreadable(_too_large(f"{int(found[1]):,} pixels" if found else "too many pixels")) from None


def _too_large(size: str) -> str:
    return f"image too large ({size}; limit {Image.MAX_IMAGE_PIXELS:,}): a decompression bomb?"


def upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation, so a rotated phone photo is upright; unreadable EXIF leaves the pixels as stored."""
    try:
        if img.getexif().get(_ORIENTATION, 1) in (1, None):
            return img
        return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - broken EXIF is metadata damage, not a broken image
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB; high-bit grayscale is stretched from its own min..max to 0..255 (never clipped)."""
    if img.mode not in HIGH_BIT_MODES:
        return img.convert("RGB")
    pixels = np.asarray(img, dtype=np.float32)
    finite = np.isfinite(pixels)
    low = float(pixels[finite].min()) if finite.any() else 0.0
    high = float(pixels[finite].max()) if finite.any() else 0.0
    scaled = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
    scaled = np.rint(np.where(finite, scaled, 0.0)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(scaled, "L").convert("RGB")
