"""Shared fixtures: `real_data_dir` points at the real image sets, or skips the test when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture
def real_data_dir() -> Path:
    """$SYNTHGEN_REAL_DATA (e.g. /work/shared/data); real images are read there, never copied."""
    value = os.environ.get("SYNTHGEN_REAL_DATA")
    if not value:
        pytest.skip("SYNTHGEN_REAL_DATA is not set")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"SYNTHGEN_REAL_DATA={value} is not a folder")
    return path
