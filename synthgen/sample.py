"""`Sample`: the one currency passed between pipeline stages (sources, generator, auditor, writers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class Sample:
    """One image and what is known about it.

    `key` is unique within its source. Keys of synthetic samples are safe as file stems (letters, digits,
    `_`, `-`), as shard writers require; keys read from a source keep its naming (an imagefolder's
    `file_name`, with slashes and dots), so audit reports point at the real file.
    `metadata` holds provenance and audit verdicts as flat JSON-able values.
    """

    key: str
    image: Image.Image
    text: str = ""
    label: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    # The image already encoded for the shards (`output.writers.encoded_bytes` keys: "png", "jpeg:95"), made
    # while the next batch samples so the shard writer does not encode again.
    encoded: dict[str, bytes] = field(default_factory=dict, repr=False, compare=False)
