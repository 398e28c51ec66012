"""DICOM folders: every DICOM file below a folder (found by content, not extension); each frame is one sample.

PHI stays here (docs/dicom.md). Keys are opaque: `dcm-` + sha256 of the file's first 64 KiB (its header: names,
ids, UIDs, so the hash cannot be guessed from a file name or a patient id) and its relative path, plus `-f<frame>`
for multi-frame files. No file or sub-folder name, and no header value, leaves this module: not in keys, sample
metadata, skip reasons or the description (which names only the folder the recipe names). Labels come from a
`metadata.csv` beside the files (`file_name,label,...`, as imagefolder) or from a header attribute (`label_tag`)
that cannot identify a patient. Files of one patient share an opaque `patient_id` group (salted by every patient
id of the folder, which nothing writes) so splits and the audit's calibration keep a patient's slices together.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from pydicom import config as pydicom_config
from pydicom import datadict, dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import iter_pixels
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from synthgen.errors import SynthgenError
from synthgen.sample import Sample
from synthgen.sources.base import (
    ColumnError,
    Skipped,
    Source,
    existing_path,
    fingerprint_of,
    named_columns,
    spec_settings,
    spread,
    take,
)
from synthgen.sources.decode import Unreadable, check_input
from synthgen.sources.dicom_pixels import frame_image
from synthgen.sources.imagefolder import METADATA_FILES, find_metadata, read_metadata
from synthgen.sources.spec import SourceSpec

HEAD_BYTES = 65536  # hashed into each key: the header, whose PHI makes the key unguessable
MAX_FRAMES = 100_000
PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
PHI_VRS = frozenset({"PN", "DA", "DT", "TM", "UI", "AS", "LT", "ST", "UT", "UC", "UR", "SQ", "OB", "OW", "UN"})
PHI_WORDS = re.compile(
    r"Patient|Person|Physician|Operator|Institution|Accession|Station|Address|Telephone|Name|Identifier|Date|Time|"
    r"Comment|Birth|Device|Serial|Contact|Requesting|Referring|Performing|Reading|Admitting|Issuer|Occupation|"
    r"Ethnic|Military|Region|Country|Religio|Description|ID$|UID$"
)
_LOGGER = logging.getLogger("pydicom")


@dataclass
class _File:
    """One listed file: what the reader needs of it, nothing identifying."""

    key: str
    relative: str  # never leaves this module
    frames: int = 0
    reason: str = ""  # why it yields no image ('' when it does)
    whole: bool = False  # deflated or without file meta: pydicom decodes it from a dataset read whole
    label: str = ""
    text: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def frame_key(self, frame: int) -> str:
        return self.key if self.frames == 1 else f"{self.key}-f{frame}"


class DicomSource(Source):
    """Reads a DICOM folder (or one file) lazily; unreadable and non-image files are skipped with a reason."""

    def __init__(self, spec: SourceSpec, path: Path) -> None:
        super().__init__(description=f"dicom {path}")
        self.spec = spec
        path = existing_path(path)
        self.root = path if path.is_dir() else path.parent
        self.metadata_path = find_metadata(self.root) if path.is_dir() else None
        self.tag = label_tag(spec.label_tag) if spec.label_tag else None
        rows = self._rows(path)
        patients = []
        self.files = []
        for row in rows:
            item, patient = self._file(row)
            self.files.append(item)
            patients.append(patient)
        _group_patients(self.files, patients)
        self.frames = [(item, frame) for item in self.files for frame in range(item.frames)]

    def _rows(self, path: Path) -> list[dict[str, str]]:
        """The metadata rows (file_name relative to the folder), or one row per DICOM file found."""
        if self.metadata_path is not None:
            rows = read_metadata(self.metadata_path)
            columns = list(dict.fromkeys(name for row in rows for name in row))
            if not rows or "file_name" not in columns:
                raise SynthgenError(f"{self.metadata_path} needs rows and a 'file_name' column")
            for role, name in named_columns(self.spec):
                if name not in columns:
                    raise ColumnError(role, name, self.metadata_path, columns)
            return rows
        for role, name in named_columns(self.spec):
            raise ColumnError(role, name, self.root, [], "(it has no metadata.csv or metadata.jsonl)")
        names = [path.name] if path.is_file() else discover(self.root)
        if not names:
            raise SynthgenError(f"no DICOM files in {path}")
        return [{"file_name": name} for name in names]

    def _file(self, row: dict[str, str]) -> tuple[_File, str]:
        """A listed file and its patient (for the opaque group); its header is read, its pixels are not."""
        relative = row.get("file_name", "")
        path = self.root / relative
        head = b""
        try:
            check_input(path)
            with path.open("rb") as handle:
                head = handle.read(HEAD_BYTES)
        except (Unreadable, OSError) as error:
            reason = str(error) if isinstance(error, Unreadable) else "file not found or not readable"
            return _File(self._key(row, head, relative), relative, 1, reason), ""
        item = _File(self._key(row, head, relative), relative)
        item.metadata = {k: v for k, v in row.items() if k not in ("file_name", self.spec.key_column)}
        item.text = row.get(self.spec.text_column, "") if self.spec.text_column else ""
        if self.tag is None and self.metadata_path is not None and self.spec.label_column:
            item.label = row.get(self.spec.label_column, "")
        return item, self._header(item, path, head)

    def _key(self, row: dict[str, str], head: bytes, relative: str) -> str:
        if self.spec.key_column and row.get(self.spec.key_column):
            return row[self.spec.key_column]  # the user's own ids, named in the recipe
        digest = hashlib.sha256(b"synthgen-dicom-key\0" + hashlib.sha256(head).digest() + relative.encode())
        return f"dcm-{digest.hexdigest()[:20]}"

    def _header(self, item: _File, path: Path, head: bytes) -> str:
        """Fill frames / label / reason from the header; the patient id (for the group) is returned, not kept."""
        try:
            with quiet():
                ds = dcmread(path, defer_size=1024, force=not has_preamble(head))
                item.frames, item.reason = _frames(ds)
                syntax = getattr(ds, "file_meta", Dataset()).get("TransferSyntaxUID")
                item.whole = syntax is None or syntax == DeflatedExplicitVRLittleEndian or not has_preamble(head)
                if self.tag is not None:
                    item.label = _one_line(ds[self.tag].value) if self.tag in ds else ""
                patient = str(ds.get("PatientID") or ds.get("StudyInstanceUID") or "")
        except Exception as error:  # noqa: BLE001 - pydicom raises many types; the message could quote PHI
            item.frames, item.reason = 1, f"not a readable DICOM file ({type(error).__name__})"
            return ""
        if item.reason:
            item.frames = 1  # one skip entry per unusable file
        return patient

    def labels(self) -> list[str]:
        """Labels from metadata or headers read at opening: no pixel is decoded."""
        return [item.label for item, _ in self._images()[: self.spec.limit]]

    def _images(self) -> list[tuple[_File, int]]:
        return [(item, frame) for item, frame in self.frames if not item.reason]

    def probe(self, count: int | None = None) -> tuple[int, list[Skipped]]:
        """Decode `count` frames spread over the folder (within `limit`); unusable files always count."""
        self.skipped = []
        for item in self.files:
            if item.reason:
                self._skip(item.key, item.reason)
        images = self._images()[: self.spec.limit]
        positions = spread(len(images), count)
        wanted: dict[str, tuple[_File, list[int]]] = {}
        for position in positions:
            item, frame = images[position]
            wanted.setdefault(item.key, (item, []))[1].append(frame)
        for item, frames in wanted.values():
            for _ in self._decode(item, frames):
                pass
        return len(positions) + sum(1 for item in self.files if item.reason), list(self.skipped)

    def _iter_samples(self) -> Iterator[Sample]:
        return take(self._all(), self.spec.limit)

    def _all(self) -> Iterator[Sample]:
        for item in self.files:
            if item.reason:
                self._skip(item.key, item.reason)
            else:
                yield from self._decode(item, list(range(item.frames)))

    def _decode(self, item: _File, frames: Sequence[int]) -> Iterator[Sample]:
        """Samples of `frames` of one file; a failure skips that frame and the rest of the file, with a reason."""
        path = self.root / item.relative
        ds = Dataset()
        pixels: Iterator | None = None
        for done, frame in enumerate(frames):
            try:
                with quiet():
                    if pixels is None:
                        check_input(path)
                        pixels, ds = _open_pixels(path, frames, item.whole)
                    image = frame_image(next(pixels), ds, self.spec.window, self.spec.mask_bands)
            except Exception as error:  # noqa: BLE001 - any decoder failure is this file's problem only
                reason = _decode_reason(error, ds)
                for rest in frames[done:]:
                    self._skip(item.frame_key(rest), reason)
                return
            yield Sample(item.frame_key(frame), image, item.text, item.label, dict(item.metadata))

    def fingerprint(self) -> str:
        files = [self.root / item.relative for item in self.files]
        contents = [self.metadata_path] if self.metadata_path else []
        return fingerprint_of(spec_settings(self.spec, "dicom"), self.root, files, contents)


def _open_pixels(path: Path, frames: Sequence[int], whole: bool) -> tuple[Iterator, Dataset]:
    """Frames decoded one at a time, and the dataset (without pixels) that describes them."""
    if whole:
        ds = dcmread(path, force=True)
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):  # a bare dataset: the encoding it was read in
            implicit, little = ds.original_encoding
            syntax = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = syntax
        return iter_pixels(ds, indices=list(frames)), ds
    ds = Dataset()
    return iter_pixels(path, ds_out=ds, indices=list(frames)), ds


def discover(root: Path) -> list[str]:
    """Relative paths of the DICOM files below `root`, sorted; hidden parts and metadata files are ignored."""
    found = []
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if any(part.startswith(".") for part in parts) or path.name in METADATA_FILES or not path.is_file():
            continue
        if is_dicom(path):
            found.append(path.relative_to(root).as_posix())
    return found


def is_dicom(path: Path) -> bool:
    """DICM at byte 128 (Part 10 files), or a bare dataset (no preamble) as old exports write them."""
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return has_preamble(head) or _bare_dataset(head)


def has_preamble(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _bare_dataset(head: bytes) -> bool:
    """A dataset without preamble: group 0002 or 0008 little-endian first, then an explicit VR or a short length."""
    if len(head) < 8 or int.from_bytes(head[:2], "little") not in (0x0002, 0x0008):
        return False
    explicit = head[4:6].isalpha() and head[4:6].isupper()
    return explicit or int.from_bytes(head[4:8], "little") < 1024


def label_tag(name: str) -> BaseTag:
    """The tag `name` stands for (keyword, `0018,0015`, `(0018,0015)` or `00180015`); identifying ones are refused."""
    text = name.strip()
    hexed = re.fullmatch(r"\(?\s*([0-9A-Fa-f]{4})\s*,?\s*([0-9A-Fa-f]{4})\s*\)?", text)
    tag = Tag(int(hexed[1] + hexed[2], 16)) if hexed else datadict.tag_for_keyword(text)
    if tag is None or not datadict.dictionary_has_tag(tag):
        raise SynthgenError(f"label_tag: {name!r} is not a standard DICOM attribute (keyword or gggg,eeee)")
    keyword = datadict.keyword_for_tag(tag)
    if datadict.dictionary_VR(tag) in PHI_VRS or PHI_WORDS.search(keyword):
        raise SynthgenError(
            f"label_tag: {keyword} may identify a patient and its values would become class names in the outputs; "
            "use a coded attribute (BodyPartExamined, Modality, ViewPosition, ...) or a metadata.csv label"
        )
    return tag


def _frames(ds: Dataset) -> tuple[int, str]:
    """(frames, '') for an image; (0, why not) otherwise. Sizes are checked before any pixel is decoded."""
    if not any(name in ds for name in PIXEL_TAGS):
        sop = ds.get("SOPClassUID")
        kind = f" ({sop.name})" if sop is not None and sop.is_valid and sop.name != str(sop) else ""
        return 0, f"no pixel data{kind}: {'truncated?' if 'Image' in kind else 'not an image'}"
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    frames = int(ds.get("NumberOfFrames") or 1)
    if rows <= 0 or columns <= 0 or frames <= 0:
        return 0, "no image size (Rows, Columns, NumberOfFrames)"
    limit = Image.MAX_IMAGE_PIXELS
    if limit and rows * columns > limit:
        return 0, f"image too large ({columns}x{rows} pixels; limit {limit:,}): a decompression bomb?"
    if frames > MAX_FRAMES:
        return 0, f"too many frames ({frames:,}; limit {MAX_FRAMES:,})"
    return frames, ""


def _decode_reason(error: Exception, ds: Dataset) -> str:
    """Why pixels did not decode, naming the transfer syntax but never quoting the error (it may hold PHI)."""
    if isinstance(error, Unreadable):
        return str(error)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    name = f" ({syntax.name})" if syntax is not None and syntax.is_transfer_syntax else ""
    text = str(error).lower()
    if "no pixel data decoders" in text or "missing required dependencies" in text:
        return f"cannot decode pixel data{name}: no installed decoder supports it"
    if "all available plugins" in text:
        return f"cannot decode pixel data{name}: every decoder failed (damaged data?)"
    return f"cannot decode pixel data{name}: {type(error).__name__}"


def _one_line(value: object) -> str:
    """A header value as a label: multi-values joined by '\\', whitespace collapsed."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(part) for part in value)  # type: ignore[union-attr]
    return " ".join(str(value).split())


def _group_patients(files: list[_File], patients: list[str]) -> None:
    """An opaque `patient_id` per file, unless metadata.csv gives one; salted by all the folder's patient ids."""
    salt = hashlib.sha256("\0".join(sorted(set(patients))).encode()).digest()
    for item, patient in zip(files, patients, strict=True):
        if patient and not item.metadata.get("patient_id"):
            item.metadata["patient_id"] = "p-" + hashlib.sha256(salt + patient.encode()).hexdigest()[:16]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """pydicom's warnings and log lines quote header values (PHI): silenced while a file is read."""
    mode, disabled = pydicom_config.settings.reading_validation_mode, _LOGGER.disabled
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    _LOGGER.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_config.settings.reading_validation_mode = mode
        _LOGGER.disabled = disabled
