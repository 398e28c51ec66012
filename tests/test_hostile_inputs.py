"""Hostile and awkward image files in a data source: each is skipped with a reason or handled, never a crash or hang.

Every file is generated here in tmp_path (no data files in the repository): a decompression bomb (a tiny PNG whose
header declares 100,000 x 100,000 pixels), a CMYK JPEG, a 16-bit PNG, an EXIF-rotated JPEG, an animated GIF, a
zero-byte file, truncated JPEG and PNG files, a FIFO, and symlink loops.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from synthgen.cli import app
from synthgen.sources import open_source
from synthgen.sources.decode import MAX_PIXELS, Unreadable, decode_image

RED, BLUE = (255, 0, 0), (0, 0, 255)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A 1x1 PNG whose IHDR claims `width` x `height` (CRC fixed): a decompression bomb's header, in ~70 bytes."""
    data = bytearray(png_bytes(Image.new("L", (1, 1))))
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(buffer, "JPEG", quality=95)  # CMYK red
    return buffer.getvalue()


def sixteen_bit_png(high: int) -> bytes:
    """A horizontal 16-bit gradient 0..`high` (65535: full range; 4095: a 12-bit scan stored in 16 bits)."""
    ramp = np.tile(np.linspace(0, high, 64).round().astype(np.uint16), (8, 1))
    image = Image.fromarray(ramp)
    assert image.mode.startswith("I;16")
    return png_bytes(image)


def rotated_jpeg() -> bytes:
    """Stored 40x20 (left half red, right half blue) with EXIF orientation 6: displayed rotated 90 degrees clockwise."""
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, (0, 255, 0), BLUE)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def photo(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, fmt)
    return buffer.getvalue()


def hostile_folder(root: Path) -> Path:
    """An imagefolder (metadata.csv, label 'x') holding one of each hostile file, plus one ordinary image."""
    root.mkdir()
    files = {
        "good.png": photo("PNG"),
        "bomb.png": bomb_png(),
        "cmyk.jpg": cmyk_jpeg(),
        "deep16.png": sixteen_bit_png(65535),
        "scan12.png": sixteen_bit_png(4095),
        "rotated.jpg": rotated_jpeg(),
        "animated.gif": animated_gif(),
        "empty.png": b"",
        "cut.jpg": photo("JPEG")[:300],
        "cut.png": photo("PNG")[:200],
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    os.symlink("loop_b.png", root / "loop_a.png")
    os.symlink("loop_a.png", root / "loop_b.png")
    os.symlink(".", root / "subdir_loop")  # a folder that contains itself
    os.mkfifo(root / "fifo.png")  # opening it would block forever
    names = [*files, "loop_a.png", "fifo.png", "missing.png"]
    (root / "metadata.csv").write_text("file_name,label\n" + "".join(f"{name},x\n" for name in names))
    return root


EXPECTED_SKIPS = {
    "bomb.png": "image too large",
    "empty.png": "empty file (0 bytes)",
    "cut.jpg": "truncated",
    "cut.png": "cannot decode image",
    "loop_a.png": "symlink loop",
    "fifo.png": "not a regular file",
    "missing.png": "file not found",
}


def test_every_hostile_file_is_skipped_with_a_reason_or_handled(tmp_path: Path) -> None:
    source = open_source(str(hostile_folder(tmp_path / "data")))
    samples = {sample.key: sample.image for sample in source}
    reasons = {item.key: item.reason for item in source.skipped}
    assert set(samples) == {"good.png", "cmyk.jpg", "deep16.png", "scan12.png", "rotated.jpg", "animated.gif"}
    assert set(reasons) == set(EXPECTED_SKIPS)
    for key, words in EXPECTED_SKIPS.items():
        assert words in reasons[key].lower(), (key, reasons[key])
    assert all(image.mode == "RGB" for image in samples.values())
    assert "decompression bomb" in reasons["bomb.png"] and "\n" not in reasons["bomb.png"]


def test_cmyk_jpeg_keeps_its_colour(tmp_path: Path) -> None:
    pixel = decode_image(cmyk_jpeg()).getpixel((16, 16))
    assert pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


@pytest.mark.parametrize("high", [65535, 4095])
def test_16_bit_is_scaled_over_the_full_8_bit_range_not_clipped(high: int) -> None:
    row = np.asarray(decode_image(sixteen_bit_png(high)))[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255
    assert np.all(np.diff(row) >= 0) and abs(row[32] - 128) <= 3  # linear: the middle maps to mid-grey
    assert len(set(row.tolist())) == 64  # 64 steps in, 64 distinct levels out: nothing clipped or crushed


def test_float_image_with_nan_and_inf_decodes() -> None:
    pixels = np.array([[np.nan, 0.0, 0.5, 1.0, np.inf, -np.inf]], dtype=np.float32)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "TIFF")
    row = np.asarray(decode_image(buffer.getvalue()))[0, :, 0].tolist()
    assert row == [0, 0, 128, 255, 0, 0]  # finite values span 0..255; non-finite ones are black


def test_exif_rotated_photo_is_upright() -> None:
    image = decode_image(rotated_jpeg())
    assert image.size == (20, 40)  # portrait, as displayed
    top, bottom = image.getpixel((10, 5)), image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the stored left (red) half is on top after a clockwise turn
    assert bottom[2] > 200 and bottom[0] < 60


def test_animated_gif_gives_its_first_frame() -> None:
    pixel = decode_image(animated_gif()).getpixel((8, 8))
    assert pixel[0] > 200 and pixel[1] < 60


def test_pil_bomb_warning_and_error_ranges_are_both_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the limit PIL only warns (up to twice it), beyond that it raises: both are a skip reason here."""
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    for side in (40, 50):  # 1,600 pixels: PIL's warning range; 2,500: its error range
        with pytest.raises(Unreadable, match="image too large"):
            decode_image(png_bytes(Image.new("RGB", (side, side))))
    assert decode_image(png_bytes(Image.new("RGB", (30, 30)))).size == (30, 30)


def test_symlink_loops_do_not_hang_listing(tmp_path: Path) -> None:
    """Without metadata every file below the folder is listed: loops are neither followed nor listed."""
    root = tmp_path / "classes"
    (root / "x").mkdir(parents=True)
    (root / "x" / "a.png").write_bytes(photo("PNG"))
    os.symlink("..", root / "x" / "up")  # x/up/x/up/... forever if followed
    os.symlink("b.png", root / "x" / "c.png")
    os.symlink("c.png", root / "x" / "b.png")
    source = open_source(str(root))
    assert [sample.key for sample in source] == ["x/a.png"]
    assert source.fingerprint()


def test_parquet_bytes_empty_and_bomb_are_skipped(tmp_path: Path) -> None:
    images = [
        {"bytes": photo("PNG"), "path": "good.png"},
        {"bytes": b"", "path": "empty.png"},
        {"bytes": bomb_png(), "path": "bomb.png"},
    ]
    table = pa.table({"image": images, "key": ["good", "empty", "bomb"], "label": ["x", "x", "x"]})
    pq.write_table(table, tmp_path / "data.parquet")
    source = open_source(str(tmp_path / "data.parquet"))
    assert [sample.key for sample in source] == ["good"]
    reasons = {item.key: item.reason for item in source.skipped}
    assert reasons["empty"] == "empty image data (0 bytes)" and "image too large" in reasons["bomb"]


def test_validate_reports_hostile_files_as_a_warning(tmp_path: Path) -> None:
    hostile_folder(tmp_path / "data")
    recipe = {
        "name": "hostile",
        "model": {"train": {"data": {"type": "imagefolder", "path": "data", "label_column": "label"}}},
        "classes": {"x": {"count": 1, "prompts": ["an image"]}},
        "output": {"dir": "out"},
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "recipe.yaml"), "--deep"])
    assert result.exit_code == 0, result.output
    assert "7 of 13 images checked cannot be read and will be skipped" in " ".join(result.output.split())
    assert "Traceback" not in result.output
