"""Small DICOM files written by pydicom for the DICOM tests, with identifying (fake) header values to hunt for."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

PHI = {
    "PatientName": "PHISENTINEL^ALICE",
    "PatientID": "PHIID-7731",
    "PatientBirthDate": "19030517",
    "AccessionNumber": "PHIACC-5521",
    "InstitutionName": "PHIINST Memorial Hospital",
    "ReferringPhysicianName": "PHIDOCTOR^BOB",
    "StudyDate": "19040623",
    "SeriesDate": "19040624",
    "StudyTime": "235917",
    "StudyID": "PHISTUDY-88",
}


def dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", **tags: object) -> Dataset:
    """A Part 10 dataset holding `pixels` (uint16/int16 grey: (rows, cols) or (frames, rows, cols); uint8 RGB)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    bits = 8 if pixels.dtype == np.uint8 else 16
    ds.set_pixel_data(pixels, photometric, bits)
    for name, value in tags.items():
        setattr(ds, name, value)
    return ds


def phi_dataset(pixels: np.ndarray, photometric: str = "MONOCHROME2", **tags: object) -> Dataset:
    """`dataset` with every `PHI` value set (and distinct UIDs, which are identifying too)."""
    return dataset(pixels, photometric, **{**PHI, **tags})


def save(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(value: int = 1000, size: int = 16, step: int = 3) -> np.ndarray:
    """A 16-bit grey image of small steps (value, value + step, ...): detail a naive 8-bit cut would lose."""
    rows = np.arange(size, dtype=np.uint16)[:, None] * step + value
    return np.repeat(rows, size, axis=1).astype(np.uint16)


def blob(seed: int, size: int = 32, light: bool = False) -> np.ndarray:
    """A radiograph-like 16-bit image: noise plus a bright disc when `light` (two classes to train on)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(800, 1200, (size, size)).astype(np.uint16)
    if light:
        yy, xx = np.mgrid[:size, :size]
        pixels[(yy - size // 2) ** 2 + (xx - size // 2) ** 2 < (size // 4) ** 2] = 3000
    return pixels
