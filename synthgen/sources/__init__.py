"""Data readers: every source yields `Sample`s lazily and records what it had to skip.

`open_source` picks the reader (imagefolder, parquet, webdataset, DICOM, synthgen output, demo phantoms).
"""

from synthgen.sources.base import Skipped, Source
from synthgen.sources.demo import DEMO_CLASSES
from synthgen.sources.open import detect_type, open_readable, open_source
from synthgen.sources.spec import SourceSpec

__all__ = ["DEMO_CLASSES", "Skipped", "Source", "SourceSpec", "detect_type", "open_readable", "open_source"]
