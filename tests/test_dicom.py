"""The DICOM source (issue 12 item 1): discovery by content, compressed transfer syntaxes, modality LUT, VOI windowing,
MONOCHROME1, 16-bit depth kept until the final 8 bits, multi-frame files, colour, labels, skipped files, masks."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from dicom_files import PHI, blob, dataset, phi_dataset, ramp, save
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, RLELossless

from synthgen.errors import SynthgenError
from synthgen.sources import SourceSpec, detect_type, open_source
from synthgen.sources.checks import check_data
from synthgen.sources.dicom import DicomSource, label_tag
from synthgen.sources.dicom_pixels import linear_window


def grey(sample) -> np.ndarray:
    pixels = np.asarray(sample.image)
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 0] == pixels[..., 2]).all()
    return pixels[..., 0].astype(int)


def read(path: Path, **spec) -> list:
    return list(open_source(SourceSpec(type="dicom", path=str(path), **spec)))


def bundled(tmp_path: Path, *names: str) -> Path:
    """pydicom's own test files (shipped in its wheel), copied under names without an extension."""
    folder = tmp_path / "bundled"
    folder.mkdir(exist_ok=True)
    for name in names:
        shutil.copy(get_testdata_file(name), folder / name.removesuffix(".dcm"))
    return folder


def test_compressed_transfer_syntaxes_decode_to_the_same_pixels(tmp_path: Path) -> None:
    """JPEG-LS (libjpeg), JPEG 2000 (openjpeg) and RLE of MR_small decode exactly as the uncompressed file."""
    names = ["MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"]
    folder = bundled(tmp_path, *names)
    images = {n: grey(read(folder / n.removesuffix(".dcm"))[0]) for n in names}
    for name in names[1:]:
        assert (images[name] == images["MR_small.dcm"]).all(), name
    # our own 16-bit files, compressed by pydicom's encoders (RLE natively, JPEG 2000 through openjpeg)
    plain = grey(read(save(dataset(ramp(size=64)), tmp_path / "own" / "plain"))[0])
    for uid in (RLELossless, JPEG2000Lossless):
        ds = dataset(ramp(size=64))
        ds.compress(uid)
        assert (grey(read(save(ds, tmp_path / "own" / uid.name[:4]))[0]) == plain).all(), uid.name


def test_jpeg_baseline_lossless_extended_and_ybr_colour(tmp_path: Path) -> None:
    """JPEG baseline (YBR_FULL), JPEG lossless (RGB), RLE RGB, JPEG extended (12-bit), big endian, deflated."""
    names = ["SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm", "SC_ybr_full_422_uncompressed.dcm"]
    folder = bundled(tmp_path, *names, "JPGExtended.dcm")
    for name in names:
        pixels = np.asarray(read(folder / name.removesuffix(".dcm"))[0].image).astype(int)
        assert np.abs(pixels[5, 50] - [255, 0, 0]).max() <= 2, name  # the test pattern's red band, as RGB
        assert np.abs(pixels[35, 50] - [128, 255, 128]).max() <= 2, name
    extended = grey(read(folder / "JPGExtended")[0])
    assert extended.shape == (1024, 256) and extended.max() == 255
    plain = bundled(tmp_path, "MR_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm")
    assert (grey(read(plain / "MR_small_bigendian")[0]) == grey(read(plain / "MR_small")[0])).all()
    assert grey(read(plain / "image_dfl")[0]).shape == (512, 512)  # deflated explicit VR little endian


def test_modality_lut_then_the_recipe_window(tmp_path: Path) -> None:
    """Stored values go through rescale slope/intercept first; the window is in those (Hounsfield) units."""
    stored = np.array([[0, 1024, 1064, 1224, 1424, 2048]], np.uint16)  # HU -1024, 0, 40, 200, 400, 1024
    path = save(dataset(stored, RescaleSlope=1, RescaleIntercept=-1024), tmp_path / "ct")
    values = grey(read(path, window={"center": 40, "width": 400})[0])[0]
    expected = np.rint(linear_window(np.array([-1024.0, 0, 40, 200, 400, 1024]), 40, 400) * 255)
    assert values.tolist() == expected.astype(int).tolist()
    assert values[0] == 0 and values[-1] == 255 and 120 <= values[2] <= 135  # 40 HU: the window's middle
    doubled = save(dataset(stored, RescaleSlope=2, RescaleIntercept=-2048), tmp_path / "ct2")  # -2048 .. 2048
    values = grey(read(doubled, window={"center": 40, "width": 400})[0])[0]
    expected = np.rint(linear_window(stored[0] * 2.0 - 2048, 40, 400) * 255)
    assert values.tolist() == expected.astype(int).tolist() and values[0] == 0 and values[-1] == 255


def test_sixteen_bits_are_kept_until_the_last_step(tmp_path: Path) -> None:
    """Stored 1000 and 1003 land 3 grey levels x (255 / width) apart in a narrow window: no early 8-bit cut."""
    path = save(dataset(ramp(1000, size=4)), tmp_path / "narrow")
    rows = grey(read(path, window={"center": 1004.5, "width": 13})[0])[:, 0]
    assert len(set(rows.tolist())) == 4  # 1000, 1003, 1006, 1009: four distinct levels
    assert rows[1] - rows[0] >= 60


def test_file_window_is_used_and_the_recipe_window_overrides_it(tmp_path: Path) -> None:
    path = save(dataset(ramp(1000, size=4), WindowCenter=1004.5, WindowWidth=13), tmp_path / "windowed")
    from_file = grey(read(path)[0])[:, 0]
    assert from_file.tolist() == grey(read(path, window={"center": 1004.5, "width": 13})[0])[:, 0].tolist()
    wide = grey(read(path, window={"center": 1000, "width": 4000})[0])[:, 0]
    assert wide.max() - wide.min() <= 2  # the recipe's wide window, not the file's narrow one
    plain = save(dataset(ramp(1000, size=4)), tmp_path / "plain")
    assert grey(read(plain)[0])[:, 0].tolist() == [0, 85, 170, 255]  # no window anywhere: min..max


def test_voi_lut_sequence(tmp_path: Path) -> None:
    ds = dataset(np.array([[0, 1, 2, 3]], np.uint16))
    item = Dataset()
    item.LUTDescriptor = [4, 0, 8]
    item.add_new(0x00283006, "US", [255, 0, 128, 64])  # LUT Data
    ds.VOILUTSequence = [item]
    assert grey(read(save(ds, tmp_path / "voi"))[0])[0].tolist() == [255, 0, 128, 64]


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    mono2 = grey(read(save(dataset(ramp(size=8)), tmp_path / "m2"))[0])
    mono1 = grey(read(save(dataset(ramp(size=8), "MONOCHROME1"), tmp_path / "m1"))[0])
    assert (mono1 == 255 - mono2).all() and mono1[0, 0] == 255  # the lowest value is white in MONOCHROME1


def test_multi_frame_file_gives_one_sample_per_frame(tmp_path: Path) -> None:
    frames = np.stack([ramp(1000, size=8), ramp(2000, size=8), blob(0, 8)])
    save(dataset(frames), tmp_path / "cine" / "series")
    save(dataset(ramp(size=8)), tmp_path / "cine" / "single")
    source = open_source(SourceSpec(type="dicom", path=str(tmp_path / "cine")))
    samples = list(source)
    assert len(samples) == len(source.labels()) == 4
    multi = [s.key for s in samples if re.fullmatch(r"dcm-[0-9a-f]+-f\d+", s.key)]  # opaque hex may hold "-f"
    assert len(multi) == 3 and len({k.rsplit("-f", 1)[0] for k in multi}) == 1
    assert sorted(k.rsplit("-f", 1)[1] for k in multi) == ["0", "1", "2"]
    tried, skipped = source.probe(2)
    assert tried == 2 and skipped == []


def test_labels_from_metadata_csv(tmp_path: Path) -> None:
    folder = tmp_path / "csv"
    rows = []
    for i in range(4):
        save(dataset(blob(i, 8, light=i % 2 == 1)), folder / "series" / f"img{i}")
        rows.append({"file_name": f"series/img{i}", "label": "nodule" if i % 2 else "clear", "text": "chest ct"})
    with (folder / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    source = open_source(str(folder))  # detected: DICOM files and a metadata.csv
    assert isinstance(source, DicomSource)
    assert source.labels() == ["clear", "nodule", "clear", "nodule"]
    samples = list(source)
    assert [s.label for s in samples] == source.labels() and samples[0].text == "chest ct"
    assert all("file_name" not in s.metadata and "img" not in s.key for s in samples)
    lines = check_data(SourceSpec(path=str(folder)), None, "model.train.data", classes={"nodule": ["nodule"]})
    assert "4 images in dicom" in lines[0] and "nodule 2" in lines[1] and "all readable" in lines[2]


def test_labels_from_a_header_attribute(tmp_path: Path) -> None:
    for i, part in enumerate(["CHEST", "HEAD", "CHEST"]):
        save(dataset(blob(i, 8), BodyPartExamined=part), tmp_path / "tags" / f"f{i}")
    source = open_source(SourceSpec(type="dicom", path=str(tmp_path / "tags"), label_tag="BodyPartExamined"))
    assert source.labels() == ["CHEST", "HEAD", "CHEST"]
    by_number = open_source(SourceSpec(type="dicom", path=str(tmp_path / "tags"), label_tag="(0018,0015)"))
    assert [s.label for s in by_number] == ["CHEST", "HEAD", "CHEST"]


IDENTIFYING = ["PatientName", "PatientID", "0010,0010", "StudyDate", "InstitutionName", "SOPInstanceUID"]


@pytest.mark.parametrize("name", [*IDENTIFYING, "AccessionNumber", "PatientAge", "StudyDescription"])
def test_identifying_label_tags_are_refused(name: str) -> None:
    with pytest.raises(SynthgenError, match="label_tag"):
        label_tag(name)


def test_unknown_label_tag_is_an_error() -> None:
    with pytest.raises(SynthgenError, match="not a standard DICOM attribute"):
        label_tag("NoSuchKeyword")


def test_non_image_and_broken_dicom_are_skipped_and_counted(tmp_path: Path) -> None:
    folder = bundled(tmp_path, "test-SR.dcm", "rtplan.dcm", "MR_small.dcm")
    no_pixels = phi_dataset(ramp(size=4))
    del no_pixels.PixelData
    save(no_pixels, folder / "nopixels")
    whole = (folder / "MR_small").read_bytes()
    (folder / "cut_header").write_bytes(whole[:1000])  # the DICM preamble, then cut inside the header
    (folder / "cut_pixels").write_bytes(whole[:-5000])  # cut inside the pixel data
    (folder / "notes.txt").write_text("not DICOM: ignored, not counted")
    source = open_source(SourceSpec(type="dicom", path=str(folder)))
    assert len(list(source)) == 1 and len(source.labels()) == 2  # labels come from headers: cut_pixels has one
    reasons = sorted(item.reason for item in source.skipped)
    assert len(reasons) == 5
    assert sum("no pixel data" in r for r in reasons) == 4
    assert any("RT Plan" in r and "not an image" in r for r in reasons) and any("SR Storage" in r for r in reasons)
    assert any("cannot decode pixel data" in r for r in reasons)
    assert all(item.key.startswith("dcm-") for item in source.skipped)
    text = " ".join(f"{s.key} {s.reason}" for s in source.skipped)
    assert not any(value in text for value in PHI.values()) and "nopixels" not in text and "cut_" not in text
    tried, skipped = source.probe(None)
    assert tried == 6 and len(skipped) == 5


def test_detection_by_content_and_dicom_only_options(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    save(dataset(ramp(size=4)), folder / "a" / "IM0001")
    dataset(ramp(size=4)).save_as(folder / "nopreamble", enforce_file_format=False)  # file meta, no preamble
    bare = dataset(ramp(size=4))
    del bare.file_meta
    bare.save_as(folder / "bare", implicit_vr=True, little_endian=True, enforce_file_format=False)  # ACR-NEMA style
    assert detect_type(folder) == "dicom" and detect_type(folder / "a" / "IM0001") == "dicom"
    samples = read(folder)
    assert len(samples) == 3 and all(grey(s)[:, 0].tolist() == [0, 85, 170, 255] for s in samples)
    images = tmp_path / "pngs"
    images.mkdir()
    from PIL import Image

    Image.new("RGB", (4, 4)).save(images / "x.png")
    with pytest.raises(SynthgenError, match="only dicom sources"):
        open_source(SourceSpec(path=str(images), window={"center": 0, "width": 10}))


def test_mask_bands_black_out_top_and_bottom(tmp_path: Path) -> None:
    pixels = np.full((20, 8), 1000, np.uint16)
    pixels[0, :] = 4000  # burnt-in text at the top: left out of the min..max as well
    pixels[5:15] = 2000
    image = grey(read(save(dataset(pixels), tmp_path / "text"), mask_bands=0.1)[0])
    assert (image[:2] == 0).all() and (image[-2:] == 0).all()
    assert image[10, 0] == 255 and image[3, 0] == 0  # the window came from the unmasked rows only


def test_fingerprint_changes_with_the_window_not_with_the_path(tmp_path: Path) -> None:
    save(dataset(ramp(size=4)), tmp_path / "d" / "x")
    plain = open_source(SourceSpec(type="dicom", path=str(tmp_path / "d")))
    windowed = open_source(SourceSpec(type="dicom", path=str(tmp_path / "d"), window={"center": 0, "width": 9}))
    assert plain.fingerprint() != windowed.fingerprint()
    shutil.copytree(tmp_path / "d", tmp_path / "e", copy_function=shutil.copy2)
    assert open_source(SourceSpec(type="dicom", path=str(tmp_path / "e"))).fingerprint() == plain.fingerprint()


def test_pydicom_warnings_quoting_header_values_are_silenced(tmp_path: Path, capfd, caplog) -> None:
    """pydicom warns (and logs) an invalid value verbatim (`Invalid value for VR IS: '...'`): not while we read."""
    import warnings

    path = save(dataset(ramp(size=4), NumberOfFrames="98765432"), tmp_path / "bad-value")
    path.write_bytes(path.read_bytes().replace(b"98765432", b"PHIF9876"))  # an IS that pydicom quotes on reading
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        source = open_source(SourceSpec(type="dicom", path=str(path)))
        assert list(source) == [] and "not a readable DICOM file" in source.skipped[0].reason
    said = " ".join(str(w.message) for w in caught) + caplog.text + "".join(capfd.readouterr())
    assert "PHIF9876" not in said and "PHIF9876" not in source.skipped[0].reason


def test_the_example_recipe_validates_on_a_dicom_export(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from synthgen.cli import app

    recipe = tmp_path / "recipes" / "dicom-example.yaml"
    recipe.parent.mkdir()
    shutil.copy(Path(__file__).parent.parent / "recipes" / "dicom-example.yaml", recipe)
    for i, part in enumerate(["CHEST", "ABDOMEN", "CHEST", "ABDOMEN"]):
        ds = phi_dataset(blob(i), RescaleSlope=1, RescaleIntercept=-1024, BodyPartExamined=part)
        save(ds, tmp_path / "data" / "ct-export" / f"PHIFILE_{i}" / "IM0001")
    result = CliRunner().invoke(app, ["validate", str(recipe), "--deep", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "training images per class: CHEST 2, ABDOMEN 2" in result.output
    assert "PHIFILE" not in result.output and "PHISENTINEL" not in result.output
